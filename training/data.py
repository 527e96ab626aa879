"""Where a run's batches come from, behind one interface: ``open_source(cfg, env)`` returns a source whose
``train_batches(first_step)`` and ``eval_batches(batch_size, samples)`` serve synthetic samples and a
preprocessed dataset alike, as this rank's slice of every global batch (pipeline.batch.rank_slice).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import torch

from embedding import resolve_tables
from pipeline.batch import Batch, dense_as
from pipeline.checks import check_batch, checked_batches
from pipeline.dataset import BinaryDataset, check_same_tables
from pipeline.jagged import PartialMultiHot
from pipeline.multihot import MultiHot
from pipeline.prefetch import PrefetchLoader
from pipeline.synthetic import SyntheticData, SyntheticFeature
from training.config import Config, ConfigError, DataConfig, TableConfig
from training.distributed import DistContext


def open_source(cfg: Config, env: DistContext) -> SyntheticSource | DatasetSource:
    """The data source cfg names. A dataset (data.path) also sets what it defines in cfg: the tables and
    their rows, the dense width, and train.steps (data.epochs passes, or fewer)."""
    if not cfg.data.path:
        return SyntheticSource(cfg, env)
    dataset = open_dataset(cfg.data)
    eval_dataset = open_eval_dataset(cfg.data, dataset) if cfg.data.eval_path else None
    use_dataset_tables(cfg, dataset)
    per_epoch = dataset.steps_per_epoch(cfg.train.global_batch_size, cfg.data.train_range or None)
    all_epochs = cfg.data.epochs * per_epoch
    cfg.train.steps = min(cfg.train.steps, all_epochs) if cfg.train.steps else all_epochs
    if cfg.eval.every_epoch:
        cfg.eval.every = per_epoch
    return DatasetSource(cfg, env, dataset, eval_dataset)


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


class SyntheticSource:
    """Synthetic samples made on the training device (the host cannot keep up with a GPU); the sample
    stream depends only on the seed and the global sample index."""

    def __init__(self, cfg: Config, env: DistContext):
        self.cfg, self.env = cfg, env
        features = []
        for t_index, (t_cfg, table) in enumerate(
            zip(cfg.embedding.tables, resolve_tables(cfg.embedding), strict=True)
        ):
            lo = t_cfg.bag_min if t_cfg.bag_min >= 0 else cfg.data.bag_min
            hi = t_cfg.bag_max if t_cfg.bag_max >= 0 else cfg.data.bag_max
            features += [
                SyntheticFeature(f, t_index, table.num_embeddings, lo, hi, t_cfg.hash_ids)
                for f in table.features
            ]
        d = cfg.data
        self.generator = SyntheticData(
            features, d.num_dense, d.zipf_exponent, d.signal, cfg.run.seed, env.device
        )

    def train_batches(
        self, first_step: int = 0, dense_dtype: torch.dtype = torch.float32
    ) -> PrefetchLoader:
        """Global steps first_step + 1 .. train.steps, checked, prefetched by a background thread, with their
        dense features in dense_dtype (cast by that thread)."""
        cfg, env = self.cfg, self.env
        batch = cfg.train.global_batch_size
        host = self.generator.local_batches(
            batch, env.rank, env.world_size, cfg.train.steps, SyntheticData.TRAIN, first_step
        )
        checked = checked_batches(host, batch, env.rank, env.world_size, first_step)
        return PrefetchLoader(
            dense_as(checked, dense_dtype), env.device, depth=cfg.data.prefetch_depth
        )

    def eval_batches(self, batch_size: int, samples: int) -> Iterator[Batch]:
        """The eval stream's first samples (at least one global batch), made on the device as train batches."""
        steps = max(samples // batch_size, 1)
        env = self.env
        batches = self.generator.local_batches(
            batch_size, env.rank, env.world_size, steps, SyntheticData.EVAL
        )
        return (b.to(env.device) for b in batches)


class DatasetSource:
    """A preprocessed binary dataset (pipeline.dataset): train rows in shuffled blocks for data.epochs passes,
    eval rows in file order, from data.eval_path's dataset when set."""

    def __init__(
        self,
        cfg: Config,
        env: DistContext,
        dataset: BinaryDataset,
        eval_dataset: BinaryDataset | None,
    ):
        self.cfg, self.env, self.dataset = cfg, env, dataset
        self.eval_dataset = eval_dataset or dataset
        self.transform = keep_weights(multi_hot_from_config(cfg, dataset))
        # where(b, key, column) of the latest train steps' batches, for the id check's error (locate); the
        # check is read at least every run.log_every steps and the loader runs prefetch_depth ahead
        self.recent: OrderedDict[str, Callable[[int, str, int], str]] = OrderedDict()
        self.keep = cfg.run.log_every + cfg.data.prefetch_depth + 16

    def _remember(self, batch: Batch, at: str, where: Callable[[int, str, int], str]) -> Batch:
        """check_batch, keeping the batch's where() (called in the prefetch thread)."""
        self.recent[at] = where
        while len(self.recent) > self.keep:
            self.recent.popitem(last=False)
        return check_batch(batch, at, where)

    def locate(self, step: int, sample: int, feature: str) -> str | None:
        """ "row R of <sparse file> (byte offset O)": where the id of feature of sample (this rank's index)
        of train step `step` was read, or None once forgotten."""
        where = self.recent.get(f"step {step}")
        if where is None or feature not in self.dataset.feature_names:
            return None
        if feature in self.dataset.jagged:
            return where(sample, f"bag:{feature}", 0)
        return where(sample, "sparse", self.dataset.one_hot_features.index(feature))

    def train_batches(
        self, first_step: int = 0, dense_dtype: torch.dtype = torch.float32
    ) -> PrefetchLoader:
        cfg, env = self.cfg, self.env
        return train_loader(
            self.dataset,
            cfg.data,
            cfg.train.global_batch_size,
            env.rank,
            env.world_size,
            env.device,
            cfg.run.seed,
            first_step,
            check=self._remember,
            transform=self.transform,
            last_step=cfg.train.steps,
            dense_dtype=dense_dtype,
        )

    def eval_batches(self, batch_size: int, samples: int) -> PrefetchLoader:
        env = self.env
        return eval_loader(
            self.eval_dataset,
            self.cfg.data,
            batch_size,
            env.rank,
            env.world_size,
            env.device,
            samples,
            check=check_batch,
            transform=self.transform,
        )


def use_dataset_tables(cfg: Config, dataset: BinaryDataset) -> None:
    """With data.path the dataset defines the id space: one table per categorical feature sized from
    the dataset (when the config lists no tables), or the listed tables resized to the dataset's rows."""
    cfg.data.num_dense = dataset.num_dense
    cfg.embedding.row_scale = 1.0
    rows = dict(zip(dataset.feature_names, dataset.table_rows, strict=True))
    if not cfg.embedding.tables:
        pooling = dataset.meta.get("pooling", {})
        cfg.embedding.tables = [
            TableConfig(name=f, num_embeddings=n, pooling=pooling.get(f, "sum"))
            for f, n in rows.items()
        ]
    listed = [f for t in cfg.embedding.tables for f in (t.features or [t.name])]
    if sorted(listed) != sorted(rows):
        raise ValueError(
            f"dataset {cfg.data.path} has features {list(rows)} but the config's tables list {listed}; "
            "list no [[embedding.tables]] to take the dataset's"
        )
    for t in cfg.embedding.tables:
        t.num_embeddings = max(rows[f] for f in (t.features or [t.name]))
    # one size per table: a wrong count fails here, naming data.multi_hot_sizes
    multi_hot_from_config(cfg, dataset)


def multi_hot_from_config(
    cfg: Config, dataset: BinaryDataset | None = None
) -> MultiHot | PartialMultiHot | None:
    """data.multi_hot_sizes (one per embedding.tables entry) as a MultiHot over the tables' features; None if [].
    A dataset's jagged features keep their own bags: the expansion covers its one-hot features only."""
    sizes = cfg.data.multi_hot_sizes
    if not sizes:
        return None
    tables = cfg.embedding.tables
    if len(sizes) != len(tables):
        raise ConfigError(
            f"config key 'data.multi_hot_sizes' has {len(sizes)} sizes but there are {len(tables)} tables "
            f"({', '.join(t.name for t in tables)}): give one size per table"
        )
    keys, per_feature, rows, table_of = [], [], [], []
    for t_index, (t, size) in enumerate(zip(tables, sizes, strict=True)):
        for f in t.features or [t.name]:
            keys.append(f)
            per_feature.append(size)
            rows.append(t.num_embeddings)
            table_of.append(t_index)
    if dataset is not None and dataset.jagged:
        order = {name: i for i, name in enumerate(dataset.feature_names)}
        kept = sorted(
            (order[k], k, s, r, t)
            for k, s, r, t in zip(keys, per_feature, rows, table_of, strict=True)
            if k not in dataset.jagged
        )
        keys, per_feature, rows, table_of = ([e[i] for e in kept] for i in range(1, 5))
    multi_hot = MultiHot(
        keys, per_feature, rows, table_of, cfg.data.multi_hot_distribution, cfg.run.seed
    )
    if dataset is not None and dataset.jagged:
        return PartialMultiHot(multi_hot, dataset.feature_names)
    return multi_hot


def keep_weights(transform: Callable[[Batch], Batch] | None) -> Callable[[Batch], Batch] | None:
    """transform (a multi-hot expansion, which rebuilds the batch) keeping the batch's sample weights."""
    if transform is None:
        return None
    return lambda batch: dataclasses.replace(transform(batch), weights=batch.weights)


def normalize_weights(
    dataset: BinaryDataset,
    batches: Iterator[Batch],
    whole_segments: Iterator[list[tuple[int, int]]],
    global_batch_size: int,
    label: Callable[[int], str],
) -> Iterator[Batch]:
    """Each train batch's weights times B / S, S the weight sum of its whole global batch of B rows: the
    objective's mean(w * loss) on each rank, averaged over the ranks (DDP), is then the global batch's
    weighted mean sum(w * loss) / S at any world size. A global batch whose weights are all 0 trains nothing.
    A weight that is negative or not finite is a ValueError naming the step and the row."""
    try:
        for i, (batch, whole) in enumerate(zip(batches, whole_segments, strict=True)):
            w = dataset.read_weights(whole)
            bad = ~(np.isfinite(w) & (w >= 0))
            if bad.any():
                b = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"{label(i)}: weight of {dataset.describe_rows(whole)(b, 'weights', 0)} is "
                    f"{float(w[b])}, expected a finite value >= 0"
                )
            total = float(w.sum(dtype=np.float64))
            scale = global_batch_size / total if total > 0 else 0.0
            yield dataclasses.replace(batch, weights=batch.weights * scale)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


