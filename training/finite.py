"""Whether a run's weights are finite: checked before a checkpoint is written, so weights that went NaN/inf
(a finite but exploding loss can get there) never replace the good checkpoints on disk."""

from __future__ import annotations

import torch

from training.distributed import unwrap


def first_nonfinite(parts) -> str | None:
    """The first dense parameter or table (by name) holding a NaN/inf on any rank, or None.

    Collective: one all-reduce of one flag per tensor, one host read. Reads every weight once (a save
    reads them all anyway)."""
    names, flags = [], []
    for name, p in unwrap(parts.model).named_parameters():
        names.append(f"dense parameter {name}")
        flags.append(torch.isfinite(p.detach()).all())
    emb = parts.embeddings
    for group, _ in emb.table_groups():  # one per embedding dim
        weight, layout = group.storage.weight, group.layout
        for t, table in enumerate(layout.tables):
            if table.dynamic:
                rows = weight[group.dynamic.live(t)[1]]
            else:
                rows = weight[layout.base[t] : layout.base[t] + layout.count[t]]
            names.append(f"table '{table.name}'")
            flags.append(torch.isfinite(rows).all())
    bad = (~torch.stack(flags)).to(torch.int32)
    emb.exchange.all_reduce_(bad)  # a sum over ranks: > 0 where any rank holds a NaN/inf
    first = bad.nonzero()
    return names[int(first[0])] if first.numel() else None
