"""IdChecker: a batch's ids mapped to their tables and checked against them (out_of_range)."""

from __future__ import annotations

import dataclasses

import torch

from embedding.tables import Table, feature_names


class IdChecker:
    """Per value of a batch (KeyedJagged, features in the tables' order): its table, and its id
    under the table's out_of_range policy ("error", or "modulo": ids >= rows become id % rows). A
    dynamic table takes any non-negative id."""

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
        self.any_modulo = any(t.out_of_range == "modulo" for t in tables)
        self.table_modulo = torch.tensor(
            [t.out_of_range == "modulo" and not t.dynamic for t in tables], device=device
        )
        self.any_dynamic = any(t.dynamic for t in tables)
        self.table_dynamic = torch.tensor([t.dynamic is not None for t in tables], device=device)

    def check(self, kjt):
        """(the batch with the policies applied, table index of every value). Raises ValueError
        naming feature, table, sample and id of the first id still out of range (any id of an
        "error" table outside [0, rows), any negative id). One host sync, as without modulo."""
        missing = [f for f in self.features if f not in kjt.keys]
        if missing:
            raise ValueError(
                f"batch is missing feature(s) {missing} (tables' features: {self.features})"
            )
        if list(kjt.keys) != self.features:
            raise ValueError(
                f"batch features {list(kjt.keys)} do not match the tables' features {self.features}"
            )
        lengths = kjt.offsets[1:] - kjt.offsets[:-1]
        # output_size: no host sync to size the result
        value_table = self.feature_table.repeat_interleave(kjt.batch_size).repeat_interleave(
            lengths, output_size=kjt.values.numel()
        )
        limit = self.table_rows[value_table]
        values = kjt.values
        if self.any_modulo:
            values = torch.where(
                self.table_modulo[value_table] & (values >= limit), values % limit, values
            )
        bad = (values < 0) | (values >= limit)
        if self.any_dynamic:  # any non-negative int64 is a dynamic table's key
            bad = (values < 0) | ((values >= limit) & ~self.table_dynamic[value_table])
        if bool(bad.any()):
            self._raise_bad_id(kjt, values, bad)
        checked = kjt if values is kjt.values else dataclasses.replace(kjt, values=values)
        return checked, value_table

    def _raise_bad_id(self, kjt, values: torch.Tensor, bad: torch.Tensor):
        i = int(bad.nonzero()[0])
        at = torch.tensor(i, device=kjt.offsets.device)
        bag = int(torch.searchsorted(kjt.offsets, at, right=True)) - 1
        f, b = divmod(bag, kjt.batch_size)
        table = self.tables[int(self.feature_table[f])]
        size = "dynamic" if table.dynamic else f"{table.num_embeddings} rows"
        where = f"feature {self.features[f]!r} (table {table.name!r}, {size}): sample {b}"
        if int(values[i]) < 0:
            raise ValueError(
                f"{where} has negative id {int(values[i])} (an error under every "
                "out_of_range policy)"
            )
        raise ValueError(
            f"{where} has id {int(values[i])} outside [0, {table.num_embeddings}) "
            f"(out_of_range={table.out_of_range!r}; 'modulo' would map it to "
            "id % rows)"
        )
