"""Per-stage step timing: StageTimer nesting and where the embedding collection's stages start and stop."""

import time

import pytest
import torch

import embedding.sharded
from embedding import EmbeddingCollection, SparseOptimizer
from pipeline.batch import KeyedJagged
from tests.support.small_tables import BATCHES, TABLES
from training.stages import EXCHANGE_STAGES, STAGES, StageTimer


def test_nested_stage_reported_without_its_inner_stages():
    timer = StageTimer(torch.device("cpu"))
    timer.add("dense_bwd", 10.0)  # measured around grad_dist and sparse_update
    timer.add("grad_dist", 3.0)
    timer.add("sparse_update", 2.0)
    timer.add("dense_fwd", 4.0)
    assert timer.collect() == {
        "dense_bwd": 5.0,
        "grad_dist": 3.0,
        "sparse_update": 2.0,
        "dense_fwd": 4.0,
    }
    assert timer.collect() == {}  # collect resets
    assert set(EXCHANGE_STAGES) < set(STAGES)


def _slowed(fn, seconds):
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)

    return slow


# per path: the kernel slowed -> (stage it must land in, seconds)
DELAYS = {
    "exchange": {
        "unique_partition": ("input_dist", 0.05),
        "lookup": ("lookup", 0.10),
        "gather_pool": ("output_dist", 0.15),
        "pool_backward": ("grad_dist", 0.20),
        "merge_update": ("sparse_update", 0.25),
    },
    "single_rank": {
        "gather_pool": ("output_dist", 0.15),
        "pool_backward_update": ("sparse_update", 0.25),
    },
}


@pytest.mark.parametrize("path", list(DELAYS))
def test_collection_attributes_each_phase_to_its_stage(monkeypatch, path):
    # each phase's kernel made slower by its own amount: the time must show up in that phase's stage only
    delays = DELAYS[path]
    for kernel, (_, seconds) in delays.items():
        monkeypatch.setattr(
            embedding.sharded, kernel, _slowed(getattr(embedding.sharded, kernel), seconds)
        )
    exchange = path == "exchange"  # the exchange path also runs on one rank
    ec = EmbeddingCollection(
        TABLES, SparseOptimizer("adagrad", 0.1), seed=1, always_exchange=exchange
    )
    untimed = EmbeddingCollection(
        TABLES, SparseOptimizer("adagrad", 0.1), seed=1, always_exchange=exchange
    )
    timer = StageTimer(torch.device("cpu"))
    ec.timer = timer
    kjt = KeyedJagged.from_lists(BATCHES[0])

    with torch.no_grad():
        ec(kjt)  # evaluation is not timed
    assert timer.collect() == {}

    sd = ec.input_dist(kjt)  # as the train pipeline calls it, a batch ahead
    pooled = ec(sd)
    with timer.stage("dense_bwd"):
        pooled.sum().backward()
    stages = timer.collect()
    expected = {"input_dist", "lookup", "output_dist", "sparse_update", "dense_bwd"}
    assert set(stages) == (expected | {"grad_dist"} if path == "exchange" else expected)
    expected_ms = {stage: 1e3 * seconds for stage, seconds in delays.values()}
    # the lower bounds catch time moved to another stage (its stage then lacks its delay); the upper
    # margin only bounds the phase's own work, and is wide for a loaded 2-core machine
    for stage, ms in expected_ms.items():
        assert ms <= stages[stage] < ms + 120, (stage, stages)
    slowed = {stage for stage, _ in delays.values()}
    assert all(ms < 120 for stage, ms in stages.items() if stage not in slowed), stages
    untimed(kjt).sum().backward()
    assert torch.equal(ec.weight, untimed.weight)  # timing changes nothing


@pytest.mark.parametrize("pipelined", [True, False])
def test_train_run_records_every_stage(tmp_path, pipelined):
    import json

    import train

    summary = train.main(
        [
            "--config",
            "configs/tiny.toml",
            "--run.dir",
            str(tmp_path),
            "--train.steps",
            "12",
            "--train.warmup_steps",
            "3",
            "--run.log_every",
            "5",
            "--eval.samples",
            "512",
            # wall-clock stages
            "--train.pipelined",
            str(pipelined).lower(),
            "--run.device",
            "cpu",
        ]
    )
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    for stage_ms, step_ms in [(line["stage_ms"], line["step_ms"]) for line in lines] + [
        (summary["stage_ms"], 1e3 * summary["global_batch_size"] / summary["samples_per_sec"])
    ]:
        assert list(stage_ms) == list(STAGES)
        assert all(stage_ms[k] > 0 for k in STAGES if k not in ("data_wait", "h2d", "grad_dist")), (
            stage_ms
        )
        assert stage_ms["h2d"] == 0.0  # no copy on CPU
        # one rank: the pooling backward is fused into sparse_update
        assert stage_ms["grad_dist"] == 0.0
        # the stages do not overlap: together at most the step (wall clock on CPU; how much of the step they
        # cover depends on the machine's load, see bench/results/e2e_cpu/report.md for a measurement)
        assert sum(stage_ms.values()) <= step_ms, (stage_ms, step_ms)
    assert lines[-1]["data_wait_pct"] == pytest.approx(
        100 * lines[-1]["stage_ms"]["data_wait"] / lines[-1]["step_ms"]
    )
