"""The exchange path of a MixedDimCollection's step (embedding.mixed) with its groups packed.

After the packed input_dist (one all-to-all of the groups' key counts, one of their keys), the rows travel
back in one all-to-all for all groups and, in the backward, the gradients (with their lookup counts) in
one, the replicated tables' gradients in one all-reduce: 4 all-to-alls a step for any number of groups, as
with one dim. Split sizes are in elements (rows x each group's width), known from the split read that
input_dist did, so there is no host read here. Each group keeps its own lookups, pooling and sparse update.
"""

from __future__ import annotations

import torch

from embedding.host_tier import HostTier
from embedding.sharded import ShardedLookup
from kernels import append_replicated, gather_pool, scatter_replicated


def forward(mixed, md) -> torch.Tensor:
    """[B, sum of the groups' F x D]: the groups' pooled outputs side by side, in group order."""
    groups, training = mixed.groups, torch.is_grad_enabled()
    with groups[0]._stage("lookup", training):
        served = [g.compute(sd) for g, sd in zip(groups, md.parts, strict=True)]
    with groups[0]._stage("output_dist", training):
        rows = groups[0].exchange.all_to_all_groups(
            served, [sd.recv_splits for sd in md.parts], [sd.send_splits for sd in md.parts]
        )
        pooled = [
            gather_pool(r, sd.inverse, sd.offsets, sd.batch_size, g.feature_mean).flatten(1)
            for g, sd, r in zip(groups, md.parts, rows, strict=True)
        ]
        flat = torch.cat(pooled, dim=1)
        if training:
            # backward: mixed.backward_and_update (this module's backward_and_update)
            return ShardedLookup.apply(groups[0]._anchor, flat, mixed, md)
    for g, sd in zip(groups, md.parts, strict=True):
        HostTier.done(g.tier, sd)  # (no update: the batch's cache slots are free again)
    return flat


def backward_and_update(mixed, md, grad_flat: torch.Tensor) -> None:
    """Each group's pooling backward, one gradient all-to-all for all, one all-reduce of the replicated
    tables' gradients, then each group's sparse update."""
    groups, batch = mixed.groups, grad_flat.shape[0]
    with groups[0]._stage("grad_dist"):
        messages, column = [], 0
        for g, sd in zip(groups, md.parts, strict=True):
            width = len(g.features) * g.dim
            # a strided slice of the concatenation's gradient: the kernels read it in place
            grad = grad_flat[:, column : column + width].reshape(batch, len(g.features), g.dim)
            messages.append(g.gradient_message(sd, grad))
            column += width
        received = groups[0].exchange.gradients_packed(messages, md.parts)
        updates = _with_replicated(groups, md.parts, received)
    for g, sd, (rows, grads, counts) in zip(groups, md.parts, updates, strict=True):
        g.apply_gradients(sd, rows, grads, counts)


def _with_replicated(groups, parts, received) -> list:
    """(rows, gradients, counts) per group for merge_update; the groups with replicated tables get
    their dense sums over ranks from one float32 all-reduce (ShardedEmbeddingCollection._with_replicated
    per group)."""
    dense = {}
    for i, (g, sd, (grads, counts)) in enumerate(zip(groups, parts, received, strict=True)):
        if g.layout.num_replicated_rows:
            dense[i] = scatter_replicated(
                sd.owner_rows, grads, counts, g.layout.num_replicated_rows
            )
    if len(dense) == 1:
        groups[0].exchange.all_reduce_(next(iter(dense.values())))
    elif dense:
        flat = groups[0].exchange.all_reduce_(torch.cat([d.reshape(-1) for d in dense.values()]))
        sums = flat.split([d.numel() for d in dense.values()])
        dense = {i: s.view_as(d) for (i, d), s in zip(dense.items(), sums, strict=True)}
    out = []
    for i, (sd, (grads, counts)) in enumerate(zip(parts, received, strict=True)):
        if i in dense:
            out.append(append_replicated(sd.owner_rows, grads, counts, dense[i]))
        else:
            out.append((sd.owner_rows, grads, counts))
    return out
