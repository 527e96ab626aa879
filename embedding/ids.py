"""IdChecker: a batch's ids mapped to their tables and checked against them (out_of_range)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from embedding.tables import Table, feature_names
from kernels.id_check import DYNAMIC, ERROR, MODULO, check_ids, new_record


class IdChecker:
    """Per value of a batch (KeyedJagged, features in the tables' order): its table, and its id
    under the table's out_of_range policy ("error", or "modulo": ids >= rows become id % rows). A
    dynamic table takes any non-negative id. One fused pass (kernels.id_check).

    A bad id raises ValueError naming feature, table, sample and id: at once (one host sync per
    batch), or, for training batches after defer(), at the next raise_pending() (no host sync per
    batch: the first bad id is kept on the device and reads as row 0 meanwhile)."""

    def __init__(self, tables: list[Table], table_rows: torch.Tensor, device):
        policies = {
            t.name: t.out_of_range for t in tables if t.out_of_range not in ("error", "modulo")
        }
        if policies:
            raise ValueError(f"out_of_range must be 'error' or 'modulo', got {policies}")
        self.tables, self.features = tables, feature_names(tables)
        self.table_rows = table_rows  # [T] ids of each static table (0: dynamic), on the device
        index = {t.name: i for i, t in enumerate(tables)}
        self.feature_table = torch.tensor(
            [index[t.name] for t in tables for _ in t.features], dtype=torch.int64, device=device
        )
        policy = [
            DYNAMIC if t.dynamic else MODULO if t.out_of_range == "modulo" else ERROR
            for t in tables
        ]
        self.table_policy = torch.tensor(policy, dtype=torch.int32, device=device)
        self.no_base = torch.zeros(len(tables), dtype=torch.int64, device=device)
        self.record = new_record(device)  # checks that raise at once
        # deferred checking (defer()): the first bad id of the training batches, kept on the device
        self.deferred = False
        self.pending = new_record(device)
        self.first_step = 0  # the step of the first batch checked since the last clean read
        self.batch_sizes: list[int] = []  # the batch size of each batch checked since then
        # locate(step, sample, feature): where a training sample came from, e.g. "row R of <file> (byte
        # offset O)" for a dataset (training.data.DatasetSource.locate), or None when unknown
        self.locate: Callable[[int, int, str], str | None] | None = None

    def defer(self, first_step: int) -> None:
        """Training batches (grad enabled) from now on are checked without a host sync; the first batch
        checked is step first_step + 1's."""
        self.deferred, self.first_step, self.batch_sizes = True, first_step, []
        self.pending.copy_(new_record("cpu"))

    def raise_pending(self) -> None:
        """Raise the ValueError of the first bad id the deferred checks kept, if any (one host sync)."""
        if not self.batch_sizes:
            return
        if self.pending.is_cuda:  # it may come from the pipeline's side stream
            torch.cuda.synchronize(self.pending.device)
        flag, where, value = self.pending[1:4].tolist()  # the deferred check's one read
        if not flag:  # every batch so far was clean: count the next ones from here
            self.first_step += len(self.batch_sizes)
            self.batch_sizes = []
            return
        batch, bag = where >> 32, where & 0xFFFFFFFF
        f, b = divmod(bag, self.batch_sizes[batch])
        step = self.first_step + batch + 1
        source = self.locate(step, b, self.features[f]) if self.locate is not None else None
        self._raise(f, b, value, f"step {step}: ", source)

    def _check(self, kjt, base: torch.Tensor, want_table: bool):
        missing = [f for f in self.features if f not in kjt.keys]
        if missing:
            raise ValueError(
                f"batch is missing feature(s) {missing} (tables' features: {self.features})"
            )
        if list(kjt.keys) != self.features:
            raise ValueError(
                f"batch features {list(kjt.keys)} do not match the tables' features {self.features}"
            )
        deferred = self.deferred and torch.is_grad_enabled()
        record = self.pending if deferred else self.record
        out, value_table = check_ids(
            kjt.values,
            kjt.offsets,
            kjt.batch_size,
            self.feature_table,
            self.table_rows,
            self.table_policy,
            base,
            record,
            len(self.batch_sizes) if deferred else 0,
            want_table,
        )
        if deferred:
            self.batch_sizes.append(kjt.batch_size)
        else:
            flag, where, value = record[1:4].tolist()  # the check's one host sync
            if flag:
                record.copy_(new_record("cpu"))
                self._raise(*divmod(where & 0xFFFFFFFF, kjt.batch_size), value)
        return out, value_table

    def check(self, kjt):
        """(the batch with the policies applied, table index of every value)."""
        values, value_table = self._check(kjt, self.no_base, True)
        return dataclasses.replace(kjt, values=values), value_table

    def shifted(self, kjt, base: torch.Tensor) -> torch.Tensor:
        """Each checked id + base[its table] (int64 [N]: e.g. storage rows or fused keys)."""
        return self._check(kjt, base, False)[0]

    def _raise(self, f: int, b: int, value: int, prefix: str = "", source: str | None = None):
        table = self.tables[int(self.feature_table[f])]
        size = "dynamic" if table.dynamic else f"{table.num_embeddings} rows"
        where = f"{prefix}feature {self.features[f]!r} (table {table.name!r}, {size}): sample {b}"
        if source:
            where += f", {source},"
        if value < 0:
            raise ValueError(
                f"{where} has negative id {value} (an error under every out_of_range policy)"
            )
        raise ValueError(
            f"{where} has id {value} outside [0, {table.num_embeddings}) "
            f"(out_of_range={table.out_of_range!r}; 'modulo' would map it to "
            "id % rows)"
        )
