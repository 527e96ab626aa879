"""ShardedEmbeddingCollection: embedding tables sharded over ranks, rows exchanged with all-to-all.

One forward is three phases: input_dist (dedup the batch's keys, send each owner its keys),
compute (owners read the rows) and output_dist (rows back to the requesters, pooled). The backward
mirrors them and applies the sparse optimizer in place: tables never get a dense gradient.
The collection is made of embedding.layout (who holds which row, where), embedding.storage (the
rows), embedding.dynamic_tables (tables of raw int64 keys) and embedding.state (tables as state).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from embedding import byte_model
from embedding.comm import Exchange
from embedding.dynamic import DynamicShard
from embedding.dynamic_tables import DynamicTables
from embedding.host_tier import HostTier
from embedding.ids import IdChecker
from embedding.layout import ShardLayout
from embedding.planner import ShardingPlan, plan_sharding
from embedding.sparse_dist import SparseDist
from embedding.state_api import TablesAsState
from embedding.storage import RowStorage
from embedding.tables import STORAGE_DTYPES, Table, feature_names, one_dim
from kernels import (
    SparseOptimizer,
    append_replicated,
    gather_pool,
    lookup,
    merge_update,
    pool_backward,
    pool_backward_update,
    scatter_replicated,
    unique_partition,
)


class ShardedEmbeddingCollection(TablesAsState, nn.Module):
    """Pooled embedding lookups over tables sharded by a ShardingPlan.

    forward(kjt) -> pooled [B, F, D] float32 for the local batch, F in ``self.features`` order.
    Gradients flowing into ``pooled`` update the tables in place during backward (scaled by 1/W:
    each rank's loss is a mean over its B = global/W samples, as DDP averages dense grads).
    With one rank, values read their rows straight from the storage and the backward is one fused
    pass; always_exchange=True takes the exchange path there too (tests compare the two paths).
    """

    def __init__(
        self,
        tables: list[Table],
        plan: ShardingPlan,
        optimizer: SparseOptimizer,
        *,
        rank: int = 0,
        world_size: int = 1,
        group=None,
        device="cpu",
        seed: int = 0,
        storage_dtype: str = "float32",
        exchange_dtype: str = "fp32",
        always_exchange: bool = False,
        input_group=None,
        table_ids: list[int] | None = None,
    ):
        super().__init__()
        self.tables, self.plan, self.optimizer, self.seed = tables, plan, optimizer, seed
        self.dim, self.rank, self.world_size = one_dim(tables), rank, world_size
        self.features = feature_names(tables)
        # the path every batch takes (SparseDist.single_rank)
        self.single_rank = world_size == 1 and not always_exchange
        # rows and gradients on the wire
        self.exchange = Exchange(group, rank, world_size, exchange_dtype, input_group)
        shards = {
            t: DynamicShard(table, rank, world_size, device)
            for t, table in enumerate(tables)
            if table.dynamic
        }
        self.layout = ShardLayout(
            tables, plan, rank, world_size, device, {t: shard.pool for t, shard in shards.items()}
        )
        if table_ids is not None:  # a MixedDimCollection's group: the run's index of each table
            self.layout.table_ids = list(table_ids)
        self.ids = IdChecker(tables, self.layout.table_rows, device)
        self.storage = RowStorage(
            self.layout.num_local_rows, self.dim, STORAGE_DTYPES[storage_dtype], optimizer, device
        )
        self.storage.init_weights(self.layout, seed)
        self.tier = HostTier.attach(plan, self.layout, self.storage, seed)  # or None
        self.dynamic = DynamicTables(
            shards, self.features, self.layout, self.storage, self.exchange, seed
        )
        # int32, as the kernels take it (no conversion per call)
        mean = [t.pooling == "mean" for t in tables for _ in t.features]
        self.feature_mean = torch.tensor(mean, dtype=torch.int32, device=device)
        # sparse updates applied so far (= training steps); restored by checkpoints
        self.num_updates = 0
        # makes autograd call our backward
        self._anchor = torch.zeros((), device=device, requires_grad=True)
        # bytes this rank sent to other ranks, and device-memory bytes moved (an estimate,
        # embedding.byte_model.MemoryBytes), in the last forward + backward
        self.last_exchange_bytes, self.last_memory_bytes = 0, 0
        # optional training.stages.StageTimer: training steps record input_dist, lookup,
        # output_dist, grad_dist and sparse_update into it (evaluation, under no_grad, is not timed)
        self.timer = None

    @property
    def weight(self) -> torch.Tensor:
        """[local rows, D]: the stored rows (embedding.layout says which table's row sits where)."""
        return self.storage.weight

    # ---- what a MixedDimCollection (embedding.mixed: one collection per dim) also answers ---------
    feature_dims = property(lambda self: [self.dim] * len(self.features))

    def locate_table(self, t: int):  # (the collection of table t's dim, its index there)
        return self, t

    def table_groups(self):  # per dim: (its collection, the run's index of each of its tables)
        return [(self, list(range(len(self.tables))))]

    # ---- ids -----------------------------------------------------------------------------------
    def check_ids(self, kjt):
        """The batch with every table's out-of-range policy applied (embedding.ids.IdChecker)."""
        return self.ids.check(kjt)[0]

    def raise_bad_ids(self) -> None:
        """Raise the error of the first out-of-range id that training batches had since the last call
        (ids are checked on the device; IdChecker.defer)."""
        self.ids.raise_pending()

    def _stage(self, name: str, training: bool = True):
        """The timer's stage ``name`` while timing a training step, else a no-op."""
        return self.timer.stage(name) if self.timer is not None and training else nullcontext()

    # ---- phase 1: input_dist ---------------------------------------------------------------------
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
        sd = self._dist(kjt)
        if self.tier is not None:  # the rows this rank reads or serves made resident, a batch ahead
            self.tier.resolve_dist(sd, self.layout, self.dynamic or None)
        return sd

    def _dist(self, kjt) -> SparseDist:
        layout = self.layout
        if self.dynamic:
            kjt, value_table = self.ids.check(kjt)
            if not self.single_rank:
                return self.dynamic.input_dist(kjt, value_table)
            rows = kjt.values + layout.local_base[value_table]  # dynamic tables' rows: compute
            return SparseDist.local(kjt.batch_size, kjt.offsets, rows, self.dynamic.local_keys(kjt))
        if self.single_rank:  # every row is local: each value's row, nothing to dedup or send
            rows = self.ids.shifted(kjt, layout.local_base)
            return SparseDist.local(kjt.batch_size, kjt.offsets, rows)
        # the counts sent, then those received: one tensor, read at once
        counts = torch.empty(2 * self.world_size, dtype=torch.int64, device=kjt.values.device)
        unique_keys, send_counts, inverse = self.partition(kjt, counts[: self.world_size])
        recv_counts = self.exchange.exchange_counts(send_counts, out=counts[self.world_size :])
        # the step's one host sync: the split sizes of every all-to-all of this batch, both ways
        splits = counts.tolist()
        send_splits, recv_splits = splits[: self.world_size], splits[self.world_size :]
        unique_keys = unique_keys[: sum(send_splits)]
        recv_keys, work = self.exchange.start(unique_keys, send_splits, recv_splits, ids=True)
        return SparseDist(
            kjt.batch_size,
            kjt.offsets,
            inverse,
            unique_keys,
            send_splits,
            recv_splits,
            recv_keys,
            work,
            send_counts=send_counts,
            recv_counts=recv_counts,
        )

    def partition(self, kjt, counts_out: torch.Tensor):
        """(unique keys grouped by owner, padded to N slots: the first sum(counts_out) are the keys, the
        keys sent to each rank (counts_out, [W]), each value's unique key): no host sync."""
        layout = self.layout
        keys = self.ids.shifted(kjt, layout.table_offsets)  # fused key space: table offset + id
        return unique_partition(
            keys,
            layout.table_offsets,
            layout.table_owner,
            self.world_size,
            key_space=layout.num_keys,
            padded=True,
            counts_out=counts_out,
        )

    # ---- phase 2: compute ------------------------------------------------------------------------
    def compute(self, sd: SparseDist) -> torch.Tensor:
        """Owner: look up the rows of every received key, in the exchange dtype (one pass: the
        rows are read straight from the table and cast while written).

        Example (rank 1 above): recv_keys [12, 12] -> local rows [2, 2] -> rows [[w2], [w2]]
        """
        sd.wait()
        step = self.num_updates + 1  # the step whose backward updates these rows (admission)
        if sd.single_rank:  # output_dist pools straight from the storage
            if sd.dynamic:
                self.dynamic.fill_value_rows(sd, step)
            return None
        layout = self.layout
        if self.dynamic:
            sd.owner_rows = self.dynamic.local_rows(sd, step)
        elif sd.owner_rows is None:  # (else set by the host tier)
            sd.owner_rows = layout.local_rows(sd.recv_keys)
        # with one rank the rows are not sent: they stay in the storage dtype, as pooled at W=1
        wire = self.exchange.dtype if self.exchange.distributed else None
        served = lookup(self.storage.weight, sd.owner_rows, out_dtype=wire)
        if self.dynamic:
            self.dynamic.serve(sd, served, wire)
        return served

    # ---- phase 3: output_dist --------------------------------------------------------------------
    def output_dist(self, sd: SparseDist, served_rows: torch.Tensor) -> torch.Tensor:
        """Send rows back to the requesters, then pool: [B, F, D].

        Example (rank 0 above): gets rows for its unique [3 | 12] from ranks 0 and 1, then pools
        bags [3], [3], [12] of its local batch (sum or mean per feature; empty bags give zeros).
        """
        if sd.single_rank:
            pooled = gather_pool(
                self.storage.weight, sd.value_rows, sd.offsets, sd.batch_size, self.feature_mean
            )
            if self.dynamic:
                self.dynamic.pool(sd, pooled, self.feature_mean)
            return pooled
        rows = self.exchange.rows(served_rows, sd.recv_splits, sd.send_splits)
        return gather_pool(rows, sd.inverse, sd.offsets, sd.batch_size, self.feature_mean)

    # ---- backward --------------------------------------------------------------------------------
    def backward_and_update(self, sd: SparseDist, grad_pooled: torch.Tensor) -> None:
        """pool_backward -> all-to-all grads to owners -> merge across senders -> sparse update.

        Single rank: kernels.pool_backward_update does it all in one pass (the sparse_update
        stage)."""
        o, storage = self.optimizer, self.storage
        if sd.single_rank:
            with self._stage("sparse_update"):
                self.num_updates += 1
                updated = pool_backward_update(
                    storage.weight,
                    storage.state,
                    storage.freq,
                    storage.last_step,
                    self.num_updates,
                    sd.value_rows,
                    sd.offsets,
                    grad_pooled,
                    self.feature_mean,
                    o,
                )
                if self.dynamic:
                    args = (sd, grad_pooled, self.feature_mean, self.num_updates, o)
                    updated = [updated, *self.dynamic.update_values(*args)]
                    self.dynamic.reset_null_row()
                HostTier.done(self.tier, sd)
            self.last_exchange_bytes = 0
            self.last_memory_bytes = byte_model.memory_bytes(self, sd, updated)
            return
        with self._stage("grad_dist"):
            grads, counts = self.exchange.gradients(self.gradient_message(sd, grad_pooled), sd)
            rows = sd.owner_rows
            if self.layout.num_replicated_rows:
                rows, grads, counts = self._with_replicated(rows, grads, counts)
        self.apply_gradients(sd, rows, grads, counts)

    def apply_gradients(self, sd: SparseDist, rows, grads, counts) -> None:
        """The sparse update of the received gradients (exchange path): equal rows merged (in a fixed
        order) and the optimizer applied, in one pass; lookup counts and last step written beside."""
        o, storage = self.optimizer, self.storage
        with self._stage("sparse_update"):
            self.num_updates += 1
            updated = merge_update(
                storage.weight,
                storage.state,
                storage.freq,
                storage.last_step,
                self.num_updates,
                rows,
                grads,
                counts,
                o,
            )
            if self.dynamic:
                more = self.dynamic.merge(sd, grads, counts, self.num_updates, o)
                updated = [updated, *more]
                self.dynamic.reset_null_row()
            HostTier.done(self.tier, sd)
        self.last_exchange_bytes = byte_model.exchange_bytes(self, sd)
        self.last_memory_bytes = byte_model.memory_bytes(self, sd, updated)

    def gradient_message(self, sd: SparseDist, grad_pooled: torch.Tensor):
        """The GradientMessage to the owners of the batch's unique keys (embedding.comm).

        The pooling backward writes each unique key's gradient (times 1/W: each rank's loss is a
        mean over its own samples) and lookup count straight into the message (sort + segment
        sums, no atomics); one all-to-all carries both."""
        num_unique = sd.unique_keys.numel()
        message = self.exchange.gradient_message(num_unique, self.dim, grad_pooled.device)
        pool_backward(
            grad_pooled,
            sd.inverse,
            sd.offsets,
            self.feature_mean,
            num_unique,
            scale=1.0 / self.world_size,
            out=message.grads,
            lookups=message.lookups,
        )
        return message

    def _with_replicated(self, rows: torch.Tensor, grads: torch.Tensor, counts: torch.Tensor):
        """Replicated tables' gradients and lookup counts summed over ranks, densely (one float32
        all-reduce), appended as one entry per replicated row; the entries received for them add
        nothing (kernels.replicated). No host sync."""
        dense = scatter_replicated(rows, grads, counts, self.layout.num_replicated_rows)
        self.exchange.all_reduce_(dense)
        return append_replicated(rows, grads, counts, dense)

    # ---- module API ------------------------------------------------------------------------------
    def forward(self, kjt_or_dist) -> torch.Tensor:
        sd = kjt_or_dist if isinstance(kjt_or_dist, SparseDist) else self.input_dist(kjt_or_dist)
        if not torch.is_grad_enabled():
            pooled = self.output_dist(sd, self.compute(sd))
            HostTier.done(self.tier, sd)  # (no update: the batch's cache slots are free again)
            return pooled
        with self._stage("input_dist"):
            sd.wait()  # the ids' all-to-all (started by input_dist) is input_dist's time
        with self._stage("lookup"):
            served_rows = self.compute(sd)
        with self._stage("output_dist"):
            return ShardedLookup.apply(self._anchor, self.output_dist(sd, served_rows), self, sd)


class ShardedLookup(torch.autograd.Function):
    """Identity on pooled in forward; backward runs the module's backward_and_update(sd, grad): the
    exchange and the in-place sparse update (of one collection, or of a mixed-dim one's groups)."""

    @staticmethod
    def forward(ctx, anchor, pooled, module, sd):
        ctx.module, ctx.sd = module, sd
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled):
        # read in place by the pooling backward's kernels (a slice of the dense network's
        # concatenation, usually): a contiguous copy would be one more launch a step
        ctx.module.backward_and_update(ctx.sd, grad_pooled)
        return None, None, None, None


class EmbeddingCollection(ShardedEmbeddingCollection):
    """Single-process collection: every table on this process, same code path as the sharded one."""

    def __init__(
        self,
        tables: list[Table],
        optimizer: SparseOptimizer,
        *,
        device="cpu",
        seed: int = 0,
        storage_dtype: str = "float32",
        always_exchange: bool = False,
    ):
        options = dict(storage_dtype=storage_dtype)
        plan = plan_sharding(
            tables, 1, optimizer=optimizer.name, default_placement="table", **options
        )
        options.update(device=device, seed=seed, always_exchange=always_exchange)
        super().__init__(tables, plan, optimizer, **options)
