"""One config tree for RecFuse: dataclasses, loaded from TOML, overridden from the command line.

Precedence: command line (``--section.key value`` or ``--section.key=value``) > TOML > defaults.
Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field


@dataclass
class TableConfig:
    """One embedding table, looked up by one or more sparse features."""

    name: str = ""  # unique table name
    num_embeddings: int = 0  # rows (vocabulary size) before embedding.row_scale
    features: list[str] = field(default_factory=list)  # features that look up this table; [] means [name]
    pooling: str = "sum"  # how a multi-hot bag becomes one vector: "sum" or "mean"
    placement: str = "auto"  # pin a sharding: "auto", "table", "row" or "replicated"
    bag_min: int = -1  # synthetic bag length range for this table's features; -1: use data.bag_min/bag_max
    bag_max: int = -1
    # ids outside [0, num_embeddings): "error" stops with feature/table/sample/id named; "modulo" maps id to
    # id % num_embeddings (raw or hashed ids folded into a smaller table). Negative ids are always an error.
    # "" = embedding.out_of_range
    out_of_range: str = ""
    # dynamic table (README "Dynamic tables"): keys are any non-negative int64 (raw ids, 64-bit hashes), rows are
    # allocated as keys are admitted, sharded by key; num_embeddings is then the expected vocabulary (it scales the
    # initial rows, +-sqrt(1/num_embeddings), and the synthetic ids' range). The fields below apply to dynamic tables
    dynamic: bool = False
    capacity: int = 0  # initial rows of the whole table (split over ranks); required for a dynamic table
    # rows the table may grow to (0 = no limit, = capacity: no growth); a rank whose share is full stops the run
    max_capacity: int = 0
    load_factor: float = 0.5  # largest fraction of hash-index slots in use (keys + removed keys) before a rehash
    admit_min_freq: int = 1  # a key gets a trainable row once seen this many times; before, it reads zeros, no update
    evict_after_steps: int = 0  # free the rows (and forget the counts) of keys not seen for this many steps; 0 = never
    # at capacity, evict the least recently seen keys of the key shard instead of growing (capacity stays fixed)
    evict_when_full: bool = False
    # keys hash to this many shards, owner rank = shard % W (>= the world size; a multiple of it balances memory);
    # capacity is split evenly over them and evict_when_full acts per shard, so neither depends on W
    key_shards: int = 64
    hash_ids: bool = False  # synthetic data: each Zipf id becomes splitmix64(id) as a 63-bit id (raw ids > 2^32)


@dataclass
class RunConfig:
    dir: str = "runs/default"  # where metrics.jsonl, summary.json and checkpoints go
    seed: int = 0  # seeds data, weights and everything else
    log_every: int = 10  # steps between metrics lines
    backend: str = "auto"  # process-group backend: "auto" (nccl on CUDA, else gloo), "nccl" or "gloo"
    device: str = "auto"  # "auto" (cuda if available), "cuda" or "cpu"
    # profile this many steps right after train.warmup_steps and put into summary.json ("profile") the torch calls
    # that sync with a CUDA device, per line of code (on CPU: those the step would make on a GPU) and, on CUDA,
    # the runtime's syncs and kernel launches per step (torch.profiler); samples/s start after them. 0 = off
    profile_steps: int = 0


@dataclass
class DataConfig:
    path: str = ""  # preprocessed binary dataset directory; "" means synthetic data
    num_dense: int = 13  # dense features per sample (synthetic)
    zipf_exponent: float = 1.05  # power-law exponent of synthetic ids (larger: more skewed)
    bag_min: int = 1  # synthetic multi-hot bag length range (inclusive); 0 allows empty bags
    bag_max: int = 1
    signal: float = 1.0  # strength of the hidden ground-truth model behind synthetic labels
    train_range: str = ""  # "start:end" rows of a dataset used for training ("" = default split)
    eval_range: str = ""  # "start:end" rows used for evaluation ("" = default split)
    epochs: int = 1  # passes over the train range (datasets only)
    prefetch_depth: int = 2  # batches the pinned-memory prefetcher keeps in flight
    shuffle: bool = True  # datasets: visit the train range in a new block order each epoch (seeded by run.seed)
    shuffle_block_rows: int = 8192  # rows per shuffled block: larger reads more sequentially, smaller mixes better
    reader: str = "memmap"  # datasets: "memmap" (numpy) or "dali" (needs the [dali] extra); same batches either way
    # datasets: MLPerf DLRM-DCNv2 multi-hot expansion of the one-hot ids, one bag size per table (embedding.tables
    # order; with no tables listed, the dataset's features); [] = one-hot. Synthetic data ignores it (bag_min/bag_max)
    multi_hot_sizes: list[int] = field(default_factory=list)
    multi_hot_distribution: str = "uniform"  # the multi-hot bags' extra ids: "uniform" or "pareto" (as MLPerf's)
    # a second preprocessed dataset (same features and table sizes, e.g. made with --vocab) to evaluate on; then
    # all of data.path (or data.train_range) trains and data.eval_range selects rows of eval_path ("" = all)
    eval_path: str = ""


@dataclass
class ModelConfig:
    name: str = "dlrm"  # "dlrm", "dcnv2" or "deepfm"
    bottom_mlp: list[int] = field(default_factory=lambda: [64, 16])  # dense tower; last size = embedding dim
    top_mlp: list[int] = field(default_factory=lambda: [64, 32])  # hidden sizes over the interaction; a 1-unit logit follows
    cross_layers: int = 3  # dcnv2: number of cross layers
    cross_low_rank: int = 0  # dcnv2: rank of the low-rank cross layers (0 = full rank)
    dcn_structure: str = "stacked"  # dcnv2: "stacked" (cross -> top_mlp) or "parallel" (cross | deep_mlp -> top_mlp)
    deep_mlp: list[int] = field(default_factory=lambda: [64, 32])  # deepfm deep part; dcnv2 "parallel" deep tower
    # torch.compile the dense network for training steps: "auto" (on CUDA, where it was measured to win), "on", "off"
    compile: str = "auto"
    # dense weights at start: "torch" (nn.Linear's default), or "dlrm" as facebookresearch/dlrm: every Linear's
    # weight ~ N(0, sqrt(2 / (fan_in + fan_out))), bias ~ N(0, sqrt(1 / fan_out)); DCN-v2 cross layers take the
    # same weights (Xavier normal, as torchrec's LowRankCrossNet) and zero biases (models/init.py says why).
    # Drawn from a generator seeded by run.seed, so every rank and world size starts from the same weights.
    # Embedding rows are uniform +-sqrt(1/rows) under both (dlrm's own embedding init)
    init: str = "torch"


@dataclass
class EmbeddingConfig:
    dim: int = 16  # embedding dimension shared by all tables
    tables: list[TableConfig] = field(default_factory=list)  # the tables ([[embedding.tables]] in TOML)
    row_scale: float = 1.0  # multiply every table's rows (shrink big configs to fit small machines)
    sharding: str = "auto"  # default placement for tables left at "auto": "auto", "table", "row", "replicated"
    replicate_below_bytes: int = 1 << 20  # auto: tables smaller than this are replicated
    memory_budget_bytes: int = 0  # per-rank bytes for weights + optimizer state; 0 = unlimited
    storage_dtype: str = "float32"  # table storage: "float32", "bfloat16" or "float16" (optimizer math is fp32)
    out_of_range: str = "error"  # policy of tables that set none: "error" or "modulo" (see TableConfig.out_of_range)
    # rows (forward) and gradients (backward) in the all-to-all: "fp32", "bf16" or "fp16" (fp16 gradients carry one
    # power-of-two scale per message so small ones do not flush to zero). Half the bytes; one rank exchanges nothing
    exchange_dtype: str = "fp32"


@dataclass
class OptimizerConfig:
    dense: str = "adam"  # dense optimizer: "sgd", "adagrad" or "adam"
    dense_lr: float = 1e-3  # dense learning rate
    sparse: str = "adagrad"  # fused embedding optimizer: "sgd", "adagrad" (row-wise) or "adam" (lazy)
    sparse_lr: float = 0.05  # embedding learning rate
    eps: float = 1e-8  # adagrad/adam epsilon (dense and sparse)
    beta1: float = 0.9  # adam first-moment decay
    beta2: float = 0.999  # adam second-moment decay
    # Learning-rate schedule, one function of the step (pipeline/schedule.py lr_at) for dense_lr and sparse_lr
    # alike, so a resumed run recomputes it exactly. For step s = 1, 2, ... and each base rate lr:
    #   s < warmup_steps                        lr * s / warmup_steps        (linear warm-up from 0)
    #   otherwise, before decay_start or with decay_steps = 0: lr
    #   decay_start <= s < decay_start + D      lr_end + (lr - lr_end) * ((decay_start + D - s) / D) ** 2
    #   s >= decay_start + D                    lr_end                       (D = decay_steps)
    # This is facebookresearch/dlrm's LRPolicyScheduler, which the MLPerf DLRM-DCNv2 reference (torchrec_dlrm,
    # dlrm_main.py) steps once per iteration: the same warm-up, power-2 decay and step numbering. Where it differs:
    # it decays to 0 (floored at 1e-7) and then holds its last decay value, lr / D**2, where this holds lr_end;
    # and with a decay configured it holds its last warm-up value, lr * (W-1)/W, between warm-up and decay, where
    # this holds lr (MLPerf's rules define the base rate as the rate after warm-up and before decay).
    warmup_steps: int = 0  # LR warm-up steps (train.warmup_steps is the unrelated samples/s warm-up)
    decay_start: int = 0  # first step of the polynomial decay; needs decay_steps > 0 and >= warmup_steps
    decay_steps: int = 0  # length of the decay; 0 = no decay
    lr_end: float = 0.0  # rate reached at decay_start + decay_steps, for dense and sparse; <= dense_lr and sparse_lr
    # linear scaling rule: every rate above (dense_lr, sparse_lr, lr_end) times
    # train.global_batch_size / reference_batch_size, so a config tuned at one batch keeps its per-sample step
    scale_lr_with_batch: bool = False
    reference_batch_size: int = 0  # the global batch dense_lr and sparse_lr were tuned at; needed by scale_lr_with_batch


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps
    global_batch_size: int = 256  # samples per step over ALL ranks (split evenly)
    bf16: bool = True  # autocast dense layers to bf16 on CUDA (ignored on CPU)
    pipelined: bool = True  # overlap the next batch's id exchange with this batch's compute
    warmup_steps: int = 5  # steps excluded from samples/s
    checkpoint_every: int = 0  # steps between checkpoints; checkpointing is on iff > 0 or resume is set, and then also at the end
    resume: str = ""  # "" = fresh start, "auto" = newest complete checkpoint in run.dir, or a path
    # warm start (when not resuming): embeddings and matching dense weights from a checkpoint or export directory whose
    # tables may differ (new tables and keys start fresh; a same-name table of another dim or kind is an error)
    init_from: str = ""
    keep_checkpoints: int = 2  # checkpoints kept on disk
    timeout_s: float = 600.0  # collective timeout before a hung rank is reported
    fail_at_step: int = 0  # fault injection: rank fail_rank exits abruptly after this step (first torchrun attempt only); 0 = off
    fail_rank: int = 0  # rank that fail_at_step kills
    hang_at_step: int = 0  # fault injection: rank hang_rank stops entering collectives after this step (first attempt); 0 = off
    hang_rank: int = 0  # rank that hang_at_step hangs
    # a step whose loss is NaN/inf on any rank is skipped on every rank (no dense or sparse update) and counted
    # (skipped_steps in metrics.jsonl / summary.json); false: training stops naming the step and last checkpoint
    skip_nonfinite_loss: bool = False
    inject_nan_loss_step: int = 0  # fault injection: rank inject_nan_loss_rank's loss is NaN at this step; 0 = off
    inject_nan_loss_rank: int = 0


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations (each one listed in summary.json "evals"); 0 = only at the end
    samples: int = 8192  # held-out samples per evaluation (global)
    batch_size: int = 1024  # global eval batch size
    every_epoch: bool = False  # datasets: evaluate after every epoch (sets eval.every to the steps per epoch)


@dataclass
class ExportConfig:
    """DeepRec-style embedding export at the end of training: <dir>/<table>/{keys,values,freq,last_step}.npy."""

    enabled: bool = False  # export after training
    dir: str = ""  # "" = <run.dir>/export
    min_freq: int = 1  # drop rows looked up fewer than min_freq times (rows never looked up are always dropped)
    since_step: int = 0  # only rows updated after this step (incremental export for online serving); 0 = all


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


class ConfigError(ValueError):
    pass


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp, value):
    """Check (TOML) or parse (CLI strings) a value against a field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a table, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            if dataclasses.is_dataclass(item_tp):
                raise ConfigError(f"config key '{key}' can only be set in the TOML file")
            text = value.strip().strip("[]")
            value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"config key '{key}': union types are not supported")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")


