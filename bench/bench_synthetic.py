"""Microbenchmark: time to make one synthetic batch (pipeline/synthetic.py) for a config's tables.

    python bench/bench_synthetic.py                                   # DCN-v2 shape, batch 8192, CPU
    python bench/bench_synthetic.py --batch 65536 --impl reference    # the pre-device host generator
    python bench/bench_synthetic.py --config configs/dlrm_criteo_kaggle.toml --device cuda --batch 65536

``--impl device`` is SyntheticData on ``--device``; ``--impl reference`` is the frozen
original host generator (tests/support/synthetic_reference.py, CPU only), the "before" of the change.
Reports median / p20 / p80 wall ms per batch (CPU: perf_counter after a warm-up call; CUDA:
triton.testing.do_bench), samples/s and, on CPU, the median process CPU time per batch; ``--record`` appends the row to
bench/results/synthetic.jsonl with device, date and commit.
"""

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench._common import bench, device_name, git_commit  # noqa: E402
from training import jsonio  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import SyntheticSource  # noqa: E402
from training.distributed import DistContext  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "synthetic.jsonl"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dcnv2_criteo_1tb.toml")
    parser.add_argument(
        "--batch", type=int, default=8192, help="samples per batch (one rank's local batch)"
    )
    parser.add_argument("--impl", choices=["device", "reference"], default="device")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=5, help="CPU repetitions")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--record", action="store_true", help="append the result to bench/results/synthetic.jsonl"
    )
    return parser


def _source(parser: argparse.ArgumentParser, args, device: torch.device):
    """The batch generator under test: SyntheticData on device, or the reference host generator."""
    cfg = load_config(["--config", args.config])
    source = SyntheticSource(cfg, DistContext(device=device)).generator
    if args.impl == "reference":
        from tests.support.synthetic_reference import ReferenceSyntheticData

        if device.type != "cpu":
            parser.error("--impl reference runs on the host only (--device cpu)")
        source = ReferenceSyntheticData(
            source.features, source.num_dense, source.zipf_exponent, source.signal, source.seed
        )
    return source


def _measure(source, args, device: torch.device) -> dict:
    """Times one batch of source; the result row (what --record appends)."""
    steps = iter(range(1 << 40))
    cpu_ms = []

    def make():
        step = next(steps)  # a fresh slice each call, as in training
        started = time.process_time()
        source.batch(step * args.batch, args.batch)
        cpu_ms.append((time.process_time() - started) * 1e3)

    median, p20, p80 = bench(make, device, args.reps)
    # on a shared CPU, process time (all threads) is less disturbed by other processes than wall time
    cpu_median = statistics.median(cpu_ms[1:]) if device.type == "cpu" else None
    ids = source.batch(0, args.batch).sparse.values.numel()
    return {
        "bench": "synthetic",
        "impl": args.impl,
        "config": args.config,
        "batch": args.batch,
        "ids_per_batch": ids,
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "ms_median": median,
        "ms_p20": p20,
        "ms_p80": p80,
        "samples_per_s": args.batch / (median * 1e-3),
        # other processes on a shared machine
        "cpu_ms_median": cpu_median,
        "load_avg_1m": os.getloadavg()[0],
    }


def _report(row: dict, record: bool) -> None:
    cpu_median = row["cpu_ms_median"]
    print(
        f"synthetic [{row['impl']}] {row['config']} batch {row['batch']} ({row['ids_per_batch']} ids) "
        f"on {row['device']}, {row['threads']} threads: {row['ms_median']:.1f} ms "
        f"(p20 {row['ms_p20']:.1f}, p80 {row['ms_p80']:.1f}), {row['samples_per_s']:,.0f} samples/s"
        + (f", process CPU time {cpu_median:.1f} ms" if cpu_median is not None else "")
        + f" (load average {row['load_avg_1m']:.1f})"
    )
    if record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(jsonio.dumps(row) + "\n")


def main():
    parser = _parser()
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    _report(_measure(_source(parser, args, device), args, device), args.record)


if __name__ == "__main__":
    main()
