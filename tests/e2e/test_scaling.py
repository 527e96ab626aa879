"""bench/scaling.py against cases worked out by hand, and fed by a real W = 2 gloo run (bench/local_work.py)."""

import json
import subprocess
import sys

import pytest

from bench import local_work, scaling
from tests.support.paths import ROOT
from training.stages import STAGES

# 10 ms on the step's path; h2d runs beside it (side stream) and does not count
LOCAL = {
    "data_wait": 0.5,
    "h2d": 7.0,
    "input_dist": 1.0,
    "lookup": 1.0,
    "output_dist": 1.0,
    "dense_fwd": 2.0,
    "dense_bwd": 2.0,
    "grad_dist": 1.0,
    "sparse_update": 1.0,
    "dense_optimizer": 0.5,
}
LINKS = {
    "nvlink_busbw": 100e9,
    "nic_bw": 10e9,
    "nvlink_latency": 10e-6,
    "nic_latency": 20e-6,
    "gpus_per_node": 8,
}


def _local_work(tmp_path, **overrides) -> str:
    """A bench/local_work.py result measured at W = 2: 5 all-to-alls (input_dist's 1.9 calls per step
    round up to 2), 1 MB of replicated-table all-reduce, 40 MB of dense gradients in 2 buckets."""
    result = {
        "world_size": 2,
        "local_batch": 1000,
        "exchange_bytes_per_rank": 6e6,  # 5 MB of all-to-all off-rank + the 1 MB all-reduce
        "allreduce_bytes": 4e7,
        "device": "cpu",
        "dense_compiled": "off",
        "device_lock": True,
        "measured_steps": 30,
        "local_stage_ms": LOCAL,
        "collectives": {
            "input_dist/all_to_all_single": {"calls": 1.9, "bytes": 1e5},
            "output_dist/all_to_all_single": {"calls": 1.0, "bytes": 5e6},
            "grad_dist/all_to_all_single": {"calls": 2.0, "bytes": 5e6},
            "grad_dist/all_reduce": {"calls": 1.0, "bytes": 1e6},
            "dense_bwd/ddp_allreduce": {"calls": 2.0, "bytes": 4e7},
            "dense_fwd/ddp_pre_forward": {"calls": 1.0, "bytes": 0.0},
            "outside_stages/all_reduce": {"calls": 0.1, "bytes": 4.0},
        },
        **overrides,
    }
    (tmp_path / "local_work.json").write_text(json.dumps(result))
    return str(tmp_path)


def test_inputs_from_a_measured_run(tmp_path):
    inputs = scaling.inputs_from_run(_local_work(tmp_path))
    assert inputs["alltoall_calls"] == 5 and inputs["replicated_calls"] == 1
    assert inputs["alltoall_offrank_bytes"] == 5e6 and inputs["replicated_bytes"] == 1e6
    assert inputs["allreduce_calls"] == 2 and inputs["measured_world"] == 2
    with pytest.raises(ValueError, match="W=1"):
        scaling.inputs_from_run(_local_work(tmp_path, world_size=1))


def test_one_node_by_hand(tmp_path):
    inputs = scaling.inputs_from_run(_local_work(tmp_path))
    r = scaling.project(inputs, 1, 4, LINKS)
    # send buffer 5e6 * 2/1 = 1e7 B; 3/4 of it crosses NVLink: 5 x 10 us + 1e7 * 0.75 / 1e11 s = 0.125 ms
    assert r["alltoall_ms"] == pytest.approx(0.125)
    # ring all-reduces: 10 us + 2 * 0.75 * 1e6 / 1e11 s = 0.025 ms; 2 x 10 us + 1.5 * 4e7 / 1e11 s = 0.62 ms
    assert r["replicated_allreduce_ms"] == pytest.approx(0.025)
    assert r["dense_allreduce_ms"] == pytest.approx(0.62)
    assert r["local_ms"] == pytest.approx(10.0)
    assert r["step_ms"] == pytest.approx(10.77)
    assert r["samples_per_s"] == pytest.approx(4000 / 10.77e-3)
    # half the 2 ms dense backward hides the whole 0.62 ms all-reduce
    r = scaling.project(inputs, 1, 4, LINKS, overlap=0.5)
    assert r["exposed_allreduce_ms"] == 0.0 and r["step_ms"] == pytest.approx(10.15)
    # at the measured W the send buffer is the measured one: 1e7 * 0.5 / 1e11 s + 50 us
    assert scaling.project(inputs, 1, 2, LINKS)["alltoall_ms"] == pytest.approx(0.1)


