"""Glue for the trainer: DataConfig -> prefetching iterators of this rank's batches from a binary dataset."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from config import DataConfig
from pipeline.batch import Batch
from pipeline.dataset import BinaryDataset
from pipeline.prefetch import PrefetchLoader


def open_dataset(data: DataConfig) -> BinaryDataset:
    return BinaryDataset(data.path)


def _batches(dataset: BinaryDataset, data: DataConfig, segments) -> Iterator[Batch]:
    if data.reader == "dali":
        from pipeline.dali_reader import DaliBatchReader  # only with the [dali] extra

        return DaliBatchReader(dataset, segments, device="cpu")  # the prefetcher does the H2D copy as for memmap
    return map(dataset.read_rows, segments)


def train_loader(dataset: BinaryDataset, data: DataConfig, global_batch_size: int, rank: int, world_size: int,
                 device: torch.device | str, seed: int, start_step: int = 0) -> PrefetchLoader:
    """This rank's train batches on ``device`` for data.epochs passes over data.train_range, from global step start_step.

    The run has ``data.epochs * dataset.steps_per_epoch(global_batch_size, data.train_range)`` steps in all.
    """
    segments = dataset.train_segments(global_batch_size, rank, world_size, data.train_range or None, data.epochs,
                                      seed if data.shuffle else None, data.shuffle_block_rows, start_step)
    return PrefetchLoader(_batches(dataset, data, segments), device, depth=data.prefetch_depth)


def eval_loader(dataset: BinaryDataset, data: DataConfig, global_batch_size: int, rank: int, world_size: int,
                device: torch.device | str, max_samples: int = 0) -> PrefetchLoader:
    """This rank's eval batches (data.eval_range, in order), limited to its first max_samples rows when > 0."""
    start, end = dataset.resolve_range(data.eval_range or None, dataset.default_eval_range)
    if max_samples > 0:
        end = min(end, start + max_samples)
    segments = dataset.eval_segments(global_batch_size, rank, world_size, (start, end))
    return PrefetchLoader(_batches(dataset, data, segments), device, depth=data.prefetch_depth)
