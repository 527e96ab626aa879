"""Jagged (multi-hot) features of a dataset: per feature a values file and a row offsets file, memory-mapped,
read for any row range without touching the rest (docs/data.md, "The dataset format")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.batch import Batch, KeyedJagged
from pipeline.dataset_format import DatasetError, check_file


class JaggedFeature:
    """One jagged feature: row r's bag is values[offsets[r]:offsets[r + 1]]."""

    def __init__(self, directory: Path, name: str, spec: dict, num_rows: int):
        self.name = name
        offsets_dtype = np.dtype(spec["offsets"]["dtype"])
        values_dtype = np.dtype(spec["values"]["dtype"])
        self.offsets_path = check_file(directory, spec["offsets"], offsets_dtype, (num_rows + 1,))
        total = spec["values"].get("shape", [0])[0]
        self.values_path = check_file(directory, spec["values"], values_dtype, (total,))
        self.offsets = np.memmap(self.offsets_path, offsets_dtype, "r", shape=(num_rows + 1,))
        self.values = (
            np.memmap(self.values_path, values_dtype, "r", shape=(total,))
            if total
            else np.zeros(0, values_dtype)
        )
        if self.offsets[0] != 0 or self.offsets[-1] != total:
            raise DatasetError(
                f"{self.offsets_path}: offsets run from {int(self.offsets[0])} to {int(self.offsets[-1])}, "
                f"expected 0 to {total} (the values in {self.values_path.name})"
            )

    def read(self, segments: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """(int64 ids, int64 bag lengths) of the rows of segments, concatenated in order."""
        values, lengths = [], []
        for a, b in segments:
            offsets = np.asarray(self.offsets[a : b + 1], dtype=np.int64)
            length = np.diff(offsets)
            if len(length) and length.min() < 0:
                row = a + int(np.flatnonzero(length < 0)[0])
                raise DatasetError(
                    f"{self.offsets_path}: row {row}'s bag ends before it starts "
                    f"(offsets {int(offsets[row - a])} then {int(offsets[row - a + 1])})"
                )
            values.append(np.asarray(self.values[offsets[0] : offsets[-1]], dtype=np.int64))
            lengths.append(length)
        return np.concatenate(values), np.concatenate(lengths)

    def describe(self, row: int) -> str:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return f"row {row} of {self.offsets_path} (its bag: values {start}..{end - 1} of {self.values_path.name})"


def assemble(
    names: list[str], one_hot: list[str], sparse: np.ndarray, jagged: dict, segments
) -> tuple[np.ndarray, np.ndarray]:
    """Feature-major (values, offsets) of a batch: one-hot features' ids from sparse's columns, each a bag
    of one, the jagged features' bags read from their files."""
    rows = sparse.shape[0]
    column = {name: j for j, name in enumerate(one_hot)}
    values, lengths = [], []
    for name in names:
        if name in column:
            values.append(sparse[:, column[name]].astype(np.int64))
            lengths.append(np.ones(rows, np.int64))
        else:
            v, n = jagged[name].read(segments)
            values.append(v)
            lengths.append(n)
    offsets = np.zeros(len(names) * rows + 1, np.int64)
    np.cumsum(np.concatenate(lengths), out=offsets[1:])
    return np.concatenate(values), offsets


class PartialMultiHot:
    """``batch -> batch``: the MLPerf multi-hot expansion (pipeline.multihot.MultiHot, built over the one-hot
    features only) of a batch whose other features are jagged bags from the dataset, kept as they are.

    Runs on the batch's device without a host sync: the output's size is known from the input's (host
    metadata) and the one-hot features' sizes."""

    def __init__(self, multi_hot, keys: list[str]):
        self.multi_hot, self.keys = multi_hot, list(keys)
        sizes = dict(zip(multi_hot.keys, multi_hot.sizes, strict=True))
        self.one_hot = [k in sizes for k in keys]
        self.sizes = [sizes.get(k, 1) for k in keys]
        # where each one-hot feature's [B, size] block starts in MultiHot.expand's output, per sample
        starts, at = [], 0
        for k, size in zip(keys, self.sizes, strict=True):
            starts.append(at)
            at += size if k in sizes else 0
        self.block_starts = starts

    def __call__(self, batch: Batch) -> Batch:
        kjt, count = batch.sparse, batch.batch_size
        if list(kjt.keys) != self.keys:
            raise ValueError(f"multi-hot expansion set up for features {self.keys}, got {kjt.keys}")
        device, num = kjt.values.device, len(self.keys)
        one_hot = torch.tensor(self.one_hot, device=device)
        sizes = torch.tensor(self.sizes, dtype=torch.int64, device=device)
        starts = torch.tensor(self.block_starts, dtype=torch.int64, device=device) * count
        firsts = kjt.offsets[:-1].view(num, count)
        expanded = self.multi_hot.expand(kjt.values[firsts[one_hot]])
        lengths = torch.where(one_hot[:, None], sizes[:, None], kjt.lengths().view(num, count))
        offsets = torch.zeros(num * count + 1, dtype=torch.int64, device=device)
        offsets[1:] = torch.cumsum(lengths.reshape(-1), 0)
        total = kjt.values.numel() + count * sum(
            s - 1 for s, o in zip(self.sizes, self.one_hot, strict=True) if o
        )
        element = torch.arange(total, dtype=torch.int64, device=device)
        bag = torch.searchsorted(offsets, element, right=True) - 1
        position = element - offsets[bag]
        feature, sample = bag // count, bag % count
        from_expansion = starts[feature] + sample * sizes[feature] + position
        source = torch.where(
            one_hot[feature], kjt.values.numel() + from_expansion, kjt.offsets[bag] + position
        )
        values = torch.cat([kjt.values, expanded])[source]
        return Batch(batch.dense, batch.labels, KeyedJagged(values, offsets, list(kjt.keys)))
