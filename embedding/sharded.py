"""ShardedEmbeddingCollection: embedding tables sharded over ranks, rows exchanged with all-to-all.

One forward is three phases (DESIGN.md, "One training step"); the backward mirrors them and
applies the sparse optimizer in place, so tables never get a dense gradient.

Keys. A feature's id i of table t becomes the global key ``table_offsets[t] + i`` (fused row
space of all tables). Ownership: table-wise -> the table's rank; row-wise -> key row % W;
replicated -> the local rank (every rank holds a copy).

Local storage. One [local_rows, D] tensor per rank: replicated tables first (same layout on
every rank, so their gradients can be all-reduced densely), then the rank's table-wise tables,
then its row-wise shards (row r of a row-wise table is local row r // W on rank r % W).
The owner side maps keys -> local rows (``local_rows``), not a fixed row range: dynamic tables
(raw int64 ids, rows allocated on admission: embedding.dynamic) sit behind the same compute phase,
their keys in segments of their own (embedding.dynamic_dist); their rows follow the static ones.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from embedding.comm import Exchange
from embedding.dynamic_dist import DynamicDistMixin
from embedding.planner import ShardingPlan, plan_sharding
from embedding.state import _DIGEST_K1, _DIGEST_K2, EmbeddingStateMixin  # noqa: F401 - the digest's constants live here too
from embedding.tables import STORAGE_DTYPES, Table, feature_names
from kernels import (
    SparseOptimizer,
    gather_pool,
    lookup,
    pool_backward,
    pool_backward_update,
    sparse_update,
    unique_partition,
)
from kernels.hashing import splitmix64, uniform


@dataclass
class SparseDist:
    """What input_dist hands to compute and output_dist (and backward) for one batch."""

    batch_size: int
    offsets: torch.Tensor  # [F*B+1] bag boundaries of the local batch
    inverse: torch.Tensor  # [N] index of each value's key in unique_keys
    unique_keys: torch.Tensor  # [U] grouped by owner
    send_splits: list[int]  # unique keys sent to each rank
    recv_splits: list[int]  # keys received from each rank
    recv_keys: torch.Tensor | None = None  # [sum(recv_splits)] keys this rank must serve
    _work: object = None  # pending all-to-all of the keys
    value_rows: torch.Tensor | None = None  # W = 1 only: [N] local row read by each value (no dedup, no exchange)
    # with dynamic tables (embedding.dynamic_dist): received keys per sender and segment, their lookup counts;
    # W = 1: per dynamic table (table, value positions, distinct keys, inverse, lookups)
    segments: list[list[int]] | None = None
    recv_lookups: torch.Tensor | None = None
    _lookups_work: object = None
    dynamic: list | None = None

    def wait(self) -> SparseDist:
        for name in ("_work", "_lookups_work"):
            if getattr(self, name) is not None:
                getattr(self, name).wait()
                setattr(self, name, None)
        return self


class ShardedEmbeddingCollection(EmbeddingStateMixin, DynamicDistMixin, nn.Module):
    """Pooled embedding lookups over tables sharded by a ShardingPlan.

    forward(kjt) -> pooled [B, F, D] float32 for the local batch, F in ``self.features`` order.
    Gradients flowing into ``pooled`` update the tables in place during backward (scaled by
    1/W: each rank's loss is a mean over its B = global/W samples, as DDP averages dense grads).
    """

    def __init__(self, tables: list[Table], plan: ShardingPlan, optimizer: SparseOptimizer, *,
                 rank: int = 0, world_size: int = 1, group=None, device="cpu", seed: int = 0,
                 storage_dtype: str = "float32", exchange_dtype: str = "fp32"):
        super().__init__()
        dims = {t.dim for t in tables}
        if len(dims) != 1:
            raise ValueError(f"all tables must share one embedding dim (pooled output is [B, F, D]); got {sorted(dims)}")
        self.tables = tables
        self.plan = plan
        self.dim = dims.pop()
        self.optimizer = optimizer
        self.rank, self.world_size = rank, world_size
        self.exchange = Exchange(group, rank, world_size, exchange_dtype)  # rows and gradients on the wire
        self.features = feature_names(tables)
        table_index = {t.name: i for i, t in enumerate(tables)}
        feature_table = [table_index[t.name] for t in tables for _ in t.features]
        rows = torch.tensor([0 if t.dynamic else t.num_embeddings for t in tables], dtype=torch.int64)  # fused key space
        offsets = torch.zeros(len(tables) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(rows, 0)

        kinds = [plan.placements[t.name].placement for t in tables]
        owner = [plan.placements[t.name].owner if k == "table" else (rank if k == "replicated" else -1)
                 for t, k in zip(tables, kinds, strict=True)]
        local_count = []
        for t, k, o in zip(tables, kinds, owner, strict=True):
            if k == "row":
                local_count.append(len(range(rank, t.num_embeddings, world_size)))
            else:
                local_count.append(t.num_embeddings if o == rank else 0)
        # replicated first, then table-wise, then row-wise shards
        order = sorted(range(len(tables)), key=lambda i: ({"replicated": 0, "table": 1, "row": 2, "key": 3}[kinds[i]], i))
        local_base = [0] * len(tables)
        cursor = 0
        for i in order:
            local_base[i] = cursor
            cursor += local_count[i]
        self.seed = seed
        cursor = self._setup_dynamic(local_base, cursor, device)  # null row, scratch row, dynamic regions
        self.num_local_rows = cursor
        self.num_replicated_rows = sum(local_count[i] for i in range(len(tables)) if kinds[i] == "replicated")
        self.local_count = local_count

        self.num_keys = int(offsets[-1])  # size of the fused key space (host copy: no sync to read it)
        # one rank owns every row: values read the table directly and the backward is one fused pass
        self.single_rank = world_size == 1
        self.register_buffer("table_offsets", offsets, persistent=False)
        self.register_buffer("local_space", torch.tensor([0, max(cursor, 1)]), persistent=False)  # local rows as one table
        self.register_buffer("local_owner", torch.zeros(1, dtype=torch.int64), persistent=False)
        self.register_buffer("table_rows", rows, persistent=False)
        self.register_buffer("table_owner", torch.tensor(owner, dtype=torch.int64), persistent=False)
        self.register_buffer("table_is_row", torch.tensor([k == "row" for k in kinds]), persistent=False)
        self.register_buffer("local_base", torch.tensor(local_base, dtype=torch.int64), persistent=False)
        self.register_buffer("feature_table", torch.tensor(feature_table, dtype=torch.int64), persistent=False)
        policies = {t.name: t.out_of_range for t in tables if t.out_of_range not in ("error", "modulo")}
        if policies:
            raise ValueError(f"out_of_range must be 'error' or 'modulo', got {policies}")
        self.any_modulo = any(t.out_of_range == "modulo" for t in tables)
        self.register_buffer("table_modulo", torch.tensor([t.out_of_range == "modulo" and not t.dynamic for t in tables]),
                             persistent=False)
        self.register_buffer("table_dynamic", torch.tensor([t.dynamic is not None for t in tables]), persistent=False)
        self.register_buffer("feature_mean", torch.tensor([t.pooling == "mean" for t in tables for _ in t.features]),
                             persistent=False)
        # the tables are made on the device: a host copy of 10s of GB would be slow and may not fit
        self.register_buffer("weight", torch.empty(cursor, self.dim, dtype=STORAGE_DTYPES[storage_dtype], device=device))
        for name, tensor in optimizer.init_state(cursor, self.dim, device).items():
            self.register_buffer(name, tensor)
        # access statistics (DeepRec EV export): lookups per row (every id occurrence in a bag counts,
        # counted by the requester and sent with the gradients, so totals do not depend on W) and the
        # training step (num_updates, 1-based) of the row's last update
        self.register_buffer("freq", torch.zeros(cursor, dtype=torch.int64, device=device))
        self.register_buffer("last_step", torch.zeros(cursor, dtype=torch.int64, device=device))
        self.num_updates = 0  # sparse updates applied so far (= training steps); restored by checkpoints
        self._init_weights(seed)
        self.weight[self.num_static_rows :] = 0  # the null row reads zeros; dynamic rows are set on admission
        self.to(device)
        self._anchor = torch.zeros((), device=device, requires_grad=True)  # makes autograd call our backward
        self.last_exchange_bytes = 0  # bytes this rank sent to other ranks in the last forward + backward
        self.last_memory_bytes = 0  # device-memory bytes moved by the last forward + backward (estimate)
        # optional pipeline.metrics.StageTimer: training steps record input_dist, lookup, output_dist,
        # grad_dist and sparse_update into it (evaluation, under no_grad, is not timed)
        self.timer = None

    # ---- layout helpers -------------------------------------------------------------------------------
    def local_global_rows(self, t: int) -> torch.Tensor:
        """Rows of table t (table-local ids) that this rank stores, in local storage order."""
        if self.local_count[t] == 0:
            return torch.zeros(0, dtype=torch.int64)
        if bool(self.table_is_row[t]):
            return torch.arange(self.rank, self.tables[t].num_embeddings, self.world_size)
        return torch.arange(self.tables[t].num_embeddings)

    def local_rows(self, keys: torch.Tensor) -> torch.Tensor:
        """Owner side: global keys this rank owns -> rows of its local storage."""
        t = torch.searchsorted(self.table_offsets, keys, right=True) - 1
        row = keys - self.table_offsets[t]
        return self.local_base[t] + torch.where(self.table_is_row[t], row // self.world_size, row)

    def _init_weights(self, seed: int) -> None:
        """Uniform(+-sqrt(1/rows)) from a hash of (seed, table, row, d): same values under any plan, and on any
        device (integer hashing and IEEE float64 arithmetic only), computed where the weights live."""
        device = self.weight.device
        d = torch.arange(self.dim, dtype=torch.int64, device=device)
        chunk_rows = max(1, (1 << 24 if device.type == "cuda" else 1 << 20) // max(self.dim, 1))  # bounds temporaries
        for t, table in enumerate(self.tables):
            key = int(splitmix64(torch.tensor([seed * 1_000_003 + t + 1], dtype=torch.int64))[0])
            bound = (1.0 / table.num_embeddings) ** 0.5
            rows = self.local_global_rows(t).to(device)
            base = int(self.local_base[t])
            for start in range(0, rows.numel(), chunk_rows):
                chunk = rows[start : start + chunk_rows]
                values = (2.0 * uniform((chunk[:, None] * self.dim + d) ^ key) - 1.0) * bound
                self.weight[base + start : base + start + chunk.numel()] = values.to(self.weight.dtype)

    def _state(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.optimizer.state_names}

    def _tracked(self) -> dict[str, torch.Tensor]:
        """Everything stored per local row: weights, optimizer state, access statistics."""
        return {"weight": self.weight, **self._state(), "freq": self.freq, "last_step": self.last_step}

    def check_ids(self, kjt):
        """The batch with every table's out-of-range policy applied: ids >= rows of a "modulo" table become
        id % rows. Raises ValueError naming feature, table, sample and id of the first id still out of range
        (any id of an "error" table outside [0, rows), any negative id). One host sync, as without modulo."""
        return self._checked_ids(kjt)[0]

    def _checked_ids(self, kjt):
        """(check_ids(kjt), table index of every value): input_dist reuses the latter for the key offsets."""
        missing = [f for f in self.features if f not in kjt.keys]
        if missing:
            raise ValueError(f"batch is missing feature(s) {missing} (tables' features: {self.features})")
        if list(kjt.keys) != self.features:
            raise ValueError(f"batch features {list(kjt.keys)} do not match the tables' features {self.features}")
        lengths = kjt.offsets[1:] - kjt.offsets[:-1]
        # output_size: no host sync to size the result
        value_table = self.feature_table.repeat_interleave(kjt.batch_size).repeat_interleave(
            lengths, output_size=kjt.values.numel())
        limit = self.table_rows[value_table]
        values = kjt.values
        if self.any_modulo:
            values = torch.where(self.table_modulo[value_table] & (values >= limit), values % limit, values)
        bad = (values < 0) | (values >= limit)
        if self.dynamic:  # any non-negative int64 is a dynamic table's key
            bad = (values < 0) | ((values >= limit) & ~self.table_dynamic[value_table])
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            bag = int(torch.searchsorted(kjt.offsets, torch.tensor(i, device=kjt.offsets.device), right=True)) - 1
            f, b = divmod(bag, kjt.batch_size)
            table = self.tables[int(self.feature_table[f])]
            size = "dynamic" if table.dynamic else f"{table.num_embeddings} rows"
            where = f"feature {self.features[f]!r} (table {table.name!r}, {size}): sample {b}"
            if int(values[i]) < 0:
                raise ValueError(f"{where} has negative id {int(values[i])} (an error under every out_of_range policy)")
            raise ValueError(f"{where} has id {int(values[i])} outside [0, {table.num_embeddings}) "
                             f"(out_of_range={table.out_of_range!r}; 'modulo' would map it to id % rows)")
        return (kjt if values is kjt.values else dataclasses.replace(kjt, values=values)), value_table

    def _stage(self, name: str, training: bool = True):
        """The timer's stage ``name`` while timing a training step, else a no-op."""
        return self.timer.stage(name) if self.timer is not None and training else nullcontext()

    # ---- phase 1: input_dist ----------------------------------------------------------------------------
    def input_dist(self, kjt) -> SparseDist:
        """Dedup the batch's keys, group them by owner, send each owner its keys (async).

        Example, W=2, table-wise: table A (rows 0..9) on rank 0, table B (keys 10..19) on rank 1.
            rank 0 batch keys [3, 3, 12]  -> unique [3 | 12], send_splits [1, 1]
            rank 1 batch keys [12, 5, 12] -> unique [5 | 12], send_splits [1, 1]
            rank 0 receives recv_keys [3, 5]   (recv_splits [1, 1])
            rank 1 receives recv_keys [12, 12] (recv_splits [1, 1])
        Call .wait() on the result (compute does) before using recv_keys.
        """
        with self._stage("input_dist", torch.is_grad_enabled()):
            return self._input_dist(kjt)

    def _input_dist(self, kjt) -> SparseDist:
        kjt, value_table = self._checked_ids(kjt)
        if self.dynamic:
            return self._dynamic_input_dist(kjt, value_table, SparseDist)
        if self.single_rank:  # every row is local: each value's row, nothing to dedup or send
            rows = kjt.values + self.local_base[value_table]
            return SparseDist(kjt.batch_size, kjt.offsets, rows, rows[:0], [0], [0], value_rows=rows)
        keys = kjt.values + self.table_offsets[value_table]  # fused key space: table offset + row
        unique_keys, send_counts, inverse = unique_partition(keys, self.table_offsets, self.table_owner, self.world_size,
                                                             key_space=self.num_keys)
        recv_counts = self.exchange.exchange_counts(send_counts)
        splits = torch.cat([send_counts, recv_counts]).tolist()  # one host sync for both
        send_splits, recv_splits = splits[: self.world_size], splits[self.world_size :]
        recv_keys, work = self.exchange.start(unique_keys, send_splits, recv_splits)
        return SparseDist(kjt.batch_size, kjt.offsets, inverse, unique_keys, send_splits, recv_splits, recv_keys, work)

    # ---- phase 2: compute ---------------------------------------------------------------------------------
    def compute(self, sd: SparseDist) -> torch.Tensor:
        """Owner: look up the rows of every received key.

        Keys asked by several ranks are read once (deduplicated again across senders).
        Example (rank 1 above): recv_keys [12, 12] -> local rows [2, 2] -> unique [2] -> rows [[w2], [w2]]
        """
        sd.wait()
        if sd.value_rows is not None:  # single rank: output_dist pools straight from the table
            if sd.dynamic:
                self._fill_value_rows(sd)
            return None
        local = self._dynamic_local_rows(sd) if self.dynamic else self.local_rows(sd.recv_keys)
        # the sort-free dedup of input_dist, over the local rows (one table, one owner) instead of torch.unique
        sd.owner_rows, _, sd.owner_inverse = unique_partition(local, self.local_space, self.local_owner, 1,
                                                              key_space=max(self.num_local_rows, 1))
        return lookup(self.weight, sd.owner_rows).index_select(0, sd.owner_inverse)

    # ---- phase 3: output_dist ---------------------------------------------------------------------------
    def output_dist(self, sd: SparseDist, served_rows: torch.Tensor) -> torch.Tensor:
        """Send rows back to the requesters, then pool: [B, F, D].

        Example (rank 0 above): gets rows for its unique [3 | 12] from ranks 0 and 1, then pools
        bags [3], [3], [12] of its local batch (sum or mean per feature; empty bags give zeros).
        """
        if sd.value_rows is not None:
            return gather_pool(self.weight, sd.value_rows, sd.offsets, sd.batch_size, self.feature_mean)
        rows = self.exchange.rows(served_rows, sd.recv_splits, sd.send_splits)
        return gather_pool(rows, sd.inverse, sd.offsets, sd.batch_size, self.feature_mean)

    # ---- backward -------------------------------------------------------------------------------------------
    def backward_and_update(self, sd: SparseDist, grad_pooled: torch.Tensor) -> None:
        """pool_backward -> all-to-all grads to owners -> merge across senders -> fused sparse update.

        Single rank: kernels.pool_backward_update does it all in one pass (the sparse_update stage)."""
        o = self.optimizer
        if sd.value_rows is not None:
            with self._stage("sparse_update"):
                self.num_updates += 1
                updated = pool_backward_update(self.weight, self._state(), self.freq, self.last_step, self.num_updates,
                                               sd.value_rows, sd.offsets, grad_pooled, self.feature_mean, o)
                if self.dynamic:
                    self._reset_null_row()
            self.last_exchange_bytes = 0
            self.last_memory_bytes = self._memory_bytes(sd, updated)
            return
        with self._stage("grad_dist"):
            rows, grads, counts = self._gradients_to_owners(sd, grad_pooled)
        with self._stage("sparse_update"):
            self.num_updates += 1
            self.freq.index_add_(0, rows, counts)
            self.last_step[rows] = self.num_updates
            sparse_update(self.weight, rows, grads, self._state(), o,
                          rows_unique=True)  # merged across senders in _gradients_to_owners
            if self.dynamic:
                self._reset_null_row()
        self.last_exchange_bytes = self._exchange_bytes(sd)
        self.last_memory_bytes = self._memory_bytes(sd, rows.numel())

    def _gradients_to_owners(self, sd: SparseDist, grad_pooled: torch.Tensor):
        """(local rows, [rows, D] summed gradients, [rows] lookup counts) of the rows this rank owns."""
        num_unique = sd.unique_keys.numel()
        grad_unique = pool_backward(grad_pooled, sd.inverse, sd.offsets, self.feature_mean, num_unique)
        grad_unique = grad_unique * (1.0 / self.world_size)
        # lookups of each unique key travel beside the gradients, exact (index_add_: unlike bincount, no sync);
        # with dynamic tables they travelled with the keys already
        received_lookups = sd.recv_lookups
        if received_lookups is None:
            lookups = torch.zeros(num_unique, dtype=torch.int32, device=grad_unique.device).index_add_(
                0, sd.inverse, torch.ones_like(sd.inverse, dtype=torch.int32))
            received_lookups = self.exchange.all_to_all(lookups, sd.send_splits, sd.recv_splits)
        received = self.exchange.gradients(grad_unique, sd.send_splits, sd.recv_splits)
        rows = sd.owner_rows
        grads = torch.zeros(rows.numel(), self.dim, dtype=torch.float32, device=received.device)
        grads.index_add_(0, sd.owner_inverse, received)
        counts = torch.zeros(rows.numel(), dtype=torch.int64, device=received.device)
        counts.index_add_(0, sd.owner_inverse, received_lookups.long())
        if self.num_replicated_rows:
            rows, grads, counts = self._all_reduce_replicated(rows, grads, counts)
        return rows, grads, counts

    def _all_reduce_replicated(self, rows: torch.Tensor, grads: torch.Tensor, counts: torch.Tensor):
        """Sum replicated tables' gradients and lookup counts over ranks, densely (one float32 all-reduce:
        counts are exact below 2^24 per batch). One host sync: no boolean-mask indexing (each is a nonzero)."""
        n = self.num_replicated_rows
        is_rep = rows < n
        # other tables' rows are written to a scratch row n, dropped before the all-reduce
        scratch = torch.zeros(n + 1, self.dim + 1, dtype=torch.float32, device=grads.device)
        scratch.index_put_((torch.where(is_rep, rows, n),), torch.cat([grads, counts.float().unsqueeze(1)], 1))
        dense = scratch[:n]  # column dim >= 1 marks touched rows: lazy optimizers update the union
        self.exchange.all_reduce_(dense)
        touched = dense[:, self.dim] > 0
        num_touched, num_other = torch.stack([touched.sum(), (~is_rep).sum()]).tolist()
        rep_rows = torch.nonzero_static(touched, size=num_touched).squeeze(1)
        other = torch.nonzero_static(~is_rep, size=num_other).squeeze(1)
        return (torch.cat([rep_rows, rows[other]]), torch.cat([dense[rep_rows, : self.dim], grads[other]]),
                torch.cat([dense[rep_rows, self.dim].round().long(), counts[other]]))

    def _exchange_bytes(self, sd: SparseDist) -> int:
        """Off-rank bytes this rank sent: keys (8 B), served rows and key gradients (D elements of the exchange
        dtype), lookup counts (4 B), split counts (8 B per key segment) and fp16 scales (4 B) per peer, replicated
        tables' all-reduce."""
        keys_out = sum(sd.send_splits) - sd.send_splits[self.rank]
        rows_out = sum(sd.recv_splits) - sd.recv_splits[self.rank]
        peers = self.world_size - 1
        per_peer = 8 * (1 + len(self.dynamic)) + (4 if self.exchange.dtype == torch.float16 else 0)
        element = self.exchange.element_size()
        replicated = 4 * (self.dim + 1) * self.num_replicated_rows * (self.world_size > 1)
        return per_peer * peers + 8 * keys_out + element * self.dim * (rows_out + keys_out) + 4 * keys_out + replicated

    def _memory_bytes(self, sd: SparseDist, updated_rows: int) -> int:
        """Device-memory bytes the step's embedding kernels must move at least (for achieved GB/s):
        owner row reads, pooling reads/writes, pooled-gradient reads, and the read-modify-write of
        updated rows and their optimizer state."""
        row = self.dim * self.weight.element_size()
        f32_row = 4 * self.dim
        values = int(sd.inverse.numel())
        bags_out = sd.batch_size * len(self.features) * f32_row
        state = sum(v[:1].numel() * v.element_size() for v in self._state().values()) if self.num_local_rows else 0
        if sd.value_rows is not None:  # rows read per value in both passes (pooling, then the fused backward)
            update = updated_rows * (2 * (row + state) + 16)  # + the lookup count and last step
            return values * (8 + row) + bags_out + values * (4 + 4 + f32_row) + update
        forward = sd.owner_rows.numel() * row + values * (8 + f32_row) + bags_out
        backward = bags_out + values * 8 + sd.unique_keys.numel() * f32_row + updated_rows * 2 * (row + state)
        return forward + backward

    # ---- module API -----------------------------------------------------------------------------------------
    def forward(self, kjt_or_dist) -> torch.Tensor:
        sd = kjt_or_dist if isinstance(kjt_or_dist, SparseDist) else self.input_dist(kjt_or_dist)
        if not torch.is_grad_enabled():
            return self.output_dist(sd, self.compute(sd))
        with self._stage("input_dist"):
            sd.wait()  # the ids' all-to-all (started by input_dist) is input_dist's time, not the lookup's
        with self._stage("lookup"):
            served_rows = self.compute(sd)
        with self._stage("output_dist"):
            return _ShardedLookup.apply(self._anchor, self.output_dist(sd, served_rows), self, sd)


class _ShardedLookup(torch.autograd.Function):
    """Identity on pooled in forward; backward runs the exchange and the in-place sparse update."""

    @staticmethod
    def forward(ctx, anchor, pooled, module, sd):
        ctx.module, ctx.sd = module, sd
        return pooled.clone()

    @staticmethod
    def backward(ctx, grad_pooled):
        ctx.module.backward_and_update(ctx.sd, grad_pooled.contiguous())
        return None, None, None, None


class EmbeddingCollection(ShardedEmbeddingCollection):
    """Single-process collection: every table on this process, same code path as the sharded one."""

    def __init__(self, tables: list[Table], optimizer: SparseOptimizer, *, device="cpu", seed: int = 0,
                 storage_dtype: str = "float32"):
        plan = plan_sharding(tables, 1, storage_dtype=storage_dtype, optimizer=optimizer.name, default_placement="table")
        super().__init__(tables, plan, optimizer, device=device, seed=seed, storage_dtype=storage_dtype)