def _fields(cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls, values: dict, prefix: str = ""):
    known = _fields(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in known:
            raise ConfigError(f"unknown config key '{key}' (known in this section: {', '.join(known)})")
        kwargs[name] = _coerce(key, known[name], value)
    return cls(**kwargs)


def _set_dotted(tree: dict, key: str, value: str) -> None:
    parts = key.split(".")
    cls = Config
    node = tree
    for depth, part in enumerate(parts):
        known = _fields(cls)
        if part not in known:
            raise ConfigError(f"unknown config key '{key}'")
        tp = known[part]
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                raise ConfigError(f"config key '{key}' is a section; set one of its keys")
            node[part] = value
        else:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"unknown config key '{key}' ('{'.'.join(parts[:depth + 1])}' is not a section)")
            node = node.setdefault(part, {})
            cls = tp


def parse_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """Split argv into the --config path and (key, value) overrides."""
    config_path = None
    overrides = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --section.key value")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"option '--{name}' needs a value")
            value = argv[i + 1]
            i += 1
        if name == "config":
            config_path = value
        else:
            overrides.append((name, value))
        i += 1
    return config_path, overrides


def load_config(argv: list[str] | None = None, config_path: str | None = None) -> Config:
    """Defaults, then the TOML file (--config or config_path), then command-line overrides."""
    argv = sys.argv[1:] if argv is None else argv
    cli_path, overrides = parse_overrides(argv)
    path = cli_path or config_path
    tree: dict = {}
    if path:
        try:
            with open(path, "rb") as f:
                tree = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path!r} is not valid TOML: {e}") from None
    for key, value in overrides:
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    choices = {
        "model.name": (cfg.model.name, ("dlrm", "dcnv2", "deepfm")),
        "model.dcn_structure": (cfg.model.dcn_structure, ("stacked", "parallel")),
        "model.compile": (cfg.model.compile, ("auto", "on", "off")),
        "model.init": (cfg.model.init, ("torch", "dlrm")),
        "optimizer.dense": (cfg.optimizer.dense, ("sgd", "adagrad", "adam")),
        "optimizer.sparse": (cfg.optimizer.sparse, ("sgd", "adagrad", "adam")),
        "embedding.sharding": (cfg.embedding.sharding, ("auto", "table", "row", "replicated")),
        "embedding.storage_dtype": (cfg.embedding.storage_dtype, ("float32", "bfloat16", "float16")),
        "run.backend": (cfg.run.backend, ("auto", "nccl", "gloo")),
        "run.device": (cfg.run.device, ("auto", "cuda", "cpu")),
        "data.reader": (cfg.data.reader, ("memmap", "dali")),
        "data.multi_hot_distribution": (cfg.data.multi_hot_distribution, ("uniform", "pareto")),
        "embedding.out_of_range": (cfg.embedding.out_of_range, ("error", "modulo")),
        "embedding.exchange_dtype": (cfg.embedding.exchange_dtype, ("fp32", "bf16", "fp16")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"config key '{key}' is {value!r}; expected one of {allowed}")
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
        if t.pooling not in ("sum", "mean"):
            raise ConfigError(f"{where}: pooling is {t.pooling!r}; expected 'sum' or 'mean'")
        if t.placement not in ("auto", "table", "row", "replicated"):
            raise ConfigError(f"{where}: placement is {t.placement!r}; expected auto, table, row or replicated")
        if t.out_of_range not in ("", "error", "modulo"):
            raise ConfigError(f"{where}: out_of_range is {t.out_of_range!r}; expected 'error' or 'modulo'")
        _validate_dynamic(t, where, t.out_of_range or cfg.embedding.out_of_range)
    if cfg.train.global_batch_size <= 0 or cfg.train.steps < 0:
        raise ConfigError("train.global_batch_size must be positive and train.steps non-negative")
    if cfg.data.shuffle_block_rows <= 0 or cfg.data.prefetch_depth <= 0:
        raise ConfigError("data.shuffle_block_rows and data.prefetch_depth must be positive")
    if not 0 <= cfg.data.bag_min <= cfg.data.bag_max:
        raise ConfigError(f"data.bag_min/bag_max must satisfy 0 <= min <= max, got {cfg.data.bag_min}, {cfg.data.bag_max}")
    sizes, tables = cfg.data.multi_hot_sizes, cfg.embedding.tables
    for i, size in enumerate(sizes):
        if size < 1:
            where = f" (table {tables[i].name})" if i < len(tables) else ""
            raise ConfigError(f"config key 'data.multi_hot_sizes' has {size} at position {i}{where}; sizes must be >= 1")
    if sizes and tables and len(sizes) != len(tables):  # with no tables listed, the dataset's are checked when opened
        raise ConfigError(f"config key 'data.multi_hot_sizes' has {len(sizes)} sizes but embedding.tables lists "
                          f"{len(tables)} tables; give one size per table")
    if cfg.data.eval_path and not cfg.data.path:
        raise ConfigError("config key 'data.eval_path' needs data.path (the train dataset) as well")
    if cfg.eval.every_epoch and (not cfg.data.path or cfg.eval.every):
        raise ConfigError("config key 'eval.every_epoch' needs data.path (synthetic data has no epochs) and eval.every = 0; "
                          f"got data.path={cfg.data.path!r}, eval.every={cfg.eval.every}")
    validate_schedule(cfg.optimizer)
    if cfg.export.since_step < 0:
        raise ConfigError(f"config key 'export.since_step' must be >= 0, got {cfg.export.since_step}")
    if cfg.train.init_from and cfg.train.resume:
        raise ConfigError("config keys 'train.init_from' and 'train.resume' exclude each other (resume continues a run, "
                          "init_from starts a new one from another run's tables)")


def validate_schedule(o: OptimizerConfig) -> None:
    for key in ("warmup_steps", "decay_start", "decay_steps", "reference_batch_size"):
        if getattr(o, key) < 0:
            raise ConfigError(f"config key 'optimizer.{key}' is {getattr(o, key)}; it must be >= 0")
    if o.decay_steps == 0 and (o.decay_start or o.lr_end):
        key = "decay_start" if o.decay_start else "lr_end"
        raise ConfigError(f"config key 'optimizer.{key}' sets a decay but optimizer.decay_steps is 0; "
                          "set optimizer.decay_steps (the decay's length)")
    if o.decay_steps and o.decay_start < o.warmup_steps:
        raise ConfigError(f"config key 'optimizer.decay_start' is {o.decay_start}, before the warm-up ends "
                          f"(optimizer.warmup_steps={o.warmup_steps}); the decay must start after the warm-up")
    if o.lr_end < 0:
        raise ConfigError(f"config key 'optimizer.lr_end' is {o.lr_end}; it must be >= 0")
    for key in ("dense_lr", "sparse_lr"):
        if o.lr_end > getattr(o, key):
            raise ConfigError(f"config key 'optimizer.lr_end' is {o.lr_end}, above optimizer.{key}={getattr(o, key)}; "
                              "the decay goes down to lr_end")
    if o.scale_lr_with_batch and o.reference_batch_size <= 0:
        raise ConfigError("config key 'optimizer.reference_batch_size' must be > 0 with optimizer.scale_lr_with_batch "
                          "(the global batch the learning rates were tuned at)")


def _validate_dynamic(t: TableConfig, where: str, out_of_range: str) -> None:
    """The dynamic-table fields of one [[embedding.tables]] entry."""
    if t.hash_ids and not t.dynamic and out_of_range != "modulo":
        raise ConfigError(f"{where}: hash_ids makes 63-bit ids, which only a dynamic table (dynamic = true) or "
                          "out_of_range = 'modulo' accepts")
    if not t.dynamic:
        defaults = TableConfig()
        for key in ("capacity", "max_capacity", "load_factor", "admit_min_freq", "evict_after_steps", "evict_when_full",
                    "key_shards"):
            if getattr(t, key) != getattr(defaults, key):
                raise ConfigError(f"{where}: '{key}' applies to dynamic tables only (set dynamic = true)")
        return
    if t.capacity <= 0:
        raise ConfigError(f"{where}: a dynamic table needs 'capacity' > 0 (its initial rows), got {t.capacity}")
    if t.max_capacity and t.max_capacity < t.capacity:
        raise ConfigError(f"{where}: 'max_capacity' ({t.max_capacity}) is below 'capacity' ({t.capacity})")
    if t.max_capacity and t.evict_when_full:
        raise ConfigError(f"{where}: 'evict_when_full' keeps the capacity fixed; 'max_capacity' only limits growth")
    if not 0.0 < t.load_factor <= 0.9:
        raise ConfigError(f"{where}: 'load_factor' must be in (0, 0.9], got {t.load_factor}")
    if t.admit_min_freq < 1 or t.evict_after_steps < 0 or t.key_shards < 1:
        raise ConfigError(f"{where}: need 'admit_min_freq' >= 1, 'evict_after_steps' >= 0 and 'key_shards' >= 1, got "
                          f"{t.admit_min_freq}, {t.evict_after_steps}, {t.key_shards}")
    if t.placement != "auto":
        raise ConfigError(f"{where}: a dynamic table is sharded by key; 'placement' must be 'auto', got {t.placement!r}")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