# ---- dataset loaders ------------------------------------------------------------------------------------
# check(batch, at, where) -> batch: raises on bad values (pipeline.checks.check_batch)
BatchCheck = Callable[[Batch, str, Callable[[int, str, int], str]], Batch]


def _batches(
    dataset: BinaryDataset,
    data: DataConfig,
    segments,
    check: BatchCheck | None = None,
    label: Callable[[int], str] = str,
) -> Iterator[Batch]:
    if check is not None:
        segments, described = itertools.tee(segments)
    if data.reader == "dali":
        if dataset.jagged:
            raise ConfigError(
                f"config key 'data.reader' is 'dali', which reads one-hot datasets only; dataset "
                f"{dataset.path} has jagged features {sorted(dataset.jagged)}: use data.reader = 'memmap'"
            )
        if dataset.weights is not None:
            raise ConfigError(
                f"config key 'data.reader' is 'dali', which does not read sample weights; dataset "
                f"{dataset.path} has a weights file: use data.reader = 'memmap'"
            )
        from pipeline.dali_reader import DaliBatchReader  # only with the [dali] extra

        # the prefetcher does the H2D copy as for memmap
        batches = DaliBatchReader(dataset, segments, device="cpu")
    else:
        batches = map(dataset.read_rows, segments)
    return batches if check is None else _checked(dataset, batches, described, check, label)


