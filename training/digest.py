"""weights_digest and optimizer_digest: one hash of a run's weights, one of its optimizer state; each the
same for the same state at every world size and plan."""

from __future__ import annotations

import hashlib

import torch

from embedding.state import tracked_digests
from training.distributed import unwrap


def _update(h, value) -> None:
    """Hash a state value: floating tensors as float32 bytes, other tensors as int64, the rest as text."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() else value.to(torch.int64)
        h.update(value.contiguous().numpy().tobytes())
    else:
        h.update(repr(value).encode())


def weights_digest(parts) -> str:
    """sha256 over the dense state_dict (sorted keys, float32 bytes of this rank's replica) and every table's
    64-bit digest (computed on the device shard by shard: no table is gathered).

    Collective; the same value on every rank, so resharded checkpoints compare equal."""
    table_digests = parts.embeddings.table_digests()
    h = hashlib.sha256()
    for key, value in sorted(unwrap(parts.model).state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    for table, digest in zip(parts.embeddings.tables, table_digests, strict=True):
        h.update(table.name.encode())
        h.update(digest.to_bytes(8, "little"))
    return h.hexdigest()


def optimizer_digest(parts) -> str:
    """sha256 over the dense optimizer's state (per parameter name, sorted: this rank's replica; DDP keeps
    it the same on every rank) and a 64-bit digest of each sparse optimizer state tensor of every table
    (embedding.state.tracked_digests: shard by shard, one all-reduce, independent of plan and W).

    Collective; the same value on every rank."""
    emb = parts.embeddings
    names = emb.optimizer_state_names()
    sparse = [None] * len(emb.tables)
    for group, ids in emb.table_groups():  # one per embedding dim
        found = tracked_digests(group.layout, group.storage, group.dynamic, group.exchange, names)
        for t, digests in zip(ids, found, strict=True):
            sparse[t] = digests
    h = hashlib.sha256()
    param_names = {id(p): name for name, p in unwrap(parts.model).named_parameters()}
    dense = [
        (param_names[id(p)], parts.optimizer.state.get(p, {}))
        for group in parts.optimizer.param_groups
        for p in group["params"]
    ]
    for name, state in sorted(dense, key=lambda item: item[0]):
        for key, value in sorted(state.items()):
            h.update(f"{name}.{key}".encode())
            _update(h, value)
    for table, digests in zip(emb.tables, sparse, strict=True):
        for name, digest in zip(names, digests, strict=True):
            h.update(f"{table.name}.{name}".encode())
            h.update(digest.to_bytes(8, "little"))
    return h.hexdigest()
