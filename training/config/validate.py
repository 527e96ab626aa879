"""Cross-field checks of a loaded config: what a field's type alone cannot express."""

from __future__ import annotations

import dataclasses
import math

from models.projection import CONCAT_MODELS
from training.config.schema import Config, OptimizerConfig, TableConfig


class ConfigError(ValueError):
    """A config value the run cannot use; the message names the key."""


# the range of every numeric key that has one, as the error states it (every float must also be finite)
RANGES = {
    "run.seed": ">= 0",
    "run.log_every": ">= 1",
    "run.profile_steps": ">= 0",
    "data.num_dense": ">= 1",
    "data.zipf_exponent": ">= 0",
    "data.epochs": ">= 1",
    "data.prefetch_depth": ">= 1",
    "data.shuffle_block_rows": ">= 1",
    "model.cross_layers": ">= 1",
    "model.cross_low_rank": ">= 0",
    "model.cross_experts": ">= 1",
    "model.attention_layers": ">= 1",
    "model.attention_heads": ">= 1",
    "model.attention_dim": ">= 1",
    "model.senet_reduction": ">= 1",
    "embedding.dim": ">= 1",
    "embedding.row_scale": "> 0",
    "embedding.replicate_below_bytes": ">= 0",
    "embedding.memory_budget_bytes": ">= 0",
    "optimizer.dense_lr": ">= 0",
    "optimizer.sparse_lr": ">= 0",
    "optimizer.eps": "> 0",
    "optimizer.beta1": "in [0, 1)",
    "optimizer.beta2": "in [0, 1)",
    "train.steps": ">= 0",
    "train.global_batch_size": ">= 1",
    "train.warmup_steps": ">= 0",
    "train.checkpoint_every": ">= 0",
    "train.keep_checkpoints": ">= 0",
    "train.max_skipped_steps": ">= 0",
    "train.checkpoint_buffer_bytes": ">= 1",
    "train.timeout_s": "> 0",
    "train.fail_at_step": ">= 0",
    "train.fail_rank": ">= 0",
    "train.hang_at_step": ">= 0",
    "train.hang_rank": ">= 0",
    "train.inject_nan_loss_step": ">= 0",
    "train.inject_nan_loss_rank": ">= 0",
    "eval.every": ">= 0",
    "eval.samples": ">= 1",
    "eval.batch_size": ">= 1",
    "export.min_freq": ">= 0",
}
# keys of [[embedding.tables]] entries (the dynamic-table ones are checked with their table)
TABLE_RANGES = {"bag_min": ">= -1", "bag_max": ">= -1", "dim": ">= 0"}
# list keys whose every item is a size
SIZE_LISTS = ("model.bottom_mlp", "model.top_mlp", "model.deep_mlp", "model.cin_layers")
# models whose dense tower feeds a concatenation (any last size), not a field of the embedding dim: those
# that take the embeddings only as one concatenation (models.projection), any table dims included
FREE_BOTTOM_MODELS = CONCAT_MODELS


def _in_range(value, rule: str) -> bool:
    if rule.startswith("in ["):  # "in [lo, hi)"
        lo, hi = (float(v) for v in rule[4:-1].split(","))
        return lo <= value < hi
    op, bound = rule.split()
    return value >= float(bound) if op == ">=" else value > float(bound)


def _check_value(key: str, value, rule: str | None) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' is {value}; it must be a finite number")
    if rule is not None and not _in_range(value, rule):
        raise ConfigError(f"config key '{key}' is {value!r}; it must be {rule}")


