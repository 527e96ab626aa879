"""The training runs of bench/gpu_check.py as tables: each run's name, config, data ("synthetic" or
"dataset"), global batch and train.py overrides. QUICK_RUNS are the tiny CPU shapes of --quick."""

from __future__ import annotations

import copy

TINY = "configs/tiny.toml"
KAGGLE = "configs/dlrm_criteo_kaggle.toml"
DCN = "configs/dcnv2_criteo_1tb.toml"


def _run(name: str, config: str, data: str, batch: int, args: str | list[str]) -> dict:
    return {
        "name": name,
        "config": config,
        "data": data,
        "batch": batch,
        "args": args.split() if isinstance(args, str) else list(args),
    }


# tiny shapes: the same code paths in seconds on a CPU
QUICK_SMALL = (
    "--embedding.row_scale 0.0005 --train.steps 12 --train.warmup_steps 3 --run.log_every 4 "
    "--eval.samples 512 --eval.batch_size 256 --eval.every 0"
).split()
QUICK_RUNS = [
    _run(
        "tiny",
        TINY,
        "synthetic",
        512,
        "--train.steps 20 --train.warmup_steps 5 --eval.samples 1024",
    ),
    _run("kaggle_256_synthetic", KAGGLE, "synthetic", 256, QUICK_SMALL),
    _run("kaggle_256_dataset", KAGGLE, "dataset", 256, QUICK_SMALL),
    _run(
        "dcnv2_256",
        DCN,
        "synthetic",
        256,
        [*QUICK_SMALL, "--embedding.row_scale", "0.00005", "--train.steps", "8"],
    ),
]

# one final evaluation on a large sample, none during the measured steps
KAGGLE_COMMON = (
    "--train.warmup_steps 10 --run.log_every 10 --eval.every 0 --eval.samples 262144 "
    "--eval.batch_size 65536"
).split()
FULL_RUNS = [
    _run("tiny", TINY, "synthetic", 512, []),
    _run(
        "kaggle_16k_synthetic", KAGGLE, "synthetic", 16384, [*KAGGLE_COMMON, "--train.steps", "80"]
    ),
    _run(
        "kaggle_64k_synthetic", KAGGLE, "synthetic", 65536, [*KAGGLE_COMMON, "--train.steps", "50"]
    ),
    _run("kaggle_16k_dataset", KAGGLE, "dataset", 16384, [*KAGGLE_COMMON, "--train.steps", "80"]),
    _run("kaggle_64k_dataset", KAGGLE, "dataset", 65536, [*KAGGLE_COMMON, "--train.steps", "50"]),
    _run(
        "dcnv2_64k_bf16",
        DCN,
        "synthetic",
        65536,
        "--embedding.row_scale 0.1 --train.bf16 true --train.steps 40 --train.warmup_steps 10 "
        "--run.log_every 10 --eval.samples 131072",
    ),
]


def run_specs(quick: bool) -> list[dict]:
    """The training runs: name, config, data ("synthetic" or "dataset"), batch, overrides (a fresh copy)."""
    return copy.deepcopy(QUICK_RUNS if quick else FULL_RUNS)
