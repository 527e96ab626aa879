"""Memory-mapped reader of the binary datasets written by ``python -m pipeline.criteo preprocess``.

Batch order (training): the rows of the train range are cut into blocks of ``block_size``
consecutive rows; each epoch visits the blocks in a permutation drawn from
(shuffle_seed, epoch), rows inside a block stay in order (long sequential reads). The
resulting row sequence is cut into global batches of ``global_batch_size``; rank r of W gets
rows [r*B/W, (r+1)*B/W) of every global batch. The order depends only on the seed, so the
union of the ranks' batches is the same for every world size. Each epoch drops its last
incomplete global batch.

Default split (no explicit range), following MLPerf DLRM ("train on all days but the last;
validate on the first half of the last day"): with per-day row counts in meta.json
(``--days`` / ``--files-are-days`` at preprocessing) those days are used; without them the
rows are taken as 8 equal days: train = [0, 7R/8), eval = [7R/8, 15R/16) (1/16 of the rows),
and the last 1/16 is left untouched as a test split. Boundaries are rounded down.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from pipeline.batch import Batch, KeyedJagged, rank_slice
from pipeline.dataset_format import DatasetError, check_file, read_meta
from pipeline.jagged import JaggedFeature, assemble

_DEFAULT_DAYS = 8


def parse_range(text: str, num_rows: int) -> tuple[int, int]:
    """Rows "start:end" (either side may be empty; negative counts from the end, as in Python slices)."""
    start_text, colon, end_text = text.partition(":")
    if not colon:
        raise ValueError(f"row range {text!r} must look like 'start:end'")
    try:
        start = int(start_text) if start_text.strip() else 0
        end = int(end_text) if end_text.strip() else num_rows
    except ValueError:
        raise ValueError(f"row range {text!r}: start and end must be integers") from None
    start = start + num_rows if start < 0 else start
    end = end + num_rows if end < 0 else end
    if not 0 <= start < end <= num_rows:
        raise ValueError(
            f"row range {text!r} is [{start}, {end}), which is empty or outside the {num_rows} rows"
        )
    return start, end


def default_ranges(
    num_rows: int, days: list[int] | None = None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(train, eval) row ranges by the MLPerf convention; see the module docstring."""
    if days:
        if sum(days) != num_rows or len(days) < 2:
            raise DatasetError(
                f"meta.json 'days' {days} must list >= 2 day sizes summing to {num_rows} rows"
            )
        last_start = num_rows - days[-1]
        return (0, last_start), (last_start, last_start + days[-1] // 2)
    train_end = num_rows * (_DEFAULT_DAYS - 1) // _DEFAULT_DAYS
    eval_end = num_rows * (2 * _DEFAULT_DAYS - 1) // (2 * _DEFAULT_DAYS)
    return (0, train_end), (train_end, eval_end)


def _segments(
    starts: np.ndarray, lengths: np.ndarray, positions: np.ndarray, lo: int, hi: int
) -> list[tuple[int, int]]:
    """Source row slices covering epoch positions [lo, hi), given blocks at ``positions`` in epoch order."""
    first = int(np.searchsorted(positions, lo, side="right")) - 1
    out = []
    k = first
    while lo < hi:
        offset = lo - int(positions[k])
        take = min(int(lengths[k]) - offset, hi - lo)
        out.append((int(starts[k]) + offset, int(starts[k]) + offset + take))
        lo += take
        k += 1
    return out


class BinaryDataset:
    """A preprocessed dataset directory; validates meta.json and file sizes on open."""

    def __init__(self, path: str | os.PathLike, verify_checksums: bool = False):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not self.path.is_dir():
            raise DatasetError(f"dataset directory {self.path} does not exist")
        if not meta_path.is_file():
            raise DatasetError(
                f"{self.path} has no meta.json: not a dataset, or its preprocessing did not finish"
            )
        meta = read_meta(meta_path)
        self.meta = meta
        self.num_rows = int(meta["num_rows"])
        self.num_dense = int(meta["num_dense"])
        self.feature_names: list[str] = list(meta["feature_names"])
        self.table_rows: list[int] = [int(n) for n in meta["table_rows"]]
        files = meta["files"]
        self.one_hot_features: list[str] = list(meta["one_hot_features"])
        num_sparse = len(self.one_hot_features)
        layout = {
            "dense": (np.float32, (self.num_rows, self.num_dense)),
            "sparse": (files["sparse"]["dtype"], (self.num_rows, num_sparse)),
            "labels": (files["labels"]["dtype"], (self.num_rows,)),
        }
        arrays = {}
        # key -> (path, dtype, values per row)
        self._files: dict[str, tuple[Path, np.dtype, int]] = {}
        for key, (dtype, shape) in layout.items():
            dtype = np.dtype(dtype)
            file_path = check_file(self.path, files[key], dtype, shape)
            self._files[key] = (file_path, dtype, int(np.prod(shape[1:])))
            if verify_checksums:
                self._verify_sha(file_path, files[key]["sha256"])
            # np.memmap cannot map an empty file; an empty array (no rows or columns) is made instead
            arrays[key] = (
                np.memmap(file_path, dtype=dtype, mode="r", shape=shape)
                if np.prod(shape)
                else np.zeros(shape, dtype)
            )
        self.dense, self.sparse, self.labels = arrays["dense"], arrays["sparse"], arrays["labels"]
        # per-sample loss weights (the schema's weight column), None when the dataset has none
        self.weights: np.ndarray | None = None
        if "weights" in files:
            path = check_file(self.path, files["weights"], np.dtype(np.float32), (self.num_rows,))
            self._files["weights"] = (path, np.dtype(np.float32), 1)
            if verify_checksums:
                self._verify_sha(path, files["weights"]["sha256"])
            self.weights = (
                np.memmap(path, dtype=np.float32, mode="r", shape=(self.num_rows,))
                if self.num_rows
                else np.zeros(0, np.float32)
            )
        self.jagged = {
            name: JaggedFeature(self.path, name, spec, self.num_rows)
            for name, spec in meta["jagged"].items()
        }
        self.default_train_range, self.default_eval_range = default_ranges(
            self.num_rows, meta.get("days")
        )

    @staticmethod
    def _verify_sha(path: Path, expected: str) -> None:
        import hashlib

        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                sha.update(block)
        if sha.hexdigest() != expected:
            raise DatasetError(
                f"{path}: sha256 {sha.hexdigest()} does not match meta.json ({expected})"
            )

    def __repr__(self) -> str:
        return f"BinaryDataset({str(self.path)!r}, rows={self.num_rows}, tables={self.table_rows})"

    def resolve_range(
        self, row_range: str | tuple[int, int] | None, default: tuple[int, int]
    ) -> tuple[int, int]:
        """A "start:end" string, a (start, end) tuple or None/"" (-> default), checked against the row count."""
        if not self.num_rows:
            raise DatasetError(f"dataset {self.path} has no rows (meta.json num_rows is 0)")
        if row_range is None or row_range == "":
            return default
        if isinstance(row_range, str):
            try:
                return parse_range(row_range, self.num_rows)
            except ValueError as e:
                raise ValueError(f"dataset {self.path}: {e}") from None
        start, end = (int(v) for v in row_range)
        if not 0 <= start < end <= self.num_rows:
            raise ValueError(
                f"dataset {self.path}: row range {row_range} is empty or outside its {self.num_rows} rows"
            )
        return start, end

    # ---- batches -------------------------------------------------------------------------

    def read_arrays(
        self, segments: list[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dense, sparse, labels) numpy arrays of source row slices, concatenated in order."""

        def gather(array):
            parts = [array[a:b] for a, b in segments]
            return np.concatenate(parts) if len(parts) != 1 else np.array(parts[0])

        return gather(self.dense), gather(self.sparse), gather(self.labels)

    def read_weights(self, segments: list[tuple[int, int]]) -> np.ndarray | None:
        """The weights of source row slices, concatenated in order (None: the dataset has none)."""
        if self.weights is None:
            return None
        return np.concatenate([self.weights[a:b] for a, b in segments])

    def read_rows(self, segments: list[tuple[int, int]]) -> Batch:
        """One Batch from source row slices, concatenated in order (with the stored weights, if any)."""
        dense, sparse, labels = self.read_arrays(segments)
        weights = self.read_weights(segments)
        weights = None if weights is None else torch.from_numpy(weights)
        if not self.jagged:
            batch = batch_from_rows(
                *(torch.from_numpy(a) for a in (dense, sparse, labels)), self.feature_names
            )
            batch.weights = weights
            return batch
        values, offsets = assemble(
            self.feature_names, self.one_hot_features, sparse, self.jagged, segments
        )
        return Batch(
            dense=torch.from_numpy(dense),
            labels=torch.from_numpy(labels).float(),
            sparse=KeyedJagged(
                torch.from_numpy(values), torch.from_numpy(offsets), list(self.feature_names)
            ),
            weights=weights,
        )

    def describe_rows(self, segments: list[tuple[int, int]]) -> Callable[[int, str, int], str]:
        """where(b, key, column) for a batch read from segments: "row R of <key's file> (byte offset O)",
        R the file row of the batch's b-th sample, O the byte of its value in column (key: dense, sparse, labels,
        weights);
        key "bag:<feature>" names a jagged feature's row and the values of its bag."""
        starts = np.cumsum([0] + [end - start for start, end in segments])

        def where(b: int, key: str, column: int = 0) -> str:
            k = int(np.searchsorted(starts, b, side="right")) - 1
            row = segments[k][0] + b - int(starts[k])
            if key.startswith("bag:"):
                return self.jagged[key[4:]].describe(row)
            path, dtype, width = self._files[key]
            return f"row {row} of {path} (byte offset {(row * width + column) * dtype.itemsize})"

        return where

    def _block_layout(self, start: int, end: int, block_size: int, seed: int | None, epoch: int):
        """(source start, length, epoch position) of every block, in this epoch's visiting order."""
        starts = np.arange(start, end, block_size, dtype=np.int64)
        lengths = np.minimum(starts + block_size, end) - starts
        if seed is not None:
            order = np.random.default_rng([seed, epoch]).permutation(len(starts))
            starts, lengths = starts[order], lengths[order]
        positions = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return starts, lengths, positions

    def steps_per_epoch(self, global_batch_size: int, row_range=None) -> int:
        """Global batches per pass over the train range; an error naming the dataset when there is none."""
        start, end = self.resolve_range(row_range, self.default_train_range)
        if end - start < global_batch_size:
            raise DatasetError(self._too_few_rows(start, end, global_batch_size))
        return (end - start) // global_batch_size

    def _too_few_rows(self, start: int, end: int, global_batch_size: int) -> str:
        return (
            f"dataset {self.path}: train range [{start}, {end}) has fewer rows than one global batch "
            f"of {global_batch_size}"
        )

    def train_batches(
        self,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        row_range=None,
        epochs: int = 1,
        shuffle_seed: int | None = 0,
        block_size: int = 8192,
        start_step: int = 0,
    ) -> Iterator[Batch]:
        """This rank's share of every global batch; see train_segments for the arguments."""
        segments = self.train_segments(
            global_batch_size,
            rank,
            world_size,
            row_range,
            epochs,
            shuffle_seed,
            block_size,
            start_step,
        )
        return map(self.read_rows, segments)

    def eval_batches(
        self, global_batch_size: int, rank: int = 0, world_size: int = 1, row_range=None
    ) -> Iterator[Batch]:
        """This rank's eval batches in file order; see eval_segments."""
        return map(
            self.read_rows, self.eval_segments(global_batch_size, rank, world_size, row_range)
        )

    def train_segments(
        self,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        row_range=None,
        epochs: int = 1,
        shuffle_seed: int | None = 0,
        block_size: int = 8192,
        start_step: int = 0,
    ) -> Iterator[list[tuple[int, int]]]:
        """Source row slices of this rank's share of every global batch for ``epochs`` passes, from
        global step ``start_step`` on.

        shuffle_seed=None keeps the rows in file order. Step s of the whole run is epoch
        s // steps_per_epoch, so resuming at start_step gives exactly the batches an
        uninterrupted run would have seen next.
        """
        first, local = rank_slice(global_batch_size, rank, world_size)
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        start, end = self.resolve_range(row_range, self.default_train_range)
        steps = (end - start) // global_batch_size
        if steps == 0:
            raise DatasetError(self._too_few_rows(start, end, global_batch_size))
        for step in range(start_step, epochs * steps):
            epoch, in_epoch = divmod(step, steps)
            if in_epoch == 0 or step == start_step:
                layout = self._block_layout(start, end, block_size, shuffle_seed, epoch)
            lo = in_epoch * global_batch_size + first
            yield _segments(*layout, lo, lo + local)

    def eval_segments(
        self, global_batch_size: int, rank: int = 0, world_size: int = 1, row_range=None
    ) -> Iterator[list[tuple[int, int]]]:
        """The eval range in file order, without shuffling.

        Every rank gets the same number of equally sized batches (collectives stay in step):
        full global batches, then the remaining R rows cut to a multiple of world_size and
        split evenly, so at most world_size - 1 rows at the very end are never evaluated.
        """
        rank_slice(global_batch_size, rank, world_size)  # checks the arguments
        start, end = self.resolve_range(row_range, self.default_eval_range)
        for lo in range(start, end, global_batch_size):
            size = min(global_batch_size, end - lo) // world_size
            if size == 0:
                return
            yield [(lo + rank * size, lo + (rank + 1) * size)]


def check_same_tables(train: BinaryDataset, other: BinaryDataset) -> None:
    """DatasetError naming both datasets and the first difference unless ``other`` can be read by a model
    trained on ``train``: the same features in the same order, table sizes and number of dense features."""
    mismatch = f"eval dataset {other.path} does not match train dataset {train.path}"
    for i in range(max(len(train.feature_names), len(other.feature_names))):
        mine = train.feature_names[i] if i < len(train.feature_names) else None
        theirs = other.feature_names[i] if i < len(other.feature_names) else None
        if mine != theirs:
            raise DatasetError(
                f"{mismatch}: its categorical feature {i} is {theirs!r}, the train dataset's is {mine!r}"
            )
    for name, mine, theirs in zip(
        train.feature_names, train.table_rows, other.table_rows, strict=True
    ):
        if mine != theirs:
            raise DatasetError(
                f"{mismatch}: table {name} has {mine} rows in {train.path} and {theirs} rows in {other.path} "
                f"(preprocess the eval files with --vocab {train.path} to share its vocabulary)"
            )
    if sorted(train.jagged) != sorted(other.jagged):
        raise DatasetError(
            f"{mismatch}: its jagged (multi-hot) features are {sorted(other.jagged)}, "
            f"the train dataset's are {sorted(train.jagged)}"
        )
    if train.num_dense != other.num_dense:
        raise DatasetError(
            f"{mismatch}: {other.num_dense} dense features, the train dataset has {train.num_dense}"
        )


def batch_from_rows(
    dense: torch.Tensor, sparse: torch.Tensor, labels: torch.Tensor, keys: list[str]
) -> Batch:
    """A Batch from row-major [b, 13] dense, [b, F] single-hot ids and [b] labels (any device)."""
    b, f = sparse.shape
    # feature-major: bag f*b + i is sample i of feature f, one id each
    values = sparse.t().contiguous().reshape(-1).to(torch.int64)
    offsets = torch.arange(f * b + 1, dtype=torch.int64, device=sparse.device)
    return Batch(
        dense=dense.float().contiguous(),
        labels=labels.float(),
        sparse=KeyedJagged(values, offsets, list(keys)),
    )
