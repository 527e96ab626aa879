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
    # A reduced part list, to stay under a minute on 2 cores: not the "tests" group (pytest -m gpu over this
    # very suite), nor two of the W = 1 runs (kaggle_256_synthetic and dcnv2_256: the same train.py path as
    # the runs kept, on other shapes; tests/models covers DCN-v2). Every kernel bench and the W = 2 run stay.
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--quick", "--out", str(tmp_path)]
        + ["--parts", "kernels,runs,scaling", "--skip", "runs/kaggle_256_synthetic,runs/dcnv2_256"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    parts = json.load(open(tmp_path / "parts.json"))
    assert [p["name"] for p in parts] == [
        "kernels/bench_gather_pool",
        "kernels/bench_sparse_update",
        "kernels/bench_unique_partition",
        "kernels/bench_hash_table",
        "runs/tiny",
        "runs/kaggle_256_dataset",
        "scaling/tiny_w2",
    ]
    assert all(p["status"] == "done" and p["seconds"] > 0 for p in parts)
    for p in parts:
        assert f"| {p['name']} | {p['estimate_s']:.0f} | {p['seconds']:,.0f} | done |" in report
    for name in ("tiny", "kaggle_256_dataset"):
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
    assert {k["bench"] for k in kernels} == {
        "unique_partition",
        "gather_pool",
        "sparse_update",
        "hash_table",
    }
    # every GB/s says what it counts, and the report says it too
    assert all(k["byte_model"] and k["byte_model"] in report for k in kernels)
    assert all("Zipf 1.05" in k["workload"] for k in kernels if k["bench"] != "hash_table")
    # the W = 2 run on one device, its local work, and the projection from it, labelled
    local = json.load(open(tmp_path / "runs" / "tiny_w2" / "local_work.json"))
    assert local["world_size"] == 2 and local["local_batch"] == 512
    assert "Local work per step, W=2 ranks on one cpu" in report
    section = report[report.index("## W > 1 on one device") :]
    assert section.count("projection, not a measurement") == 2
    assert "| 2 x 8 |" in section and "runs/tiny/summary.json" in section
    assert "Measured copy bandwidth" in report
    assert not list(tmp_path.glob("dataset_*"))  # generated data is removed


def test_parts_beyond_the_budget_are_skipped_with_a_note(tmp_path):
    from bench import gpu_check

    assert gpu_check.main(["--quick", "--out", str(tmp_path), "--budget-s", "12"]) == 0
    parts = json.load(open(tmp_path / "parts.json"))
    assert parts and all(p["status"].startswith("skipped: needs ~") for p in parts)
    report = (tmp_path / "report.md").read_text()
    assert all(f"| {p['name']} | {p['estimate_s']:.0f} | - | skipped" in report for p in parts)


def test_calibrate_takes_a_previous_runs_seconds(tmp_path):
    from bench import gpu_check
    from bench.gpu_check_parts import Part

    (tmp_path / "parts.json").write_text(
        json.dumps(
            [
                {"name": "runs/tiny", "status": "done", "seconds": 10.0},
                {"name": "runs/cut", "status": "cut: killed after 9 s", "seconds": 9.0},
            ]
        )
    )
    parts = [Part(name, "runs", 50, None) for name in ("runs/tiny", "runs/cut", "runs/new")]
    gpu_check.calibrate(parts, str(tmp_path))
    assert [p.estimate_s for p in parts] == pytest.approx([12.0, 50, 50])


def test_a_part_over_its_time_is_cut_and_the_report_keeps_the_others(tmp_path, monkeypatch):
    from bench import gpu_check
    from bench.gpu_check_parts import Part, run_command

    def quick_part(check, timeout):
        check.tests.append({"command": "first", "returncode": 0, "summary": "1 passed"})

    def slow_part(check, timeout):
        run_command([sys.executable, "-c", "import time; time.sleep(60)"], timeout)

    meta = {"device": "d", "date": "t", "commit": "c", "torch": "1", "triton": "2", "host": "h"}
    # no copy-bandwidth probe: the budget below is about the parts alone
    monkeypatch.setattr(
        gpu_check, "machine_meta", lambda *a: {**meta, "copy_bandwidth_gbps": 1.0, "quick": True}
    )
    monkeypatch.setattr(
        gpu_check,
        "plan",
        lambda check, groups: [
            Part("tests/first", "tests", 0, quick_part),
            Part("tests/slow", "tests", 0, slow_part),
            Part("tests/late", "tests", 5, quick_part),
        ],
    )
    budget = gpu_check.MARGIN_S + 3
    assert gpu_check.main(["--quick", "--out", str(tmp_path), "--budget-s", str(budget)]) == 1
    parts = {p["name"]: p for p in json.load(open(tmp_path / "parts.json"))}
    assert parts["tests/first"]["status"] == "done"
    assert parts["tests/slow"]["status"].startswith("cut: killed after")
    assert parts["tests/slow"]["seconds"] < 10
    assert parts["tests/late"]["status"].startswith("skipped")
    report = (tmp_path / "report.md").read_text()
    assert "| `first` | 1 passed (exit 0) |" in report and "| tests/slow |" in report


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
