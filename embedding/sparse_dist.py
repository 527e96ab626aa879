"""SparseDist: one batch between the phases of ShardedEmbeddingCollection (input_dist -> compute ->
output_dist -> backward)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparseDist:
    """What input_dist hands to compute, output_dist and the backward for one batch.

    ``single_rank`` is the batch's path, decided once by the collection. True: one rank owns
    every row, each value reads its row straight from the storage (``value_rows``: no dedup, no
    exchange) and the backward is one fused pass. False: the exchange path (dedup, all-to-all of
    keys, rows and gradients).
    """

    batch_size: int
    offsets: torch.Tensor  # [F*B+1] bag boundaries of the local batch
    inverse: torch.Tensor  # [N] index of each value's key in unique_keys (single rank: value_rows)
    unique_keys: torch.Tensor  # [U] grouped by owner
    send_splits: list[int]  # unique keys sent to each rank
    recv_splits: list[int]  # keys received from each rank
    recv_keys: torch.Tensor | None = None  # [sum(recv_splits)] keys this rank must serve
    _work: object = None  # pending all-to-all of the keys
    single_rank: bool = False
    value_rows: torch.Tensor | None = None  # single rank: [N] storage row read by each value
    # with dynamic tables (embedding.dynamic_tables). Exchange path: received keys per sender and
    # segment, their lookup counts. Single rank: per dynamic table (table, value positions, distinct
    # keys, inverse, lookups)
    segments: list[list[int]] | None = None
    recv_lookups: torch.Tensor | None = None
    _lookups_work: object = None
    dynamic: list | None = None
    # int64 [W] on the device: send_splits and recv_splits (the fp16 gradient exchange's scales)
    send_counts: torch.Tensor | None = None
    recv_counts: torch.Tensor | None = None
    # set by compute (exchange path): the static storage row of each received key
    owner_rows: torch.Tensor | None = None
    # set by compute, with dynamic tables: per table (table, its keys' positions in recv_keys or, on
    # a single rank, its features' bag offsets into its values, their rows in the table's storage)
    pieces: list | None = None
    # embedding.host_tier.Ticket: the host tier's cache slots this batch holds until released
    tier_ticket: object = None

    @classmethod
    def local(
        cls, batch_size: int, offsets: torch.Tensor, value_rows: torch.Tensor, dynamic=None
    ) -> SparseDist:
        """The single-rank path: every value's storage row (dynamic tables': set by compute)."""
        return cls(
            batch_size,
            offsets,
            value_rows,
            value_rows[:0],
            [0],
            [0],
            single_rank=True,
            value_rows=value_rows,
            dynamic=dynamic,
        )

    def wait(self) -> SparseDist:
        for name in ("_work", "_lookups_work"):
            if getattr(self, name) is not None:
                getattr(self, name).wait()
                setattr(self, name, None)
        return self
