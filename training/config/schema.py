"""The config tree: one dataclass per TOML section, every field documented.

Choices are ``Literal`` types: the loader rejects any other value, naming the key and the choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Placement = Literal["auto", "table", "row", "replicated"]
Pooling = Literal["sum", "mean"]
SparseOptimizerName = Literal["sgd", "adagrad", "adam"]


@dataclass
class TableConfig:
    """One embedding table, looked up by one or more sparse features."""

    name: str = ""  # unique table name
    num_embeddings: int = 0  # rows (vocabulary size) before embedding.row_scale
    # this table's embedding dim; 0 = embedding.dim. Tables of different dims train together (grouped by dim);
    # models that need one common dim project the others to embedding.dim (docs/training.md "Per-table dims")
    dim: int = 0
    # features that look up this table; [] means [name]
    features: list[str] = field(default_factory=list)
    pooling: Pooling = "sum"  # how a multi-hot bag becomes one vector: "sum" or "mean"
    placement: Placement = "auto"  # pin a sharding: "auto", "table", "row" or "replicated"
    # synthetic bag length range for this table's features; -1: use data.bag_min/bag_max
    bag_min: int = -1
    bag_max: int = -1
    # ids outside [0, num_embeddings): "error" stops with feature/table/sample/id named; "modulo" maps id to
    # id % num_embeddings (raw or hashed ids folded into a smaller table). Negative ids are always an error.
    # "" = embedding.out_of_range
    out_of_range: Literal["", "error", "modulo"] = ""
    # dynamic table (docs/dynamic_tables.md): keys are any non-negative int64 (raw ids, 64-bit hashes), rows are
    # allocated as keys are admitted, sharded by key; num_embeddings is then the expected vocabulary (it scales the
    # initial rows, +-sqrt(1/num_embeddings), and the synthetic ids' range). The fields below apply to dynamic tables
    dynamic: bool = False
    # initial rows of the whole table (split over ranks); required for a dynamic table
    capacity: int = 0
    # rows the table may grow to (0 = no limit, = capacity: no growth); a rank whose share is full stops the run
    max_capacity: int = 0
    # largest fraction of hash-index slots in use (keys + removed keys) before a rehash
    load_factor: float = 0.5
    # a key gets a trainable row once seen this many times; before, it reads zeros, no update
    admit_min_freq: int = 1
    # free the rows (and forget the counts) of keys not seen for this many steps; 0 = never
    evict_after_steps: int = 0
    # at capacity, evict the least recently seen keys of the key shard instead of growing (capacity stays fixed)
    evict_when_full: bool = False
    # keys hash to this many shards, owner rank = shard % W (>= the world size; a multiple of it balances memory);
    # capacity is split evenly over them and evict_when_full acts per shard, so neither depends on W
    key_shards: int = 64
    # synthetic data: each Zipf id becomes splitmix64(id) as a 63-bit id (raw ids > 2^32)
    hash_ids: bool = False


@dataclass
class RunConfig:
    dir: str = "runs/default"  # where metrics.jsonl, summary.json and checkpoints go
    seed: int = 0  # seeds data, weights and everything else
    log_every: int = 10  # steps between metrics lines
    # process-group backend: "auto" (nccl on CUDA, else gloo), "nccl" or "gloo"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"  # "auto" (cuda if available), "cuda" or "cpu"
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
    # datasets: visit the train range in a new block order each epoch (seeded by run.seed)
    shuffle: bool = True
    # rows per shuffled block: larger reads more sequentially, smaller mixes better
    shuffle_block_rows: int = 8192
    # datasets: numpy's memmap, or NVIDIA DALI (needs the [dali] extra); the same batches either way
    reader: Literal["memmap", "dali"] = "memmap"
    # datasets: MLPerf DLRM-DCNv2 multi-hot expansion of the one-hot ids, one bag size per table (embedding.tables
    # order; with no tables listed, the dataset's features); [] = one-hot. Synthetic data ignores it (bag_min/bag_max)
    multi_hot_sizes: list[int] = field(default_factory=list)
    # the bags' extra ids, as MLPerf's
    multi_hot_distribution: Literal["uniform", "pareto"] = "uniform"
    # a second preprocessed dataset (same features and table sizes, e.g. made with --vocab) to evaluate on; then
    # all of data.path (or data.train_range) trains and data.eval_range selects rows of eval_path ("" = all)
    eval_path: str = ""


@dataclass
class ModelConfig:
    # the dense network (docs/training.md "Models"): "dlrm", "dcnv2", "deepfm", "dcnmix" (DCN-v2's mixture of
    # low-rank experts), "xdeepfm" (CIN), "autoint" (self-attention over fields), "fibinet" (SENET + bilinear),
    # "wide_deep"
    name: Literal[
        "dlrm", "dcnv2", "deepfm", "dcnmix", "xdeepfm", "autoint", "fibinet", "wide_deep"
    ] = "dlrm"
    # dense tower; last size = embedding dim
    bottom_mlp: list[int] = field(default_factory=lambda: [64, 16])
    # hidden sizes over the interaction; a 1-unit logit follows
    top_mlp: list[int] = field(default_factory=lambda: [64, 32])
    cross_layers: int = 3  # dcnv2, dcnmix: number of cross layers
    # dcnv2: rank of the low-rank cross layers (0 = full rank); dcnmix: each expert's rank (>= 1)
    cross_low_rank: int = 0
    cross_experts: int = 4  # dcnmix: low-rank experts per cross layer, mixed by a softmax gate
    # dcnv2, dcnmix: "stacked" (cross -> top_mlp) or "parallel" (cross | deep_mlp -> top_mlp)
    dcn_structure: Literal["stacked", "parallel"] = "stacked"
    # deep part of deepfm, xdeepfm, fibinet, wide_deep; dcnv2/dcnmix "parallel" deep tower; autoint: the AutoInt+
    # deep tower beside the attention ([] = plain AutoInt)
    deep_mlp: list[int] = field(default_factory=lambda: [64, 32])
    # xdeepfm: feature maps of each compressed interaction network (CIN) layer
    cin_layers: list[int] = field(default_factory=lambda: [32, 32])
    attention_layers: int = 2  # autoint: interacting (self-attention) layers
    attention_heads: int = 2  # autoint: heads per layer
    attention_dim: int = (
        16  # autoint: dim of each head (a layer outputs heads * attention_dim per field)
    )
    senet_reduction: int = (
        3  # fibinet: SENET reduction ratio (hidden fields = fields // senet_reduction)
    )
    # fibinet: bilinear weights shared by all pairs ("field_all"), one per field ("field_each") or one per pair
    # ("field_interaction")
    bilinear_type: Literal["field_all", "field_each", "field_interaction"] = "field_interaction"
    # torch.compile the dense network for training steps: "auto" (on CUDA, where it was measured to win), "on", "off"
    compile: Literal["auto", "on", "off"] = "auto"
    # dense weights at start: "torch" (nn.Linear's default), or "dlrm" as facebookresearch/dlrm: every Linear's
    # weight ~ N(0, sqrt(2 / (fan_in + fan_out))), bias ~ N(0, sqrt(1 / fan_out)); DCN-v2 cross layers take the
    # same weights (Xavier normal, as torchrec's LowRankCrossNet) and zero biases (models/init.py says why).
    # Drawn from a generator seeded by run.seed, so every rank and world size starts from the same weights.
    # Embedding rows are uniform +-sqrt(1/rows) under both (dlrm's own embedding init)
    init: Literal["torch", "dlrm"] = "torch"


@dataclass
class EmbeddingConfig:
    dim: int = 16  # embedding dimension of tables that set no dim of their own (and the models' common dim)
    # the tables ([[embedding.tables]] in TOML)
    tables: list[TableConfig] = field(default_factory=list)
    row_scale: float = 1.0  # multiply every table's rows (shrink big configs to fit small machines)
    # default placement for tables left at "auto": "auto", "table", "row", "replicated"
    sharding: Placement = "auto"
    replicate_below_bytes: int = 1 << 20  # auto: tables smaller than this are replicated
    memory_budget_bytes: int = 0  # per-rank bytes for weights + optimizer state; 0 = unlimited
    # table storage; optimizer math is fp32
    storage_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # policy of tables that set none (TableConfig.out_of_range)
    out_of_range: Literal["error", "modulo"] = "error"
    # rows (forward) and gradients (backward) in the all-to-all: "fp32", "bf16" or "fp16" (fp16 gradients carry one
    # power-of-two scale per message so small ones do not flush to zero). Half the bytes; one rank exchanges nothing
    exchange_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"


@dataclass
class OptimizerConfig:
    dense: Literal["sgd", "adagrad", "adam"] = "adam"  # dense optimizer: "sgd", "adagrad" or "adam"
    dense_lr: float = 1e-3  # dense learning rate
    # fused embedding optimizer: "sgd", "adagrad" (row-wise) or "adam" (lazy)
    sparse: SparseOptimizerName = "adagrad"
    sparse_lr: float = 0.05  # embedding learning rate
    eps: float = 1e-8  # adagrad/adam epsilon (dense and sparse)
    beta1: float = 0.9  # adam first-moment decay
    beta2: float = 0.999  # adam second-moment decay
    # Learning-rate schedule, one function of the step (training/lr_schedule.py lr_at) for dense_lr and sparse_lr
    # alike, so a resumed run recomputes it exactly. For step s = 1, 2, ... and each base rate lr:
    #   s < lr_warmup_steps                     lr * s / lr_warmup_steps     (linear warm-up from 0)
    #   otherwise, before decay_start or with decay_steps = 0: lr
    #   decay_start <= s < decay_start + D      lr_end + (lr - lr_end) * ((decay_start + D - s) / D) ** 2
    #   s >= decay_start + D                    lr_end                       (D = decay_steps)
    # This is facebookresearch/dlrm's LRPolicyScheduler, which the MLPerf DLRM-DCNv2 reference (torchrec_dlrm,
    # dlrm_main.py) steps once per iteration: the same warm-up, power-2 decay and step numbering. Where it differs:
    # it decays to 0 (floored at 1e-7) and then holds its last decay value, lr / D**2, where this holds lr_end;
    # and with a decay configured it holds its last warm-up value, lr * (W-1)/W, between warm-up and decay, where
    # this holds lr (MLPerf's rules define the base rate as the rate after warm-up and before decay).
    # LR warm-up steps (train.warmup_steps is the unrelated samples/s warm-up)
    lr_warmup_steps: int = 0
    # first step of the polynomial decay; needs decay_steps > 0 and >= lr_warmup_steps
    decay_start: int = 0
    decay_steps: int = 0  # length of the decay; 0 = no decay
    # rate reached at decay_start + decay_steps, for dense and sparse; <= dense_lr and sparse_lr
    lr_end: float = 0.0
    # linear scaling rule: every rate above (dense_lr, sparse_lr, lr_end) times
    # train.global_batch_size / reference_batch_size, so a config tuned at one batch keeps its per-sample step
    scale_lr_with_batch: bool = False
    # the global batch dense_lr and sparse_lr were tuned at; needed by scale_lr_with_batch
    reference_batch_size: int = 0


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps
    global_batch_size: int = 256  # samples per step over ALL ranks (split evenly)
    bf16: bool = True  # autocast dense layers to bf16 on CUDA (ignored on CPU)
    pipelined: bool = True  # overlap the next batch's id exchange with this batch's compute
    # steps excluded from samples/s (the LR warm-up is optimizer.lr_warmup_steps)
    warmup_steps: int = 5
    # steps between checkpoints; checkpointing is on iff > 0 or resume is set, and then also at the end
    checkpoint_every: int = 0
    resume: str = ""  # "" = fresh start, "auto" = newest complete checkpoint in run.dir, or a path
    # warm start (when not resuming): embeddings and matching dense weights from a checkpoint or export directory whose
    # tables may differ (new tables and keys start fresh; a same-name table of another dim or kind is an error)
    init_from: str = ""
    keep_checkpoints: int = 2  # checkpoints kept on disk
    # host memory a checkpoint save or load uses for rows: tables are streamed between the device and the shard
    # files in chunks of at most this many bytes (one row at least), never copied whole (docs/checkpoints.md)
    checkpoint_buffer_bytes: int = 256 << 20
    # true: a save takes a host snapshot of this rank's rows (host memory of its whole shard), then writes the
    # files in a background thread while training goes on; the next save, or the end of the run, completes it
    # (a failed write is raised there, naming the file). false: training waits for each save, whose host
    # memory is checkpoint_buffer_bytes
    async_checkpoint: bool = False
    timeout_s: float = 600.0  # collective timeout before a hung rank is reported
    # fault injection: rank fail_rank exits abruptly after this step (first torchrun attempt only); 0 = off
    fail_at_step: int = 0
    # fault injection: rank fail_rank exits abruptly at this moment of a checkpoint (first torchrun attempt only):
    # "save:shards" (its shard file written, the manifest not), "save:manifest" (the manifest written in the
    # temporary directory, not renamed), "save:rename" (an existing step_N moved aside, the new one not yet in its
    # place), "prune" (a checkpoint renamed to debris, not yet deleted), "export" (the first table of an export
    # written, the export not complete); the last four act on rank 0; "" = off
    fail_at: Literal["", "save:shards", "save:manifest", "save:rename", "prune", "export"] = ""
    fail_rank: int = 0  # rank that fail_at_step and fail_at kill
    # fault injection: rank hang_rank stops entering collectives after this step (first attempt); 0 = off
    hang_at_step: int = 0
    hang_rank: int = 0  # rank that hang_at_step hangs
    # a step whose loss is NaN/inf on any rank is skipped on every rank (no dense or sparse update) and counted
    # (skipped_steps in metrics.jsonl / summary.json); false: training stops naming the step and last checkpoint
    skip_nonfinite_loss: bool = False
    # with skip_nonfinite_loss: the most steps skipped in a row; one more stops the run naming the step and the
    # last good checkpoint (a run that skips every step trains nothing); 0 = no bound
    max_skipped_steps: int = 10
    # fault injection: rank inject_nan_loss_rank's loss is NaN at this step; 0 = off
    inject_nan_loss_step: int = 0
    inject_nan_loss_rank: int = 0


@dataclass
class EvalConfig:
    # steps between evaluations (each one listed in summary.json "evals"); 0 = only at the end
    every: int = 0
    samples: int = 8192  # held-out samples per evaluation (global)
    batch_size: int = 1024  # global eval batch size
    # datasets: evaluate after every epoch (sets eval.every to the steps per epoch)
    every_epoch: bool = False


@dataclass
class ExportConfig:
    """DeepRec-style embedding export at the end of training: <dir>/step_<N>/<table>/{keys,values,freq,last_step}.npy
    written whole then named by <dir>/latest (training/export.py)."""

    enabled: bool = False  # export after training
    dir: str = ""  # "" = <run.dir>/export
    # drop rows looked up fewer than min_freq times (rows never looked up are always dropped)
    min_freq: int = 1
    # only rows updated after this step (incremental export for online serving); 0 = all
    since_step: int = 0
    # also write a self-contained inference model to <dir>/model at the end of training: the dense network as a
    # torch.export program, every table's rows, the feature order and pooling (docs/inference.md)
    model: bool = False
    # the inference model's row storage: "float32", or "float16" / "bfloat16" (half the bytes)
    model_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # the tables model_dtype applies to; [] = all (the others stay float32)
    model_dtype_tables: list[str] = field(default_factory=list)


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
