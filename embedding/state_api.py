"""The tables-as-state methods of a collection (embedding.state over its layout, storage and dynamic
tables): digests, full and per-rank state dicts, loads, exports."""

from __future__ import annotations

import torch

from embedding import state as table_state


class TablesAsState:
    """Mixed into ShardedEmbeddingCollection: needs ``layout``, ``storage``, ``dynamic`` and
    ``exchange``."""

    def table_digests(self, chunk_elems: int = 1 << 22) -> list[int]:
        return table_state.table_digests(
            self.layout, self.storage, self.dynamic, self.exchange, chunk_elems
        )

    def full_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return table_state.full_state_dict(self.layout, self.storage, self.dynamic, self.exchange)

    def load_full_state_dict(self, full: dict[str, dict[str, torch.Tensor]]) -> None:
        table_state.load_full_state_dict(self.layout, self.storage, self.dynamic, full)

    def shard_tables(self) -> dict[str, dict[str, torch.Tensor]]:
        return table_state.shard_tables(self.layout, self.storage, self.dynamic)

    def load_table_state(
        self, t: int, state: dict[str, torch.Tensor], source: str, optional=()
    ) -> None:
        table_state.load_table_state(
            self.layout, self.storage, self.dynamic, t, state, source, optional
        )

    def export_rows(
        self, t: int, min_freq: int, since_step: int
    ) -> tuple[torch.Tensor, ...] | None:
        return table_state.export_rows(
            self.layout, self.storage, self.dynamic, t, min_freq, since_step
        )

    def optimizer_state_names(self) -> tuple[str, ...]:
        """The sparse optimizer's per-row state tensors, as named in shard_tables' tables."""
        return tuple(self.storage.state)

    def dynamic_metrics(self) -> dict[str, dict[str, int]]:
        return self.dynamic.metrics()