def _checked(
    dataset: BinaryDataset, batches, segments, check: BatchCheck, label: Callable[[int], str]
) -> Iterator[Batch]:
    try:
        for i, (batch, segs) in enumerate(zip(batches, segments, strict=True)):
            yield check(batch, label(i), dataset.describe_rows(segs))
    finally:
        close = getattr(batches, "close", None)
        if close is not None:  # as PrefetchLoader would have closed an unwrapped reader
            close()


def train_loader(
    dataset: BinaryDataset,
    data: DataConfig,
    global_batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device | str,
    seed: int,
    start_step: int = 0,
    check: BatchCheck | None = None,
    transform: Callable[[Batch], Batch] | None = None,
    last_step: int | None = None,
    dense_dtype: torch.dtype = torch.float32,
) -> PrefetchLoader:
    """This rank's train batches on ``device`` for data.epochs passes over data.train_range, from
    global step start_step.

    The run has ``data.epochs * dataset.steps_per_epoch(global_batch_size, data.train_range)`` steps in all, or
    last_step (train.steps) if that is fewer.
    check, if given, sees every host batch before the prefetcher copies it (labelled "step N", N 1-based);
    transform (pipeline.multihot.MultiHot) every batch once it is on the device, in the prefetcher.
    The dense features arrive in dense_dtype (cast on the host, after the check).
    """
    segments = dataset.train_segments(
        global_batch_size,
        rank,
        world_size,
        data.train_range or None,
        data.epochs,
        seed if data.shuffle else None,
        data.shuffle_block_rows,
        start_step,
    )
    if last_step is not None:
        segments = itertools.islice(segments, max(last_step - start_step, 0))
    label = lambda i: f"step {start_step + i + 1}"  # noqa: E731
    batches = _batches(dataset, data, segments, check, label)
    if dataset.weights is not None:
        # the whole global batch of every step, whatever this rank's share (its weight sum)
        whole = dataset.train_segments(
            global_batch_size,
            0,
            1,
            data.train_range or None,
            data.epochs,
            seed if data.shuffle else None,
            data.shuffle_block_rows,
            start_step,
        )
        if last_step is not None:
            whole = itertools.islice(whole, max(last_step - start_step, 0))
        batches = normalize_weights(dataset, batches, whole, global_batch_size, label)
    return PrefetchLoader(
        dense_as(batches, dense_dtype), device, depth=data.prefetch_depth, transform=transform
    )


def eval_loader(
    dataset: BinaryDataset,
    data: DataConfig,
    global_batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device | str,
    max_samples: int = 0,
    check: BatchCheck | None = None,
    transform: Callable[[Batch], Batch] | None = None,
) -> PrefetchLoader:
    """This rank's eval batches (data.eval_range, in order), limited to its first max_samples rows when > 0;
    check and transform as for train_loader (labelled "eval batch N", N 0-based)."""
    start, end = dataset.resolve_range(data.eval_range or None, dataset.default_eval_range)
    if max_samples > 0:
        end = min(end, start + max_samples)
    segments = dataset.eval_segments(global_batch_size, rank, world_size, (start, end))
    return PrefetchLoader(
        _batches(dataset, data, segments, check, lambda i: f"eval batch {i}"),
        device,
        depth=data.prefetch_depth,
        transform=transform,
    )