def validate_ranges(cfg: Config) -> None:
    """Every numeric key within its range (RANGES), every float finite, every size >= 1."""
    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        for f in dataclasses.fields(part):
            key, value = f"{section.name}.{f.name}", getattr(part, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                _check_value(key, value, RANGES.get(key))
    for key in SIZE_LISTS:
        section, name = key.split(".")
        for i, size in enumerate(getattr(getattr(cfg, section), name)):
            if size < 1:
                raise ConfigError(
                    f"config key '{key}' has {size} at position {i}; sizes must be >= 1"
                )
    for i, t in enumerate(cfg.embedding.tables):
        for f in dataclasses.fields(t):
            value = getattr(t, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                key = f"embedding.tables[{i}].{f.name}"
                _check_value(f"{key} ({t.name or 'unnamed'})", value, TABLE_RANGES.get(f.name))


def check_world(cfg: Config, world_size: int) -> None:
    """What needs the world size: the ranks that fault injection names exist, the batch splits evenly."""
    for key in ("fail_rank", "hang_rank", "inject_nan_loss_rank"):
        rank = getattr(cfg.train, key)
        if rank >= world_size:
            raise ConfigError(
                f"config key 'train.{key}' is {rank} but the world size is {world_size} "
                f"(ranks 0..{world_size - 1})"
            )
    if cfg.train.global_batch_size % world_size:
        raise ConfigError(
            f"config key 'train.global_batch_size' is {cfg.train.global_batch_size}, not divisible "
            f"by the world size {world_size}"
        )


def check_runnable(cfg: Config, world_size: int) -> None:
    """Before train.py creates anything: the config describes a model at this world size."""
    if not cfg.embedding.tables and not cfg.data.path:
        raise ConfigError(
            "no embedding tables: give a config file (--config configs/tiny.toml) that lists "
            "[[embedding.tables]], or a dataset (--data.path); python train.py --help lists every key"
        )
    check_world(cfg, world_size)


def validate(cfg: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    validate_ranges(cfg)
    _validate_tables(cfg)
    _validate_model(cfg)
    if cfg.train.global_batch_size <= 0 or cfg.train.steps < 0:
        raise ConfigError("train.global_batch_size must be positive and train.steps non-negative")
    if cfg.data.shuffle_block_rows <= 0 or cfg.data.prefetch_depth <= 0:
        raise ConfigError("data.shuffle_block_rows and data.prefetch_depth must be positive")
    if not 0 <= cfg.data.bag_min <= cfg.data.bag_max:
        raise ConfigError(
            f"data.bag_min/bag_max must satisfy 0 <= min <= max, got {cfg.data.bag_min}, {cfg.data.bag_max}"
        )
    sizes, tables = cfg.data.multi_hot_sizes, cfg.embedding.tables
    for i, size in enumerate(sizes):
        if size < 1:
            where = f" (table {tables[i].name})" if i < len(tables) else ""
            raise ConfigError(
                f"config key 'data.multi_hot_sizes' has {size} at position {i}{where}; sizes must be >= 1"
            )
    # with no tables listed, the dataset's are checked when opened
    if sizes and tables and len(sizes) != len(tables):
        raise ConfigError(
            f"config key 'data.multi_hot_sizes' has {len(sizes)} sizes but embedding.tables lists "
            f"{len(tables)} tables; give one size per table"
        )
    if cfg.data.eval_path and not cfg.data.path:
        raise ConfigError("config key 'data.eval_path' needs data.path (the train dataset) as well")
    if cfg.eval.every_epoch and (not cfg.data.path or cfg.eval.every):
        raise ConfigError(
            "config key 'eval.every_epoch' needs data.path (synthetic data has no epochs) and eval.every = 0; "
            f"got data.path={cfg.data.path!r}, eval.every={cfg.eval.every}"
        )
    validate_schedule(cfg.optimizer)
    if cfg.export.since_step < 0:
        raise ConfigError(
            f"config key 'export.since_step' must be >= 0, got {cfg.export.since_step}"
        )
    if cfg.train.init_from and cfg.train.resume:
        raise ConfigError(
            "config keys 'train.init_from' and 'train.resume' exclude each other (resume continues a run, "
            "init_from starts a new one from another run's tables)"
        )


def _validate_model(cfg: Config) -> None:
    m = cfg.model
    if m.name not in FREE_BOTTOM_MODELS and (
        not m.bottom_mlp or m.bottom_mlp[-1] != cfg.embedding.dim
    ):
        raise ConfigError(
            f"config key 'model.bottom_mlp' is {m.bottom_mlp}; model.name {m.name!r} needs it to end "
            f"with embedding.dim ({cfg.embedding.dim})"
        )
    if m.name == "dcnmix" and m.cross_low_rank < 1:
        raise ConfigError(
            f"config key 'model.cross_low_rank' is {m.cross_low_rank}; model.name 'dcnmix' needs each "
            "expert's rank >= 1"
        )
    if m.name == "xdeepfm" and not m.cin_layers:
        raise ConfigError(
            "config key 'model.cin_layers' is []; model.name 'xdeepfm' needs at least one CIN layer"
        )


def _validate_tables(cfg: Config) -> None:
    names = set()
    for i, t in enumerate(cfg.embedding.tables):
        where = f"embedding.tables[{i}] ({t.name or 'unnamed'})"
        if not t.name:
            raise ConfigError(f"{where}: 'name' is required")
        if t.name in names:
            raise ConfigError(f"{where}: duplicate table name")
        names.add(t.name)
        if t.num_embeddings <= 0:
            raise ConfigError(f"{where}: num_embeddings must be positive, got {t.num_embeddings}")
        _validate_dynamic(t, where, t.out_of_range or cfg.embedding.out_of_range)
        lo = t.bag_min if t.bag_min >= 0 else cfg.data.bag_min
        hi = t.bag_max if t.bag_max >= 0 else cfg.data.bag_max
        if lo > hi:
            raise ConfigError(
                f"{where}: its bag length range is [{lo}, {hi}] (bag_min/bag_max, -1 = data.bag_min/"
                "bag_max); bag_min must be <= bag_max"
            )


def validate_schedule(o: OptimizerConfig) -> None:
    for key in ("lr_warmup_steps", "decay_start", "decay_steps", "reference_batch_size"):
        if getattr(o, key) < 0:
            raise ConfigError(f"config key 'optimizer.{key}' is {getattr(o, key)}; it must be >= 0")
    if o.decay_steps == 0 and (o.decay_start or o.lr_end):
        key = "decay_start" if o.decay_start else "lr_end"
        raise ConfigError(
            f"config key 'optimizer.{key}' sets a decay but optimizer.decay_steps is 0; "
            "set optimizer.decay_steps (the decay's length)"
        )
    if o.decay_steps and o.decay_start < o.lr_warmup_steps:
        raise ConfigError(
            f"config key 'optimizer.decay_start' is {o.decay_start}, before the warm-up ends "
            f"(optimizer.lr_warmup_steps={o.lr_warmup_steps}); the decay must start after the warm-up"
        )
    if o.lr_end < 0:
        raise ConfigError(f"config key 'optimizer.lr_end' is {o.lr_end}; it must be >= 0")
    for key in ("dense_lr", "sparse_lr"):
        if o.lr_end > getattr(o, key):
            raise ConfigError(
                f"config key 'optimizer.lr_end' is {o.lr_end}, above optimizer.{key}={getattr(o, key)}; "
                "the decay goes down to lr_end"
            )
    if o.scale_lr_with_batch and o.reference_batch_size <= 0:
        raise ConfigError(
            "config key 'optimizer.reference_batch_size' must be > 0 with optimizer.scale_lr_with_batch "
            "(the global batch the learning rates were tuned at)"
        )


def _validate_dynamic(t: TableConfig, where: str, out_of_range: str) -> None:
    """The dynamic-table fields of one [[embedding.tables]] entry."""
    if t.hash_ids and not t.dynamic and out_of_range != "modulo":
        raise ConfigError(
            f"{where}: hash_ids makes 63-bit ids, which only a dynamic table (dynamic = true) or "
            "out_of_range = 'modulo' accepts"
        )
    if not t.dynamic:
        defaults = TableConfig()
        for key in (
            "capacity",
            "max_capacity",
            "load_factor",
            "admit_min_freq",
            "evict_after_steps",
            "evict_when_full",
            "key_shards",
        ):
            if getattr(t, key) != getattr(defaults, key):
                raise ConfigError(
                    f"{where}: '{key}' applies to dynamic tables only (set dynamic = true)"
                )
        return
    if t.capacity <= 0:
        raise ConfigError(
            f"{where}: a dynamic table needs 'capacity' > 0 (its initial rows), got {t.capacity}"
        )
    if t.max_capacity and t.max_capacity < t.capacity:
        raise ConfigError(
            f"{where}: 'max_capacity' ({t.max_capacity}) is below 'capacity' ({t.capacity})"
        )
    if t.max_capacity and t.evict_when_full:
        raise ConfigError(
            f"{where}: 'evict_when_full' keeps the capacity fixed; 'max_capacity' only limits growth"
        )
    if not 0.0 < t.load_factor <= 0.9:
        raise ConfigError(f"{where}: 'load_factor' must be in (0, 0.9], got {t.load_factor}")
    if t.admit_min_freq < 1 or t.evict_after_steps < 0 or t.key_shards < 1:
        raise ConfigError(
            f"{where}: need 'admit_min_freq' >= 1, 'evict_after_steps' >= 0 and 'key_shards' >= 1, got "
            f"{t.admit_min_freq}, {t.evict_after_steps}, {t.key_shards}"
        )
    if t.placement != "auto":
        raise ConfigError(
            f"{where}: a dynamic table is sharded by key; 'placement' must be 'auto', got {t.placement!r}"
        )
