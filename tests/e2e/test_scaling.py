"""bench/scaling.py against cases worked out by hand."""

import json

import pytest

from bench.scaling import EXAMPLE, cross_node_busbw, main, project

# 25 ms on the step's path; h2d runs beside it (side stream) and does not count
STAGES = {
    "data_wait": 1.0,
    "h2d": 7.0,
    "input_dist": 2.0,
    "lookup": 3.0,
    "output_dist": 4.0,
    "dense_fwd": 4.0,
    "dense_bwd": 6.0,
    "grad_dist": 1.0,
    "sparse_update": 2.0,
    "dense_optimizer": 2.0,
}


def test_single_gpu_has_no_communication():
    r = project(STAGES, 4e8, 1e8, 1000, 1, alltoall_busbw=1e11, allreduce_busbw=1e11, overlap=False)
    assert r["step_ms"] == 25.0
    assert r["samples_per_s"] == pytest.approx(40_000.0)  # 1000 samples / 25 ms
    assert r["scaling_efficiency"] == 1.0


def test_four_gpus_by_hand():
    # all-to-all: 4e8 B * 3/4 / 1e11 B/s = 3 ms; ring all-reduce: 2 * 3/4 * 1e8 / 1e11 = 1.5 ms
    r = project(STAGES, 4e8, 1e8, 1000, 4, alltoall_busbw=1e11, allreduce_busbw=1e11, overlap=False)
    assert r["alltoall_ms"] == pytest.approx(3.0)
    assert r["allreduce_ms"] == pytest.approx(1.5)
    assert r["step_ms"] == pytest.approx(29.5)  # 25 + 3 + 1.5
    assert r["samples_per_s"] == pytest.approx(4000 / 0.0295)  # 135593.2
    assert r["scaling_efficiency"] == pytest.approx(25 / 29.5)
    assert r["global_batch"] == 4000
    # input_dist 2 + output_dist 4 + grad_dist 1 + all-to-all 3
    assert r["exchange_ms"] == pytest.approx(10.0)

    # overlapped, the 1.5 ms all-reduce hides under the 6 ms dense backward: 25 + 3 = 28 ms
    r = project(STAGES, 4e8, 1e8, 1000, 4, alltoall_busbw=1e11, allreduce_busbw=1e11, overlap=True)
    assert r["step_ms"] == pytest.approx(28.0)
    assert r["samples_per_s"] == pytest.approx(4000 / 0.028)

    # an all-reduce longer than the dense backward is exposed by the excess: 2 * 3/4 * 1e9 / 1e11 = 15 ms
    # -> 25 + (15 - 6) + 3 = 37 ms (the dense forward cannot hide it: no gradients yet)
    r = project(STAGES, 4e8, 1e9, 1000, 4, alltoall_busbw=1e11, allreduce_busbw=1e11, overlap=True)
    assert r["step_ms"] == pytest.approx(37.0)
    assert r["exposed_allreduce_ms"] == pytest.approx(9.0)


def test_cross_node_bandwidth_by_hand():
    # 2 nodes x 8 GPUs: 7/16 of the buffer stays on the node (300 GB/s), 8/16 crosses the NIC (50 GB/s).
    # The NIC part is slower: S * 0.5 / 50e9 s, so busbw = S * 15/16 / (S * 0.5 / 50e9) = 93.75e9.
    a2a, ar = cross_node_busbw(8, 2, 300e9, 400e9, 50e9)
    assert a2a == pytest.approx(93.75e9)
    assert ar == 50e9  # the ring runs at its slowest link
    assert cross_node_busbw(8, 1, 300e9, 400e9, 50e9) == (300e9, 400e9)


def test_missing_stage_is_named():
    with pytest.raises(ValueError, match="dense_optimizer"):
        project(
            {k: v for k, v in STAGES.items() if k != "dense_optimizer"}, 0, 0, 1, 2, 1e9, 1e9, True
        )


def test_measured_summary(tmp_path, capsys):
    summary = {
        "stage_ms": STAGES,
        "exchange_bytes_per_rank": 4e8,
        "allreduce_bytes": 1e8,
        "local_batch": 1000,
        "world_size": 1,
    }
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    main(
        [
            "--measured",
            str(path),
            "--max-nodes",
            "1",
            "--alltoall-busbw",
            "100",
            "--allreduce-busbw",
            "100",
        ]
    )
    out = capsys.readouterr().out
    assert "WARNING" not in out and "400.000 MB" in out
    # 4 GPUs, overlapped all-reduce: 25 + 3 ms (the 4-GPU case above), 4000 samples / 28 ms
    assert [
        line.split()[-3:] for line in out.splitlines() if line.strip().startswith("1     4")
    ] == [["28.00", "142857", "89.3%"]]
    path.write_text(json.dumps({**summary, "world_size": 2}))
    main(["--measured", str(path), "--max-nodes", "1"])
    assert "WARNING: measured at W=2" in capsys.readouterr().out
    path.write_text(json.dumps({**summary, "exchange_bytes_per_rank": 0}))
    main(
        [
            "--measured",
            str(path),
            "--max-nodes",
            "1",
            "--alltoall-busbw",
            "100",
            "--allreduce-busbw",
            "100",
            "--exchange-bytes",
            "4e8",
        ]
    )
    out = capsys.readouterr().out
    assert "WARNING" not in out and [
        line.split()[-3:] for line in out.splitlines() if line.startswith("    1     4")
    ] == [["28.00", "142857", "89.3%"]]
    main(["--measured", str(path), "--max-nodes", "1"])
    assert "WARNING: no all-to-all bytes" in capsys.readouterr().out
    path.write_text(json.dumps({**summary, "stage_ms": {"data": 1.0}}))
    with pytest.raises(ValueError, match=f"{path}: stage_ms lacks .*'lookup'"):
        main(["--measured", str(path)])


def test_report_prints_assumptions(capsys):
    main(["--max-nodes", "2"])
    out = capsys.readouterr().out
    assert "Assumptions" in out and "weak scaling" in out and "400 Gb/s" in out
    assert str(EXAMPLE["local_batch"]) in out
    # 1,2,4,8 GPUs + 2 nodes
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 "))]) == 5
