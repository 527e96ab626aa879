"""bench/gpu_check.py --quick: the one-command GPU measurement, run on tiny shapes on the CPU."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.dataset import BinaryDataset
from pipeline.dataset_format import write_dataset
from tests.support.paths import ROOT
from training.stages import STAGES


def test_write_dataset_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.random((50, 3), dtype=np.float32)
    sparse = rng.integers(0, 7, size=(50, 2)).astype(np.int32)
    labels = (rng.random(50) < 0.5).astype(np.float32)
    write_dataset(tmp_path / "d", dense, sparse, labels, ["a", "b"], [7, 9])
    ds = BinaryDataset(tmp_path / "d", verify_checksums=True)
    assert ds.feature_names == ["a", "b"] and ds.table_rows == [7, 9] and ds.num_rows == 50
    got_dense, got_sparse, got_labels = ds.read_arrays([(0, 50)])
    assert (
        np.array_equal(got_dense, dense)
        and np.array_equal(got_sparse, sparse)
        and np.array_equal(got_labels, labels)
    )
    assert not list(tmp_path.glob(".*partial"))
    with pytest.raises(ValueError, match="outside"):
        write_dataset(tmp_path / "bad", dense, sparse, labels, ["a", "b"], [7, 5])
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_quick_gpu_check_writes_the_report(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    for name in ("tiny", "kaggle_256_synthetic", "kaggle_256_dataset", "dcnv2_256"):
        summary = json.load(open(tmp_path / "runs" / name / "summary.json"))
        assert (
            summary["samples_per_sec"] > 0
            and (tmp_path / "runs" / name / "metrics.jsonl").stat().st_size > 0
        )
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        assert f"{summary['samples_per_sec']:,.0f}" in row
        # on a CPU the profile predicts syncs (tests/training/test_host_syncs.py); runtime counts come from CUDA only
        assert summary["device"] == "cpu" and "syncs_per_step" not in summary["profile"]
        assert summary["profile"]["predicted_syncs_per_step"] >= 1
    assert "| run | " + " | ".join(STAGES) + " |" in report
    kernels = [json.loads(line) for line in open(tmp_path / "kernels.jsonl")]
    assert {k["bench"] for k in kernels} >= {
        "unique_partition",
        "gather_pool",
        "sparse_update",
        "hash_table",
    }
    assert "Measured copy bandwidth" in report and "## Tests" in report
    assert not list(tmp_path.glob("dataset_*"))  # generated data is removed


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_step_profiler_counts_syncs_and_launches():
    import torch

    from training.profiling import StepProfiler

    x = torch.ones(1000, device="cuda")
    profiler = StepProfiler(torch.device("cuda"), first_step=2, steps=3)
    for step in range(1, 6):
        profiler.before_step(step)
        y = x * 2 + 1  # two kernels
        float(y.sum())  # a third kernel and one sync
        profiler.after_step(step)
    assert profiler.result["steps"] == 3
    assert profiler.result["syncs_per_step"] == 1.0
    assert profiler.result["launches_per_step"] == 3.0
