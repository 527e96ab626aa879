"""The batch every data source yields: dense features, labels and keyed jagged sparse ids."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass
class KeyedJagged:
    """Multi-hot sparse features of a batch, feature-major like TorchRec's KeyedJaggedTensor.

    Bag ``f * B + b`` holds the ids of feature ``keys[f]`` for sample ``b``; its ids are
    ``values[offsets[f*B+b] : offsets[f*B+b+1]]``. Bags may be empty.

    Example (B=2, keys ["a", "b"]):  a: [[3], [1, 4]]   b: [[], [9]]
        values = [3, 1, 4, 9]   offsets = [0, 1, 3, 3, 4]
    """

    values: torch.Tensor  # int64 [N] ids, local to each feature's table
    offsets: torch.Tensor  # int64 [F*B+1] bag boundaries
    keys: list[str]  # feature names, F of them

    @property
    def batch_size(self) -> int:
        return (self.offsets.numel() - 1) // max(len(self.keys), 1)

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def validate(self) -> None:
        """Raise ValueError naming the problem if the layout is inconsistent."""
        if self.values.dtype != torch.int64 or self.offsets.dtype != torch.int64:
            raise ValueError(
                f"KeyedJagged needs int64 values and offsets, got {self.values.dtype}, {self.offsets.dtype}"
            )
        if (self.offsets.numel() - 1) % max(len(self.keys), 1):
            raise ValueError(
                f"offsets has {self.offsets.numel()} entries, not F*B+1 for F={len(self.keys)}"
            )
        if self.offsets[0] != 0 or self.offsets[-1] != self.values.numel():
            raise ValueError("offsets must start at 0 and end at len(values)")
        if bool((self.lengths() < 0).any()):
            raise ValueError("offsets must be non-decreasing")

    def to(self, device, non_blocking: bool = False) -> KeyedJagged:
        return KeyedJagged(
            self.values.to(device, non_blocking=non_blocking),
            self.offsets.to(device, non_blocking=non_blocking),
            self.keys,
        )

    def pin_memory(self) -> KeyedJagged:
        return KeyedJagged(self.values.pin_memory(), self.offsets.pin_memory(), self.keys)

    @staticmethod
    def from_lists(bags: dict[str, list[list[int]]]) -> KeyedJagged:
        """Build from {feature: [ids of sample 0, ids of sample 1, ...]} (tests, examples)."""
        keys = list(bags)
        flat, lengths = [], []
        for key in keys:
            for bag in bags[key]:
                flat.extend(bag)
                lengths.append(len(bag))
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
        return KeyedJagged(torch.tensor(flat, dtype=torch.int64), offsets, keys)


@dataclass
class Batch:
    # float32 [B, num_dense]; train batches of a bf16 run on CUDA may carry them in the dense network's compute
    # dtype (dense_as, models.network.dense_input_dtype)
    dense: torch.Tensor
    labels: torch.Tensor  # float32 [B] in [0, 1]
    sparse: KeyedJagged
    # float32 [B] per-sample loss weights (a dataset with a weight column), None: every sample weighs 1.
    # Train batches carry them scaled by B_global / (the global batch's weight sum), so that the mean of
    # the ranks' mean(w * loss) is the global batch's weighted mean for any world size
    # (training.data.normalize_weights); eval batches carry the weights as stored.
    weights: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.labels.numel()

    def to(self, device, non_blocking: bool = False) -> Batch:
        weights = self.weights
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            None if weights is None else weights.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        weights = None if self.weights is None else self.weights.pin_memory()
        return Batch(
            self.dense.pin_memory(), self.labels.pin_memory(), self.sparse.pin_memory(), weights
        )


def dense_as(batches: Iterable[Batch], dtype: torch.dtype) -> Iterator[Batch]:
    """batches with their dense features in dtype, cast where the loader runs the source (a prefetch thread):
    on the host before the copy to the device, or on the loader's stream for batches made on the device.
    Closing this generator closes batches (a reader's files)."""
    try:
        for b in batches:
            yield b if b.dense.dtype == dtype else dataclasses.replace(b, dense=b.dense.to(dtype))
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def rank_slice(global_batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first, count): rank r's samples of a global batch are first .. first + count - 1 of it, a contiguous
    slice, so the samples a run trains on do not depend on the world size."""
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    if global_batch_size <= 0 or global_batch_size % world_size:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of world size {world_size}"
        )
    local = global_batch_size // world_size
    return rank * local, local
