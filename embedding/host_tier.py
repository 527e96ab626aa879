"""HostTier: static tables whose rows live in host memory, behind a device cache of their rows.

A table on the tier (ShardLayout.cache_rows[t] > 0) keeps this rank's rows, their optimizer state
and access statistics (freq, last_step) in host memory (or numpy memmaps in a directory, for tables
beyond host RAM). The rows a step moves go through pinned buffers of their own size on CUDA, so the
copies are asynchronous without page-locking the tables (tens of GB; the pinned allocator would also
round each one up to a power of two). Its region in the rank's RowStorage holds only
``cache_rows`` slots. The layout gives its rows virtual storage rows (from layout.TIER_BASE up); once
input_dist knows the rows a batch reads, ``resolve`` makes them resident (evicting the least
recently used or least looked-up slots that no batch in flight holds, writing dirty ones back,
copying the missing rows and their state in) and maps every virtual row to its slot. Every kernel
then runs unchanged on slot rows: where a row sits never changes its values nor the order of the
sums over it (the kernels sum per row in value order), so results are the all-on-device run's.

Batches in flight: a training batch holds its slots from its resolve until its sparse update
(``release``), at most two at once (the pipeline resolves batch i+1 before batch i's backward);
an evaluation batch holds them until its pooled output is made. Tables as state (embedding.state)
read and write the host copy after a flush (``host_tracked``, ``written``).

Per resolve the tier adds one host sync (the batch's distinct tiered rows read on the host), a
device-to-host copy of the evicted dirty rows and a host-to-device copy of the missed rows.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from embedding.layout import TIER_BASE, ShardLayout
from embedding.storage import RowStorage, static_rows

# counters of the training resolves since the last read (metrics): distinct rows looked up, hits,
# rows fetched, dirty rows written back, bytes host -> device and device -> host
COUNTERS = ("lookups", "hits", "fetched", "written_back", "h2d_bytes", "d2h_bytes")
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}


class _Cache:
    """One table's cache on this rank (host bookkeeping): which row each slot holds and back."""

    def __init__(self, t: int, name: str, rows: int, slots: int, slot_base: int, offset: int):
        self.t, self.name, self.slot_base, self.offset = t, name, slot_base, offset
        self.slot_of = np.full(rows, -1, np.int32)  # local row -> slot, -1: in host memory only
        self.lookups = np.zeros(rows, np.int64)  # lookups per row (the LFU policy's rank)
        self.row_of = np.full(slots, -1, np.int64)  # slot -> local row, -1: empty
        self.last_used = np.full(slots, -1, np.int64)  # resolve tick of the slot's last use
        self.pins = np.zeros(slots, np.int32)  # batches in flight that read the slot
        self.dirty = np.zeros(slots, bool)  # updated since fetched or written back


class Ticket:
    """The slots one batch holds, per tiered table, until released."""

    def __init__(self, training: bool):
        self.training, self.slots, self.released = training, {}, False


def _host_tensor(shape, dtype: torch.dtype, path: str | None) -> torch.Tensor:
    """Zeros in host memory, or in a numpy memmap at path (bf16 as its int16 bits)."""
    if path is None:
        return torch.zeros(shape, dtype=dtype)
    np_dtype = np.int16 if dtype == torch.bfloat16 else _NUMPY[dtype]
    array = np.memmap(path, dtype=np_dtype, mode="w+", shape=tuple(shape))
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


