"""Checkpoints: exact resume (W=1, 2), resharding (2->4, 4->1), crash-safe saves, torchrun kill/restart,
bad-input errors, lookup statistics and the embedding export."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
import training.loop
from pipeline.batch import Batch, KeyedJagged
from pipeline.checks import check_batch, checked_batches, sample_index
from tests.support.configs import CHECKPOINT_TOML
from tests.support.dist_utils import run_distributed
from tests.support.paths import ROOT
from tests.support.training import (
    build_parts,
    context,
    dense_state,
    host_batches,
    load_parts,
    train_with_checkpoints,
)
from training import checkpoint
from training.checkpoint_files import CheckpointError
from training.config import load_config
from training.digest import weights_digest
from training.distributed import explain_timeouts
from training.export import load_export
from training.guards import NonFiniteLoss

STEPS, SPLIT = 6, 3


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "small.toml"
    path.write_text(CHECKPOINT_TOML)
    return str(path)


def _run(rank, world_size, group, toml, run_dir, steps, extra=()):
    """({step: global loss}, digest, full state, dense state)."""
    losses, parts = train_with_checkpoints(rank, world_size, group, toml, run_dir, steps, extra)
    return losses, weights_digest(parts), parts.embeddings.full_state_dict(), dense_state(parts)


def _resume_case(rank, world_size, group, toml, base):
    """Uninterrupted run, then the same run stopped at SPLIT and resumed with auto."""
    straight = _run(rank, world_size, group, toml, f"{base}/straight", STEPS)
    first = _run(
        rank,
        world_size,
        group,
        toml,
        f"{base}/resumed",
        SPLIT,
        ["--train.checkpoint_every", str(SPLIT)],
    )
    resumed = _run(
        rank, world_size, group, toml, f"{base}/resumed", STEPS, ["--train.resume", "auto"]
    )
    return straight, first, resumed


def _load_only(rank, world_size, group, toml, path):
    _, parts = load_parts(["--config", toml], rank, world_size, group)
    step = checkpoint.load(path, parts, context(rank, world_size, group))
    plan = {n: p.placement for n, p in parts.plan.placements.items()}
    return (
        step,
        parts.embeddings.full_state_dict(),
        dense_state(parts),
        plan,
        parts.embeddings.num_updates,
    )


@pytest.fixture(scope="module")
def runs(toml, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("runs"))
    out = {w: run_distributed(_resume_case, w, toml, f"{base}/w{w}") for w in (1, 2)}
    out["base"] = base
    return out


def _assert_same_state(a, b):
    for name, state in a.items():
        for key, value in state.items():
            assert torch.equal(value, b[name][key]), f"table {name} {key}"


@pytest.mark.parametrize("world_size", [1, 2])
def test_exact_resume(runs, world_size):
    straight, first, resumed = runs[world_size]
    assert sorted(first[0]) == list(range(1, SPLIT + 1)) and sorted(resumed[0]) == list(
        range(SPLIT + 1, STEPS + 1)
    )
    assert [straight[0][s] for s in range(SPLIT + 1, STEPS + 1)] == [
        resumed[0][s] for s in range(SPLIT + 1, STEPS + 1)
    ]
    assert resumed[1] == straight[1]  # weights_digest
    _assert_same_state(straight[2], resumed[2])  # weights, optimizer state, freq, last_step


def test_lookup_statistics_are_sharding_consistent(runs, toml):
    full1, full2 = runs[1][0][2], runs[2][0][2]
    cfg, parts = load_parts(["--config", toml])
    expected = {t.name: torch.zeros(t.num_embeddings, dtype=torch.int64) for t in parts.tables}
    feature_table = {f: t.name for t in parts.tables for f in t.features}
    for batch in host_batches(cfg, steps=STEPS):
        kjt = batch.sparse
        for f, key in enumerate(kjt.keys):
            lo, hi = (
                int(kjt.offsets[f * kjt.batch_size]),
                int(kjt.offsets[(f + 1) * kjt.batch_size]),
            )
            expected[feature_table[key]] += torch.bincount(
                kjt.values[lo:hi], minlength=len(expected[feature_table[key]])
            )
    for name, counts in expected.items():
        assert torch.equal(full1[name]["freq"], counts), name
        assert torch.equal(full2[name]["freq"], counts), name
        assert torch.equal(full1[name]["last_step"], full2[name]["last_step"])
        assert int(full1[name]["last_step"].max()) == STEPS


def test_resharding_2_to_4_to_1(runs, toml):
    base = runs["base"]
    _, first2, _ = runs[2]  # W=2 state after SPLIT steps, saved at step SPLIT
    path2 = f"{base}/w2/resumed/checkpoints/step_{SPLIT}"
    step, full4, dense4, plan4, updates = run_distributed(_load_only, 4, toml, path2)
    assert step == SPLIT and updates == SPLIT
    assert plan4["big"] == "row" and plan4["pinned"] == "row"  # table-wise on one rank at W=2
    _assert_same_state(first2[2], full4)
    for k, v in first2[3].items():
        assert torch.equal(v, dense4[k]), k
    # 4 -> 1: a checkpoint written at W=4 (different plan, 4 shard files) loads in one process
    run4 = f"{base}/w4"
    losses4 = run_distributed(_run, 4, toml, run4, SPLIT, ["--train.checkpoint_every", str(SPLIT)])
    manifest = json.load(open(f"{run4}/checkpoints/step_{SPLIT}/manifest.json"))
    assert (
        manifest["world_size"] == 4
        and len([f for f in manifest["files"] if f.startswith("shard_")]) == 4
    )
    step, full1, dense1, _, _ = _load_only(0, 1, None, toml, f"{run4}/checkpoints/step_{SPLIT}")
    _assert_same_state(losses4[2], full1)
    for k, v in losses4[3].items():
        assert torch.equal(v, dense1[k]), k


def test_crash_during_save_keeps_previous_checkpoint(toml, tmp_path, monkeypatch):
    real_write = checkpoint.files.write_hashed

    def failing_write(path, write):
        if "step_4" in path and path.endswith("dense.pt"):
            real_write(path, lambda f: f.write(b"half a file"))
            raise OSError("disk full (injected)")
        return real_write(path, write)

    monkeypatch.setattr(checkpoint.files, "write_hashed", failing_write)
    with pytest.raises(OSError, match="injected"):
        _run(
            0,
            1,
            None,
            toml,
            str(tmp_path),
            4,
            ["--train.checkpoint_every", "2", "--train.keep_checkpoints", "1"],
        )
    monkeypatch.setattr(checkpoint.files, "write_hashed", real_write)
    assert [s for s, _ in checkpoint.complete_checkpoints(str(tmp_path))] == [2]
    # the half checkpoint is not a checkpoint
    assert os.path.isdir(tmp_path / "checkpoints" / ".tmp_step_4")
    losses, *_ = _run(0, 1, None, toml, str(tmp_path), 4, ["--train.resume", "auto"])
    assert sorted(losses) == [3, 4]


def test_keep_last_k(toml, tmp_path):
    _run(
        0,
        1,
        None,
        toml,
        str(tmp_path),
        6,
        ["--train.checkpoint_every", "1", "--train.keep_checkpoints", "2"],
    )
    assert [s for s, _ in checkpoint.complete_checkpoints(str(tmp_path))] == [5, 6]
    cfg, parts = load_parts(["--config", toml, "--train.resume", str(tmp_path)])
    with pytest.raises(
        CheckpointError, match="manifest.json is missing: not a complete checkpoint"
    ):
        checkpoint.choose_checkpoint(cfg, parts, context())


@pytest.mark.slow
def test_torchrun_killed_rank_restarts_with_same_digest(toml, tmp_path, runs):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=1",
        "train.py",
        "--config",
        toml,
        "--run.dir",
        str(tmp_path),
        "--train.checkpoint_every",
        "2",
        "--train.fail_at_step",
        "3",
        "--train.fail_rank",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "injected failure at step 3" in proc.stdout + proc.stderr
    assert "resumed from" in proc.stdout and "step_2" in proc.stdout
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["steps"] == STEPS
    assert summary["weights_digest"] == runs[2][0][1]  # the uninterrupted W=2 run


# ---- bad input ------------------------------------------------------------------------------------------
def _batch(dense=None, labels=None):
    kjt = KeyedJagged.from_lists({"a": [[1], [2]]})
    return Batch(
        torch.zeros(2, 3) if dense is None else dense,
        torch.zeros(2) if labels is None else labels,
        kjt,
    )


def test_bad_dense_and_labels_are_named():
    dense = torch.zeros(2, 3)
    dense[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"step 5: dense feature 2 of sample 33 is nan"):
        check_batch(_batch(dense=dense), "step 5", sample_index(32))
    dense[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"dense feature 2 of sample 33 is inf"):
        check_batch(_batch(dense=dense), "step 5", sample_index(32))
    with pytest.raises(ValueError, match=r"label of sample 0 is 1.5, expected a value in \[0, 1\]"):
        check_batch(_batch(labels=torch.tensor([1.5, 0.0])), "step 1", sample_index(0))
    with pytest.raises(ValueError, match=r"label of sample 1 is nan"):
        check_batch(_batch(labels=torch.tensor([1.0, float("nan")])), "step 1", sample_index(0))
    # synthetic batches go through the check with their global sample index (rank 1 of 2, global batch 8)
    batches = [_batch(), _batch(labels=torch.tensor([0.0, -1.0]))]
    with pytest.raises(ValueError, match=r"^step 4: label of sample 29 is -1.0"):
        list(checked_batches(batches, 8, 1, 2, first_step=2))


def test_missing_feature_out_of_range_and_memory(toml):
    cfg, parts = load_parts(["--config", toml])
    good = next(parts.data.generator.local_batches(4, 0, 1, 1)).sparse
    f = good.keys.index("shared_a")
    n = good.batch_size
    lo, hi = int(good.offsets[f * n]), int(good.offsets[(f + 1) * n])
    keys = [k for k in good.keys if k != "shared_a"]
    values = torch.cat([good.values[:lo], good.values[hi:]])
    lengths = torch.cat([good.lengths()[: f * n], good.lengths()[(f + 1) * n :]])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    with pytest.raises(ValueError, match=r"missing feature\(s\) \['shared_a'\]"):
        parts.embeddings.input_dist(KeyedJagged(values, offsets, keys))
    bad = KeyedJagged(good.values.clone(), good.offsets, good.keys)
    bad.values[0] = 10**6
    with pytest.raises(
        ValueError,
        match=r"feature 'big' \(table 'big', 37 rows\): sample \d+ has id 1000000 outside \[0, 37\)",
    ):
        parts.embeddings.input_dist(bad)
    with pytest.raises(Exception, match="(?i)memory|budget|fit"):
        build_parts(load_config(["--config", toml, "--embedding.memory_budget_bytes", "100"]))


def test_nonfinite_loss_stops_naming_step_and_checkpoint(toml, tmp_path, monkeypatch):
    real_step = training.loop.train_step
    calls = []

    def nan_at_3(*args):
        loss = real_step(*args)
        calls.append(1)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(training.loop, "train_step", nan_at_3)
    with pytest.raises(
        NonFiniteLoss, match=r"step 3; training stopped, last good checkpoint: .*step_2"
    ):
        train.main(["--config", toml, "--run.dir", str(tmp_path), "--train.checkpoint_every", "2"])
    assert [s for s, _ in checkpoint.complete_checkpoints(str(tmp_path))] == [2]


def test_timeout_message_names_config_key(toml):
    cfg = load_config(["--config", toml, "--train.timeout_s", "2"])
    with pytest.raises(RuntimeError, match=r"train.timeout_s=2 s"):
        with explain_timeouts(cfg):
            raise RuntimeError("[gloo] Timed out waiting 2000ms for recv operation to complete")


# ---- export ---------------------------------------------------------------------------------------------
def test_export_round_trip_and_min_freq(toml, tmp_path):
    summary = train.main(
        ["--config", toml, "--run.dir", str(tmp_path / "a"), "--export.enabled", "true"]
    )
    out = tmp_path / "a" / "export"
    ckpt_free = summary["export"]["rows"]
    cfg = load_config(["--config", toml])
    for name, rows in ckpt_free.items():
        e = load_export(str(out), name)
        assert e["keys"].shape == (rows,) and e["values"].shape == (rows, cfg.embedding.dim)
        assert e["keys"].dtype == np.int64 and e["values"].dtype == np.float32
        assert (
            (e["freq"] >= 1).all()
            and (e["last_step"] >= 1).all()
            and (e["last_step"] <= STEPS).all()
        )
        assert np.all(np.diff(e["keys"]) > 0)
    summary = train.main(
        [
            "--config",
            toml,
            "--run.dir",
            str(tmp_path / "b"),
            "--export.enabled",
            "true",
            "--export.min_freq",
            "3",
        ]
    )
    assert (
        summary["weights_digest"]
        == json.load(open(tmp_path / "a" / "summary.json"))["weights_digest"]
    )
    for name in ckpt_free:
        full, kept = load_export(str(out), name), load_export(str(tmp_path / "b" / "export"), name)
        mask = full["freq"] >= 3
        assert mask.sum() < len(mask) or name == "small"
        for key in ("keys", "values", "freq", "last_step"):
            np.testing.assert_array_equal(kept[key], full[key][mask])
