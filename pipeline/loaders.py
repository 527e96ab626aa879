"""Glue for the trainer: DataConfig -> prefetching iterators of this rank's batches from a binary dataset."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch

from config import DataConfig
from pipeline.batch import Batch
from pipeline.dataset import BinaryDataset, check_same_tables
from pipeline.prefetch import PrefetchLoader


def open_dataset(data: DataConfig) -> BinaryDataset:
    dataset = BinaryDataset(data.path)
    if data.eval_path:  # evaluation reads another dataset: every row of this one may train
        dataset.default_train_range = (0, dataset.num_rows)
    return dataset


def open_eval_dataset(data: DataConfig, train_dataset: BinaryDataset) -> BinaryDataset:
    """data.eval_path, checked against the train dataset (same features, table sizes and dense width);
    its default eval range is all of its rows."""
    dataset = BinaryDataset(data.eval_path)
    check_same_tables(train_dataset, dataset)
    dataset.default_eval_range = (0, dataset.num_rows)
    return dataset


# check(batch, at, where) -> batch: raises on bad values; at is "step N" / "eval batch N", where(b, key, column)
# names sample b's file, row and byte offset (checkpoint.check_batch)
BatchCheck = Callable[[Batch, str, Callable[[int, str, int], str]], Batch]


def _batches(dataset: BinaryDataset, data: DataConfig, segments, check: BatchCheck | None = None,
             label: Callable[[int], str] = str) -> Iterator[Batch]:
    if check is not None:
        segments, described = itertools.tee(segments)
    if data.reader == "dali":
        from pipeline.dali_reader import DaliBatchReader  # only with the [dali] extra

        batches = DaliBatchReader(dataset, segments, device="cpu")  # the prefetcher does the H2D copy as for memmap
    else:
        batches = map(dataset.read_rows, segments)
    return batches if check is None else _checked(dataset, batches, described, check, label)


def _checked(dataset: BinaryDataset, batches, segments, check: BatchCheck, label: Callable[[int], str]) -> Iterator[Batch]:
    try:
        for i, (batch, segs) in enumerate(zip(batches, segments, strict=True)):
            yield check(batch, label(i), dataset.describe_rows(segs))
    finally:
        close = getattr(batches, "close", None)
        if close is not None:  # as PrefetchLoader would have closed an unwrapped reader
            close()


def train_loader(dataset: BinaryDataset, data: DataConfig, global_batch_size: int, rank: int, world_size: int,
                 device: torch.device | str, seed: int, start_step: int = 0, check: BatchCheck | None = None,
                 transform: Callable[[Batch], Batch] | None = None, last_step: int | None = None) -> PrefetchLoader:
    """This rank's train batches on ``device`` for data.epochs passes over data.train_range, from global step start_step.

    The run has ``data.epochs * dataset.steps_per_epoch(global_batch_size, data.train_range)`` steps in all, or
    last_step (train.steps) if that is fewer.
    check, if given, sees every host batch before the prefetcher copies it (labelled "step N", N 1-based);
    transform (pipeline.multihot.MultiHot) every batch once it is on the device, in the prefetcher.
    """
    segments = dataset.train_segments(global_batch_size, rank, world_size, data.train_range or None, data.epochs,
                                      seed if data.shuffle else None, data.shuffle_block_rows, start_step)
    if last_step is not None:
        segments = itertools.islice(segments, max(last_step - start_step, 0))
    batches = _batches(dataset, data, segments, check, lambda i: f"step {start_step + i + 1}")
    return PrefetchLoader(batches, device, depth=data.prefetch_depth, transform=transform)


def eval_loader(dataset: BinaryDataset, data: DataConfig, global_batch_size: int, rank: int, world_size: int,
                device: torch.device | str, max_samples: int = 0, check: BatchCheck | None = None,
                transform: Callable[[Batch], Batch] | None = None) -> PrefetchLoader:
    """This rank's eval batches (data.eval_range, in order), limited to its first max_samples rows when > 0;
    check and transform as for train_loader (labelled "eval batch N", N 0-based)."""
    start, end = dataset.resolve_range(data.eval_range or None, dataset.default_eval_range)
    if max_samples > 0:
        end = min(end, start + max_samples)
    segments = dataset.eval_segments(global_batch_size, rank, world_size, (start, end))
    return PrefetchLoader(_batches(dataset, data, segments, check, lambda i: f"eval batch {i}"), device,
                          depth=data.prefetch_depth, transform=transform)
