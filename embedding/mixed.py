"""MixedDimCollection: tables of different embedding dims in one collection.

One ShardedEmbeddingCollection per distinct dim (a group): each holds its tables' rows, optimizer state,
kernels and exchange, so every kernel sees one row width. A batch's features are split into one batch per
group, the groups run as usual, and their pooled outputs are concatenated in the run's feature order:
forward -> [B, sum of the features' dims] (feature f's vector at columns col[f] .. col[f] + dim_f).

Cost over one collection: the split (a few small gathers per group and one host read of the groups' value
counts) and, per group, what a collection does per step (its own id exchange and split-size read when
W > 1). A config with one dim never builds this class (make_collection), so its step is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from embedding.byte_model import MemoryBytes
from embedding.sharded import ShardedEmbeddingCollection
from embedding.tables import Table, feature_names
from pipeline.batch import KeyedJagged


@dataclass
class MixedDist:
    """One batch after input_dist: each group's SparseDist, in group order."""

    parts: list

    def wait(self) -> MixedDist:
        for part in self.parts:
            part.wait()
        return self


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

    @property
    def deferred(self) -> bool:
        return self._checkers[0].deferred

    @deferred.setter
    def deferred(self, value: bool) -> None:
        for c in self._checkers:
            c.deferred = value

    @property
    def locate(self):
        return self._checkers[0].locate

    @locate.setter
    def locate(self, value) -> None:
        for c in self._checkers:
            c.locate = value


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
        self._bag_index: dict[tuple[int, str], list[torch.Tensor]] = {}

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

    @property
    def num_updates(self) -> int:
        return self.groups[0].num_updates

    @num_updates.setter
    def num_updates(self, value: int) -> None:
        for g in self.groups:
            g.num_updates = value

    @property
    def timer(self):
        return self.groups[0].timer

    @timer.setter
    def timer(self, value) -> None:
        for g in self.groups:
            g.timer = value

    @property
    def last_exchange_bytes(self) -> int:
        return sum(g.last_exchange_bytes for g in self.groups)

    @property
    def last_memory_bytes(self) -> MemoryBytes:
        """The groups' byte counts as one (their updated rows weighted by their bytes per row; still on
        the device where a group's are, read when the metrics log)."""
        parts = [g.last_memory_bytes for g in self.groups]
        if not all(isinstance(b, MemoryBytes) for b in parts):  # no step yet
            return 0
        rows = [b.rows.sum(dtype=torch.int64) if torch.is_tensor(b.rows) else b.rows for b in parts]
        weighted = sum(b.per_row * r for b, r in zip(parts, rows, strict=True))
        return MemoryBytes(sum(b.fixed for b in parts), 1, weighted)

    def pooled_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, sum(self.feature_dims))

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
        for g, part in zip(self.groups, self._split(kjt), strict=True):
            g.check_ids(part)
        return kjt

    def raise_bad_ids(self) -> None:
        self.ids.raise_pending()

    # ---- the batch split by group ------------------------------------------------------------------
    def _bags(self, batch_size: int, device) -> list[torch.Tensor]:
        """Per group: the positions of its features' bags in a batch's bag list (cached per batch size)."""
        key = (batch_size, str(device))
        if key not in self._bag_index:
            self._bag_index[key] = [
                torch.cat(
                    [torch.arange(f * batch_size, (f + 1) * batch_size) for f in features]
                ).to(device)
                for features in self._group_features
            ]
        return self._bag_index[key]

    def _split(self, kjt) -> list[KeyedJagged]:
        """One batch per group: its features' bags, in its feature order."""
        if list(kjt.keys) != self.features:
            raise ValueError(
                f"batch features {list(kjt.keys)} do not match the tables' features {self.features}"
            )
        lengths = kjt.lengths()
        bags = self._bags(kjt.batch_size, kjt.offsets.device)
        group_lengths = [lengths[b] for b in bags]
        offsets = [torch.nn.functional.pad(torch.cumsum(n, 0), (1, 0)) for n in group_lengths]
        # the split's one host read: how many ids each group gets
        totals = torch.stack([o[-1] for o in offsets]).tolist()
        out = []
        for g, b in enumerate(bags):
            shift = kjt.offsets[b] - offsets[g][:-1]  # where each bag's ids start in the batch
            positions = torch.repeat_interleave(shift, group_lengths[g], output_size=totals[g])
            positions += torch.arange(totals[g], dtype=torch.int64, device=positions.device)
            out.append(
                KeyedJagged(kjt.values[positions], offsets[g], list(self.groups[g].features))
            )
        return out

    # ---- forward ---------------------------------------------------------------------------------
    def input_dist(self, kjt) -> MixedDist:
        parts = self._split(kjt)
        return MixedDist([g.input_dist(p) for g, p in zip(self.groups, parts, strict=True)])

    def forward(self, kjt_or_dist) -> torch.Tensor:
        md = kjt_or_dist if isinstance(kjt_or_dist, MixedDist) else self.input_dist(kjt_or_dist)
        pooled = [g(sd).flatten(1) for g, sd in zip(self.groups, md.parts, strict=True)]
        flat = torch.cat(pooled, dim=1)
        return flat if self._column_order is None else flat.index_select(1, self._column_order)


def make_collection(tables: list[Table], plan, optimizer, **options) -> nn.Module:
    """One ShardedEmbeddingCollection when every table has the same dim (pooled [B, F, D]), else a
    MixedDimCollection (pooled [B, sum of the features' dims])."""
    if len({t.dim for t in tables}) == 1:
        return ShardedEmbeddingCollection(tables, plan, optimizer, **options)
    return MixedDimCollection(tables, plan, optimizer, **options)
