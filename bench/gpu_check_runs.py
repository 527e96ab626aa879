"""What bench/gpu_check.py runs, in order of value, with the seconds each part is expected to take.

Every part has an estimate; gpu_check skips a part whose estimate does not fit the budget left. The full
(GPU) estimates are guesses sized from the shapes, not measurements: no run of this gpu_check has been
timed on a GPU yet. Every run records each part's actual seconds in DIR/parts.json, and ``--calibrate
DIR`` takes them (x 1.2) as the estimates of the next run. The quick (CPU) estimates are the seconds
measured on the 2-core development machine while other jobs loaded it (load average 5 to 7).

Runs: name, config, data ("synthetic" or "dataset"), global batch, train.py overrides, ranks (nproc > 1:
bench/local_work.py on one device) and, for a W > 1 run, the W = 1 run at the same per-GPU batch that the
projection compares with.
"""

from __future__ import annotations

import copy

TINY = "configs/tiny.toml"
KAGGLE = "configs/dlrm_criteo_kaggle.toml"
DCN = "configs/dcnv2_criteo_1tb.toml"


def _run(name: str, config: str, data: str, batch: int, args, estimate_s: float, **extra) -> dict:
    return {
        "name": name,
        "config": config,
        "data": data,
        "batch": batch,
        "args": args.split() if isinstance(args, str) else list(args),
        "estimate_s": estimate_s,
        "nproc": 1,
        **extra,
    }


# ---- quick: tiny shapes, the same code paths in seconds on a CPU --------------------------------------------
QUICK_SMALL = (
    "--embedding.row_scale 0.0005 --train.steps 12 --train.warmup_steps 3 --run.log_every 4 "
    "--eval.samples 512 --eval.batch_size 256 --eval.every 0"
).split()
QUICK_TINY = "--train.steps 20 --train.warmup_steps 5 --run.log_every 5 --eval.samples 1024"
QUICK_RUNS = [
    _run("tiny", TINY, "synthetic", 512, QUICK_TINY, 14),
    _run("kaggle_256_synthetic", KAGGLE, "synthetic", 256, QUICK_SMALL, 20),
    _run("kaggle_256_dataset", KAGGLE, "dataset", 256, QUICK_SMALL, 25),
    _run(
        "dcnv2_256",
        DCN,
        "synthetic",
        256,
        [*QUICK_SMALL, "--embedding.row_scale", "0.00005", "--train.steps", "8"],
        29,
    ),
]
QUICK_SCALING = [
    _run("tiny_w2", TINY, "synthetic", 1024, QUICK_TINY, 12, nproc=2, baseline="tiny"),
]

# ---- full: one H100 ------------------------------------------------------------------------------------------
# one final evaluation on a large sample, none during the measured steps
KAGGLE_COMMON = (
    "--train.warmup_steps 10 --run.log_every 10 --eval.every 0 --eval.samples 262144 "
    "--eval.batch_size 65536"
).split()
DCN_BF16 = (
    "--embedding.row_scale 0.1 --train.bf16 true --train.steps 40 --train.warmup_steps 10 "
    "--run.log_every 10 --eval.samples 131072"
)
FULL_RUNS = [
    # the W = 1 baseline of the W = 2 run below
    _run(
        "kaggle_16k_synthetic",
        KAGGLE,
        "synthetic",
        16384,
        [*KAGGLE_COMMON, "--train.steps", "60"],
        45,
    ),
    _run(
        "kaggle_64k_dataset", KAGGLE, "dataset", 65536, [*KAGGLE_COMMON, "--train.steps", "50"], 75
    ),
    _run("dcnv2_64k_bf16", DCN, "synthetic", 65536, DCN_BF16, 90),
]
FULL_SCALING = [
    # 2 ranks sharing the GPU (gloo): per-GPU batch 16384 as kaggle_16k_synthetic; the dense network not
    # compiled (two ranks compiling would not fit the budget): its local dense work errs slow
    _run(
        "kaggle_2x16k",
        KAGGLE,
        "synthetic",
        32768,
        "--train.steps 40 --train.warmup_steps 10 --run.log_every 10 --eval.every 0 --eval.samples 65536 "
        "--eval.batch_size 32768 --model.compile off",
        60,
        nproc=2,
        baseline="kaggle_16k_synthetic",
    ),
]
# more W = 1 shapes: not in the default parts (--parts runs,extra_runs)
EXTRA_RUNS = [
    _run("tiny", TINY, "synthetic", 512, [], 30),
    _run(
        "kaggle_64k_synthetic",
        KAGGLE,
        "synthetic",
        65536,
        [*KAGGLE_COMMON, "--train.steps", "50"],
        60,
    ),
    _run(
        "kaggle_16k_dataset", KAGGLE, "dataset", 16384, [*KAGGLE_COMMON, "--train.steps", "80"], 60
    ),
]

KERNEL_BENCHES = {
    # script: (full estimate s, quick estimate s); gather_pool and sparse_update first: the hot path
    "bench_gather_pool.py": (45, 6),
    "bench_sparse_update.py": (75, 14),
    "bench_unique_partition.py": (30, 4),
    "bench_hash_table.py": (35, 5),
}
# pytest commands: (name, arguments, full estimate s, quick estimate s or None: not in --quick). On a GPU
# the kernel tests run compiled on CUDA (tests/support/kernels.py); the compile check is left out (CI runs
# it without a GPU); on a CPU they run interpreted, minutes: CI's own job.
TESTS = [
    (
        "kernels",
        ["tests/kernels", "--deselect", "tests/kernels/test_kernels_compile.py"],
        120,
        None,
    ),
    ("gpu", ["-m", "gpu", "tests"], 60, 8),
]


def run_specs(quick: bool, group: str) -> list[dict]:
    """The runs of a group ("runs", "scaling", "extra_runs"), a fresh copy."""
    table = {
        "runs": QUICK_RUNS if quick else FULL_RUNS,
        "scaling": QUICK_SCALING if quick else FULL_SCALING,
        "extra_runs": [] if quick else EXTRA_RUNS,
    }
    return copy.deepcopy(table[group])