def test_two_nodes_by_hand(tmp_path):
    inputs = scaling.inputs_from_run(_local_work(tmp_path))
    r = scaling.project(inputs, 2, 8, LINKS)
    # 7/16 of the buffer over NVLink, 8/16 over the NIC, at once: 1e7 * max(7/16/1e11, 0.5/1e10) s = 0.5 ms
    assert r["alltoall_ms"] == pytest.approx(5 * 0.02 + 0.5)
    # the rings run at the NIC: 20 us + 2 * 15/16 * 1e6 / 1e10 s; 2 x 20 us + 2 * 15/16 * 4e7 / 1e10 s
    assert r["replicated_allreduce_ms"] == pytest.approx(0.2075)
    assert r["dense_allreduce_ms"] == pytest.approx(7.54)
    assert r["step_ms"] == pytest.approx(18.3475)
    assert r["samples_per_s_per_gpu"] == pytest.approx(1000 / 18.3475e-3)


def test_report_is_labelled_with_its_inputs(tmp_path):
    run = _local_work(tmp_path)
    baseline = tmp_path / "w1.json"
    baseline.write_text(
        json.dumps(
            {"world_size": 1, "local_batch": 1000, "samples_per_sec": 50000.0, "device": "x"}
        )
    )
    text = scaling.projection_report(run, LINKS, 0.0, str(baseline))
    assert text.count(scaling.LABEL) == 2  # the inputs and the table
    rows = [line for line in text.splitlines() if line.startswith("| ") and "GPUs" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["2", "4", "8", "2 x 8"]
    four = next(row for row in rows if row.startswith("| 4 |")).split("|")
    assert four[6].strip() == "10.770" and four[9].strip() == f"{1000 / 10.77e-3 / 50000:.1%}"
    assert "5.000 MB off-rank" in text and "NVLink busbw 100 GB/s" in text
    with pytest.raises(ValueError, match="per-GPU batch 1000"):
        baseline.write_text(
            json.dumps({"world_size": 1, "local_batch": 512, "samples_per_sec": 1.0})
        )
        scaling.projection_report(run, LINKS, 0.0, str(baseline))


def test_command_line_defaults_are_the_cited_ones():
    out = subprocess.run(
        [sys.executable, "bench/scaling.py", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0 and "projection, not a measurement" in out.stdout
    assert "https://github.com/NVIDIA/nccl-tests/issues/212" in out.stdout
    links = scaling.links_from(scaling.parse_args(["--run", "x"]))
    assert links == pytest.approx(scaling.LINK_DEFAULTS)
    assert links["nvlink_busbw"] == 370e9 and links["nic_bw"] == pytest.approx(46e9)


TINY = "--config configs/tiny.toml --train.steps 30 --train.warmup_steps 10 --run.log_every 10 --eval.samples 1024"


@pytest.mark.slow
def test_projection_from_a_real_two_rank_run(tmp_path):
    result = local_work.run(str(tmp_path / "probe"), 2, TINY.split())
    assert result["world_size"] == 2 and result["measured_steps"] == 20 and result["device_lock"]
    for rank in result["ranks"]:
        for s in STAGES:
            assert 0.0 <= rank["local_stage_ms"][s] <= rank["stage_ms"][s]
        # the exchange stages wait in collectives; the update and the dense optimizer never do
        assert all(rank["comm_ms"][s] > 0 for s in ("input_dist", "output_dist", "grad_dist"))
        assert "sparse_update" not in rank["comm_ms"] and "dense_optimizer" not in rank["comm_ms"]
    inputs = scaling.inputs_from_run(str(tmp_path / "probe"))
    # counts, keys, rows, gradients with their lookup counts (one message); replicated tables (category,
    # device, hour: 274 rows of dim 16 + a count) all-reduced in float32, as embedding/byte_model.py counts them
    assert inputs["alltoall_calls"] == 4 and inputs["replicated_bytes"] == 4 * 17 * 274
    assert inputs["alltoall_offrank_bytes"] == result["exchange_bytes_per_rank"] - 4 * 17 * 274
    text = scaling.projection_report(str(tmp_path / "probe"), scaling.LINK_DEFAULTS)
    assert "W=2 ranks on one cpu" in text and text.count("| 2 x 8 |") == 1

    # the probe measures the training it is given: the same weights as a plain W = 2 run
    plain = tmp_path / "plain"
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["train.py", *TINY.split(), "--run.dir", str(plain)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    digest = json.load(open(plain / "summary.json"))["weights_digest"]
    assert json.load(open(tmp_path / "probe" / "summary.json"))["weights_digest"] == digest
