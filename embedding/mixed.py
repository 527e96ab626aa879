"""MixedDimCollection: tables of different embedding dims in one collection.

One ShardedEmbeddingCollection per distinct dim (a group): each holds its tables' rows, optimizer state,
kernels and exchange, so every kernel sees one row width. A batch's features are split into one batch per
group, the groups run as usual, and their pooled outputs are concatenated in the run's feature order:
forward -> [B, sum of the features' dims] (feature f's vector at columns col[f] .. col[f] + dim_f).

Cost over one collection: the split (a few gathers for all groups and one host read: where each group's ids
end) and, per group, its id check, lookups, pooling and sparse update; at W > 1 (static tables) the groups'
key counts travel in one all-to-all and one split read, their keys in one all-to-all, their rows in one and
their gradients in one (embedding.mixed_step). A config with one dim never builds this class
(make_collection), so its step is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from embedding import mixed_step
from embedding.sharded import ShardedEmbeddingCollection
from embedding.sparse_dist import SparseDist
from embedding.tables import Table, feature_names
from pipeline.batch import KeyedJagged


@dataclass
class MixedDist:
    """One batch after input_dist: each group's SparseDist, in group order. With the groups' keys in one
    all-to-all (``packed``: the received keys, its work, each group's receive splits), wait() hands each
    group its received keys."""

    parts: list
    packed: tuple | None = None
    # the exchange path (static tables): the rows and gradients travel packed too (embedding.mixed_step)
    exchanged: bool = False

    def wait(self) -> MixedDist:
        if self.packed is not None:
            received, work, recv_splits = self.packed
            if work is not None:
                work.wait()
            # from each sender: its keys of group 0, then group 1, ...
            pieces, cursor = [[] for _ in self.parts], 0
            for s in range(len(recv_splits[0])):
                for g, splits in enumerate(recv_splits):
                    pieces[g].append(received[cursor : cursor + splits[s]])
                    cursor += splits[s]
            for part, keys in zip(self.parts, pieces, strict=True):
                part.recv_keys = torch.cat(keys)
            self.packed = None
        for part in self.parts:
            part.wait()
        return self


class _Broadcast:
    """An attribute read from the first of an object's members (attribute ``members``: a list) and
    written to all of them."""

    def __init__(self, members: str):
        self.members = members

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(getattr(obj, self.members)[0], self.name)

    def __set__(self, obj, value) -> None:
        for member in getattr(obj, self.members):
            setattr(member, self.name, value)


class _GroupIds:
    """The groups' id checkers as one (embedding.ids.IdChecker's interface that training uses)."""

    def __init__(self, groups):
        self._checkers = [g.ids for g in groups]

    def defer(self, first_step: int) -> None:
        for c in self._checkers:
            c.defer(first_step)

    def raise_pending(self) -> None:
        for c in self._checkers:
            c.raise_pending()

    deferred = _Broadcast("_checkers")
    locate = _Broadcast("_checkers")


class MixedDimCollection(nn.Module):
    """Pooled lookups of tables of several dims; the interface of ShardedEmbeddingCollection that
    training, checkpoints and exports use, table index t meaning the run's table list."""

    def __init__(self, tables: list[Table], plan, optimizer, **options):
        super().__init__()
        self.tables, self.plan, self.optimizer = tables, plan, optimizer
        self.rank, self.world_size = options.get("rank", 0), options.get("world_size", 1)
        self.features = feature_names(tables)
        dims = list(dict.fromkeys(t.dim for t in tables))  # groups in order of first appearance
        members = [[t for t, table in enumerate(tables) if table.dim == d] for d in dims]
        # initial rows and digests keyed by the run's table index (table_ids), not the group's
        self.groups = nn.ModuleList(
            ShardedEmbeddingCollection(
                [tables[t] for t in ids], plan, optimizer, table_ids=ids, **options
            )
            for ids in members
        )
        self.members = members
        self._where = {t: (g, i) for g, ids in enumerate(members) for i, t in enumerate(ids)}
        self.feature_dims = [t.dim for t in tables for _ in t.features]
        index = {f: i for i, f in enumerate(self.features)}
        self._group_features = [[index[f] for f in g.features] for g in self.groups]
        self.ids = _GroupIds(self.groups)
        self._column_order = self._columns(options.get("device", "cpu"))
        self._bag_index: dict[tuple[int, str], torch.Tensor] = {}

    def _columns(self, device) -> torch.Tensor | None:
        """For each output column, its column in the groups' outputs side by side (None: the same)."""
        start, cursor = [0] * len(self.features), 0
        for f, d in enumerate(self.feature_dims):
            start[f], cursor = cursor, cursor + d
        source = [0] * cursor
        position = 0
        for features in self._group_features:
            for f in features:
                for c in range(self.feature_dims[f]):
                    source[start[f] + c] = position
                    position += 1
        if source == list(range(cursor)):
            return None
        return torch.tensor(source, dtype=torch.int64, device=device)

    # ---- what training reads ---------------------------------------------------------------------
    @property
    def dynamic(self) -> bool:
        return any(bool(g.dynamic) for g in self.groups)

    @property
    def weight(self) -> torch.Tensor:
        return self.groups[0].weight

    @property
    def exchange(self):
        return self.groups[0].exchange

    # sparse updates applied (the same in every group), the training step's StageTimer
    num_updates = _Broadcast("groups")
    timer = _Broadcast("groups")

    @property
    def last_exchange_bytes(self) -> int:
        return sum(g.last_exchange_bytes for g in self.groups)

    @property
    def last_memory_bytes(self) -> list:
        """Each group's embedding.byte_model.MemoryBytes of the last step (summed when the metrics log)."""
        return [g.last_memory_bytes for g in self.groups]

    # ---- tables: index t of the run's list -> (group, index in the group) -------------------------
    def locate_table(self, t: int):
        g, i = self._where[t]
        return self.groups[g], i

    def table_groups(self):
        """(collection, the run's index of each of its tables) per group."""
        return list(zip(self.groups, self.members, strict=True))

    def table_digests(self, chunk_elems: int = 1 << 22) -> list[int]:
        out = [0] * len(self.tables)
        for group, ids in self.table_groups():
            for t, digest in zip(ids, group.table_digests(chunk_elems), strict=True):
                out[t] = digest
        return out

    def full_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        full = {}
        for g in self.groups:
            full.update(g.full_state_dict())
        return {t.name: full[t.name] for t in self.tables}

    def load_full_state_dict(self, full: dict[str, dict[str, torch.Tensor]]) -> None:
        for g in self.groups:
            g.load_full_state_dict({t.name: full[t.name] for t in g.tables if t.name in full})

    def shard_tables(self) -> dict[str, dict[str, torch.Tensor]]:
        shard = {}
        for g in self.groups:
            shard.update(g.shard_tables())
        return shard

    def load_table_state(self, t: int, state, source: str, optional=()) -> None:
        group, i = self.locate_table(t)
        group.load_table_state(i, state, source, optional)

    def export_rows(self, t: int, min_freq: int, since_step: int):
        group, i = self.locate_table(t)
        return group.export_rows(i, min_freq, since_step)

    def optimizer_state_names(self) -> tuple[str, ...]:
        return self.groups[0].optimizer_state_names()

    def dynamic_metrics(self) -> dict[str, dict[str, int]]:
        out = {}
        for g in self.groups:
            out.update(g.dynamic_metrics())
        return out

    # ---- ids -----------------------------------------------------------------------------------
    def check_ids(self, kjt):
        """The batch with every table's out-of-range policy applied (embedding.ids.IdChecker)."""
        values = kjt.values.clone()
        for g, part in zip(self.groups, self._split(kjt), strict=True):
            values[part.positions] = g.check_ids(part).values
        return KeyedJagged(values, kjt.offsets, kjt.keys)

    def raise_bad_ids(self) -> None:
        self.ids.raise_pending()

    # ---- the batch split by group ------------------------------------------------------------------
    def _bags(self, batch_size: int, device) -> torch.Tensor:
        """The batch's bags in group order (each group's features' bags, in its feature order), cached per
        batch size."""
        key = (batch_size, str(device))
        if key not in self._bag_index:
            features = [f for group in self._group_features for f in group]
            bags = [torch.arange(f * batch_size, (f + 1) * batch_size) for f in features]
            self._bag_index[key] = torch.cat(bags).to(device)
        return self._bag_index[key]

    def _split(self, kjt) -> list[KeyedJagged]:
        """One batch per group: its features' bags, in its feature order. All groups at once: the ids
        gathered in group order, then sliced (one host read: where each group's ids end)."""
        if list(kjt.keys) != self.features:
            raise ValueError(
                f"batch features {list(kjt.keys)} do not match the tables' features {self.features}"
            )
        batch, bags = kjt.batch_size, self._bags(kjt.batch_size, kjt.offsets.device)
        lengths = kjt.lengths()[bags]
        offsets = torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0))
        # where each bag's ids start in the batch, less where they start in group order
        shift = kjt.offsets[bags] - offsets[:-1]
        total = kjt.values.numel()
        positions = torch.repeat_interleave(shift, lengths, output_size=total)
        positions += torch.arange(total, dtype=torch.int64, device=positions.device)
        first_bags = [0]
        for group in self._group_features:
            first_bags.append(first_bags[-1] + len(group) * batch)
        ends = offsets[first_bags].tolist()  # the split's one host read
        values, out = kjt.values[positions], []
        for g, group in enumerate(self.groups):
            lo, hi = first_bags[g], first_bags[g + 1]
            part = KeyedJagged(
                values[ends[g] : ends[g + 1]], offsets[lo : hi + 1] - ends[g], list(group.features)
            )
            part.positions = positions[ends[g] : ends[g + 1]]  # where its ids sit in the batch
            out.append(part)
        return out

    # ---- forward ---------------------------------------------------------------------------------
    def input_dist(self, kjt) -> MixedDist:
        """The groups' input_dist; on the exchange path (static tables) their key counts travel in one
        all-to-all, read once, and their keys in one all-to-all."""
        first = self.groups[0]
        with first._stage("input_dist", torch.is_grad_enabled()):
            parts = self._split(kjt)
            if first.single_rank or self.dynamic:
                dists = [g._input_dist(p) for g, p in zip(self.groups, parts, strict=True)]
                return MixedDist(dists)
            return self._packed_input_dist(parts)

    def _packed_input_dist(self, parts: list[KeyedJagged]) -> MixedDist:
        world, groups, exchange = self.world_size, len(self.groups), self.exchange
        # [G, W] counts sent, then [G, W] received: one tensor, read at once
        counts = torch.empty(2 * groups * world, dtype=torch.int64, device=parts[0].values.device)
        send, recv = counts[: groups * world].view(groups, world), counts[groups * world :]
        found = [
            g.partition(p, send[i]) for i, (g, p) in enumerate(zip(self.groups, parts, strict=True))
        ]
        # each rank sends every rank its G counts: [W, G] rows by destination, received by sender
        received = exchange.exchange_counts(send.t().contiguous())
        recv.view(groups, world).copy_(received.t())
        # the step's split-size read, for every group
        splits = counts.tolist()
        send_splits = [splits[g * world : (g + 1) * world] for g in range(groups)]
        recv_splits = [
            splits[(groups + g) * world : (groups + g + 1) * world] for g in range(groups)
        ]
        pieces, starts = [], [0] * groups
        for r in range(world):  # to rank r: its keys of group 0, then group 1, ...
            for g, (unique_keys, _, _) in enumerate(found):
                pieces.append(unique_keys[starts[g] : starts[g] + send_splits[g][r]])
                starts[g] += send_splits[g][r]
        packed_send = [sum(s[r] for s in send_splits) for r in range(world)]
        packed_recv = [sum(s[r] for s in recv_splits) for r in range(world)]
        keys, work = exchange.start(torch.cat(pieces), packed_send, packed_recv, ids=True)
        dists = [
            SparseDist(
                p.batch_size,
                p.offsets,
                inverse,
                unique_keys[: starts[g]],
                send_splits[g],
                recv_splits[g],
                send_counts=send[g],
                recv_counts=recv.view(groups, world)[g],
            )
            for g, (p, (unique_keys, _, inverse)) in enumerate(zip(parts, found, strict=True))
        ]
        md = MixedDist(dists, (keys, work, recv_splits), exchanged=True)
        if any(
            g.tier is not None for g in self.groups
        ):  # the rows served made resident, a batch ahead
            md.wait()
            for g, sd in zip(self.groups, dists, strict=True):
                if g.tier is not None:
                    g.tier.resolve_dist(sd, g.layout)
        return md

    def backward_and_update(self, md: MixedDist, grad_flat: torch.Tensor) -> None:
        """The packed exchange path's backward (embedding.mixed_step)."""
        mixed_step.backward_and_update(self, md, grad_flat)

    def forward(self, kjt_or_dist) -> torch.Tensor:
        md = kjt_or_dist if isinstance(kjt_or_dist, MixedDist) else self.input_dist(kjt_or_dist)
        with self.groups[0]._stage("input_dist", torch.is_grad_enabled()):
            md.wait()  # the keys' all-to-all (started by input_dist) is input_dist's time
        if md.exchanged:
            flat = mixed_step.forward(self, md)
        else:
            pooled = [g(sd).flatten(1) for g, sd in zip(self.groups, md.parts, strict=True)]
        with self.groups[0]._stage("output_dist", torch.is_grad_enabled()):
            flat = flat if md.exchanged else torch.cat(pooled, dim=1)
            return flat if self._column_order is None else flat.index_select(1, self._column_order)


def make_collection(tables: list[Table], plan, optimizer, **options) -> nn.Module:
    """One ShardedEmbeddingCollection when every table has the same dim (pooled [B, F, D]), else a
    MixedDimCollection (pooled [B, sum of the features' dims])."""
    if len({t.dim for t in tables}) == 1:
        return ShardedEmbeddingCollection(tables, plan, optimizer, **options)
    return MixedDimCollection(tables, plan, optimizer, **options)