class HostTier:
    """The host copies and device caches of this rank's tiered tables (module docstring)."""

    def __init__(
        self, layout: ShardLayout, storage: RowStorage, seed: int, policy="lru", host_dir=""
    ):
        self.layout, self.storage, self.policy = layout, storage, policy
        device = storage.weight.device
        self.cuda = device.type == "cuda"
        self.tables = [t for t, n in enumerate(layout.cache_rows) if n]
        self.caches = {
            t: _Cache(
                t,
                layout.tables[t].name,
                layout.count[t],
                layout.cache_rows[t],
                layout.slot_base[t],
                layout.base[t] - TIER_BASE,
            )
            for t in self.tables
        }
        # virtual row - TIER_BASE -> storage row of its slot (int32: storage rows are few)
        self.slot_map = torch.full(
            (max(layout.tier_rows, 1),), -1, dtype=torch.int32, device=device
        )
        self.host = {t: self._host_rows(t, seed, host_dir) for t in self.tables}
        self.tick, self.in_flight = 0, []
        # CUDA: the last sparse update's and the last resolve's events (they may run on other streams)
        self.event, self.resolved = None, None
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.totals = dict.fromkeys(COUNTERS, 0)

    def _host_rows(self, t: int, seed: int, host_dir: str) -> dict[str, torch.Tensor]:
        """Table t's rows here in host memory, initialized as RowStorage.init_weights would: weights
        from static_rows, optimizer state as an untouched cache slot's, statistics zero."""
        layout, n = self.layout, self.layout.count[t]
        out = {}
        for name, value in self.storage.tracked().items():
            path = None
            if host_dir:
                os.makedirs(host_dir, exist_ok=True)
                path = os.path.join(host_dir, f"{layout.tables[t].name}.r{layout.rank}.{name}.bin")
            out[name] = _host_tensor((n, *value.shape[1:]), value.dtype, path)
            if name not in ("weight", "freq", "last_step"):
                out[name][:] = value[layout.slot_base[t]].cpu()
        # computed on the device (fast there; the same values anywhere), copied chunk by chunk
        rows, dim, weight = layout.global_rows(t), out["weight"].shape[1], out["weight"]
        chunk = max(1, (1 << 24 if self.cuda else 1 << 20) // dim)
        for start in range(0, n, chunk):
            ids = rows[start : start + chunk].to(self.storage.weight.device)
            values = static_rows(
                seed, layout.table_ids[t], layout.tables[t].num_embeddings, ids, dim
            )
            weight[start : start + ids.numel()] = values.to(weight.dtype).cpu()
        return out

    @classmethod
    def attach(cls, plan, layout, storage, seed: int):
        """The tier of the collection's tiered tables (set as storage.tier; the plan's cache policy
        and host directory), or None without any."""
        if not any(layout.cache_rows):
            return None
        storage.tier = cls(layout, storage, seed, plan.cache_policy, plan.host_dir)
        return storage.tier

    # ---- a batch's rows -------------------------------------------------------------------------
    def resolve(self, rows: torch.Tensor, training: bool) -> tuple[torch.Tensor, Ticket]:
        """Storage rows of a batch (virtual ones for tiered tables) -> storage rows, with every
        tiered row resident in its table's cache until the ticket is released."""
        self._wait(self.event)  # the evicted rows' last update (main stream) is done
        self._wait(self.resolved)  # and the last resolve's copies and map updates (side stream)
        tiered = rows >= TIER_BASE
        virtual = torch.where(tiered, rows - TIER_BASE, -1)
        # the tier's host read: the batch's distinct tiered rows and their lookups, in one copy
        unique, counts = torch.stack(torch.unique(virtual, return_counts=True)).cpu().numpy()
        if training:  # a step's batch is done once the batch after the next one is resolved
            while len(self.in_flight) >= 2:
                self.release(self.in_flight[0])
        ticket = Ticket(training)
        self.tick += 1
        for t in self.tables:
            c = self.caches[t]
            lo, hi = np.searchsorted(unique, [c.offset, c.offset + len(c.slot_of)])
            ticket.slots[t] = self._make_resident(
                c, unique[lo:hi] - c.offset, counts[lo:hi], training
            )
        if training:
            self.in_flight.append(ticket)
        slots = self.slot_map[virtual.clamp(min=0)].to(torch.int64)
        self.resolved = self._record()
        return torch.where(tiered, slots, rows), ticket

    def _record(self):
        """An event on the current stream (CUDA), else None."""
        if not self.cuda:
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    def _wait(self, event) -> None:
        if event is not None:
            torch.cuda.current_stream().wait_event(event)

    def _make_resident(self, c: _Cache, local: np.ndarray, counts: np.ndarray, training: bool):
        """The slots of table c's distinct local rows `local`, fetching the missing ones."""
        c.lookups[local] += counts
        slots = c.slot_of[local].astype(np.int64)
        miss = slots < 0
        c.pins[slots[~miss]] += 1
        need = int(miss.sum())
        if need:
            free = np.flatnonzero(c.pins == 0)
            if free.size < need:
                kind = "training" if training else "evaluation"
                held = int((c.pins > 0).sum()) - (local.size - need)
                raise ValueError(
                    f"table {c.name!r}: cache_rows={c.pins.size} on rank {self.layout.rank} cannot "
                    f"hold the {local.size} rows this {kind} batch reads plus the {held} that "
                    f"batches in flight hold; set cache_rows >= {local.size + held}"
                    + ("" if training else " or a smaller eval.batch_size")
                )
            victims = free[self._victim_order(c, free)[:need]]
            self._evict(c, victims)
            self._fetch(c, local[miss], victims)
            slots[miss] = victims
            c.pins[victims] += 1
        c.last_used[slots] = self.tick
        if training:
            self._count(lookups=local.size, hits=local.size - need)
        return slots

    def _victim_order(self, c: _Cache, free: np.ndarray) -> np.ndarray:
        """Order in which the unheld slots `free` are evicted: empty ones first, then the least
        recently used (lru) or the fewest lookups, least recently used first among equals (lfu)."""
        if self.policy == "lfu":
            held = c.row_of[free]
            lookups = np.where(held >= 0, c.lookups[np.maximum(held, 0)], -1)
            return np.lexsort((c.last_used[free], lookups))
        return np.argsort(c.last_used[free], kind="stable")

    def _evict(self, c: _Cache, victims: np.ndarray) -> None:
        """Slots `victims` emptied: rows updated since fetched are written back to host memory."""
        held = victims[c.row_of[victims] >= 0]
        if not held.size:
            return
        rows = c.row_of[held]
        back = c.dirty[held]
        self._write_back(c, held[back], rows[back])
        c.slot_of[rows] = -1
        c.row_of[held], c.dirty[held] = -1, False
        self.slot_map[self._device(rows + c.offset)] = -1

    def _device(self, array: np.ndarray) -> torch.Tensor:
        """A host array on the storage's device (CUDA: from pinned memory, without a sync)."""
        tensor = torch.from_numpy(array)
        if self.cuda:
            tensor = tensor.pin_memory()
        return tensor.to(self.storage.weight.device, non_blocking=self.cuda)

    def _write_back(self, c: _Cache, slots: np.ndarray, rows: np.ndarray) -> None:
        """Slots' rows (weights, state, statistics) copied to host rows `rows`: on CUDA every
        tensor's rows into pinned memory asynchronously, then one sync for them all."""
        if not slots.size:
            return
        phys, blocks = self._device(slots + c.slot_base), {}
        for name, value in self.storage.tracked().items():
            rows_here = value[phys]
            blocks[name] = torch.empty(rows_here.shape, dtype=value.dtype, pin_memory=self.cuda)
            blocks[name].copy_(rows_here, non_blocking=self.cuda)
            self._count(d2h_bytes=rows_here.numel() * rows_here.element_size())
        if self.cuda:
            torch.cuda.current_stream().synchronize()
        index = torch.from_numpy(rows)
        for name, block in blocks.items():
            self.host[c.t][name][index] = block
        self._count(written_back=slots.size)

    def _fetch(self, c: _Cache, rows: np.ndarray, slots: np.ndarray) -> None:
        """Host rows `rows` (local) and their state copied into `slots`."""
        device = self.storage.weight.device
        phys = self._device(slots + c.slot_base)
        index = torch.from_numpy(rows)
        for name, value in self.storage.tracked().items():
            host = self.host[c.t][name]
            # gathered straight into page-locked memory (CUDA): an asynchronous copy needs it
            block = torch.empty(
                (rows.size, *host.shape[1:]), dtype=host.dtype, pin_memory=self.cuda
            )
            torch.index_select(host, 0, index, out=block)
            value[phys] = block.to(device, non_blocking=self.cuda)
            self._count(h2d_bytes=block.numel() * block.element_size())
        c.slot_of[rows], c.row_of[slots], c.dirty[slots] = slots, rows, False
        self.slot_map[self._device(rows + c.offset)] = phys.to(torch.int32)
        self._count(fetched=rows.size)

    def resolve_dist(self, sd, layout: ShardLayout, dynamic=None):
        """A SparseDist's rows made resident: single rank, the rows its values read; else the rows
        this rank serves (after the keys' all-to-all). With dynamic tables (DynamicTables), their
        keys read the static null row here: their own storages are not tiered."""
        training = torch.is_grad_enabled()
        if sd.single_rank:
            rows = sd.value_rows if dynamic is None else dynamic.static_rows(sd)
            sd.value_rows, sd.tier_ticket = self.resolve(rows, training)
            sd.inverse = sd.value_rows
        else:
            sd.wait()
            rows = layout.local_rows(sd.recv_keys) if dynamic is None else dynamic.static_rows(sd)
            sd.owner_rows, sd.tier_ticket = self.resolve(rows, training)
        return sd

    @staticmethod
    def done(tier: HostTier | None, sd) -> None:
        """A batch is done (its update applied, or an evaluation batch pooled): its slots are
        free to evict, and the next write-backs wait for its update (CUDA)."""
        if tier is not None:
            if sd.tier_ticket is not None and sd.tier_ticket.training:
                tier.updated()
            tier.release(sd.tier_ticket)

    def release(self, ticket: Ticket | None) -> None:
        """The batch no longer reads its slots (its update is done, or it was an evaluation batch)."""
        if ticket is None or ticket.released:
            return
        ticket.released = True
        for t, slots in ticket.slots.items():
            self.caches[t].pins[slots] -= 1
            # a training batch's rows changed in its update: dirty from now on (marked here, not at
            # resolve, so that a state read between resolve and update cannot clean them early)
            self.caches[t].dirty[slots] |= ticket.training
        if ticket in self.in_flight:
            self.in_flight.remove(ticket)

    def updated(self) -> None:
        """After a sparse update (CUDA): the next resolve's write-backs wait for it."""
        self.event = self._record()

    # ---- tables as state ------------------------------------------------------------------------
    def holds(self, t: int) -> bool:
        return t in self.caches

    def host_tracked(self, t: int) -> dict[str, torch.Tensor]:
        """Table t's rows in host memory, up to date (every dirty cached row written back)."""
        self._wait(self.resolved)
        c = self.caches[t]
        dirty = np.flatnonzero(c.dirty)
        self._write_back(c, dirty, c.row_of[dirty])
        c.dirty[dirty] = False
        return self.host[t]

    def written(self, t: int) -> None:
        """After a write into host_tracked(t): the cached rows take the host values again."""
        self._wait(self.resolved)
        c = self.caches[t]
        slots = np.flatnonzero(c.row_of >= 0)
        if slots.size:
            self._fetch(c, c.row_of[slots], slots)

    # ---- metrics --------------------------------------------------------------------------------
    def _count(self, **added: int) -> None:
        for k, v in added.items():
            self.counters[k] += v
            self.totals[k] += v

    def take_counters(self) -> dict[str, int]:
        """The counters since the last call (then zero)."""
        out, self.counters = self.counters, dict.fromkeys(COUNTERS, 0)
        return out


def table_rows(layout: ShardLayout, storage: RowStorage, t: int) -> tuple[dict, int]:
    """(tracked tensors, index of its local row 0) of table t: the storage holding its rows (a
    dynamic table's own), or the host tier's up-to-date copy (tables as state read and write
    through it)."""
    if storage.tier is not None and storage.tier.holds(t):
        return storage.tier.host_tracked(t), 0
    return storage.tracked(t), layout.base[t]


def rows_written(storage: RowStorage, t: int) -> None:
    """After writing table t's rows given by table_rows: the host tier's cached rows take them."""
    if storage.tier is not None and storage.tier.holds(t):
        storage.tier.written(t)


def window_metrics(emb, steps: int) -> dict[str, float]:
    """Collective: the host tier's training resolves since the last call, summed over ranks, per
    step: hit rate (distinct tiered rows a step reads that were cached), rows fetched and written
    back, bytes over PCIe (host -> device, device -> host; state reads' write-backs included)."""
    # (a rank holding no tiered rows joins with zeros)
    taken = emb.tier.take_counters() if emb.tier is not None else dict.fromkeys(COUNTERS, 0)
    counts = torch.tensor([taken[k] for k in COUNTERS], dtype=torch.int64)
    c = dict(
        zip(COUNTERS, emb.exchange.all_reduce_(counts.to(emb.weight.device)).tolist(), strict=True)
    )
    n = max(steps, 1)
    return {
        "hit_rate": c["hits"] / c["lookups"] if c["lookups"] else None,
        "rows_fetched_per_step": c["fetched"] / n,
        "rows_written_back_per_step": c["written_back"] / n,
        "pcie_bytes_per_step": (c["h2d_bytes"] + c["d2h_bytes"]) / n,
        "h2d_bytes_per_step": c["h2d_bytes"] / n,
        "d2h_bytes_per_step": c["d2h_bytes"] / n,
    }
