"""Dynamic tables: exact resume (W = 1, 2), resharding 2 -> 4 -> 1 by key, export (incremental with since_step),
warm starts from a checkpoint or an export (and their errors), a full table stopping train.py, configs/dynamic_tiny.toml
at W = 1 and 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from embedding.dynamic import DynamicTableFull
from tests.support.configs import DYNAMIC_TOML as EQUIV_TOML
from tests.support.dist_utils import run_distributed
from tests.support.paths import ROOT
from tests.support.training import context, dense_state, load_parts, train_with_checkpoints
from training import checkpoint
from training.config import load_config
from training.digest import weights_digest
from training.export import load_export
from training.warm_start import resume_or_warm_start

TOML = (
    EQUIV_TOML.replace("[train]\n", "[run]\nlog_every = 2\n[train]\nwarmup_steps = 1\n").replace(
        "steps = 8", "steps = 6"
    )
    + "[eval]\nsamples = 64\nbatch_size = 32\n"
)
STEPS, SPLIT = 6, 3


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("dyn_ckpt") / "dyn.toml"
    path.write_text(TOML)
    return str(path)


def _entries(emb):
    """Collective: every key each dynamic table holds, live or pending, with its row values and counters, by key."""
    shard = emb.shard_tables()
    parts = emb.exchange.gather_objects({t.name: shard[t.name] for t in emb.tables if t.dynamic})
    out = {}
    for name in parts[0]:
        merged = {k: torch.cat([p[name][k] for p in parts]) for k in parts[0][name]}
        live, pending = torch.argsort(merged["keys"]), torch.argsort(merged["pending_keys"])
        out[name] = {k: v[pending if k.startswith("pending_") else live] for k, v in merged.items()}
    return out


def _run_with_entries(rank, world_size, group, toml, run_dir, steps, extra=()):
    """(losses, digest, full state, dense state, the dynamic tables' entries)."""
    losses, parts = train_with_checkpoints(rank, world_size, group, toml, run_dir, steps, extra)
    return (
        losses,
        weights_digest(parts),
        parts.embeddings.full_state_dict(),
        dense_state(parts),
        _entries(parts.embeddings),
    )


def _resume_case(rank, world_size, group, toml, base):
    straight = _run_with_entries(rank, world_size, group, toml, f"{base}/straight", STEPS)
    first = _run_with_entries(
        rank,
        world_size,
        group,
        toml,
        f"{base}/resumed",
        SPLIT,
        ["--train.checkpoint_every", str(SPLIT)],
    )
    resumed = _run_with_entries(
        rank, world_size, group, toml, f"{base}/resumed", STEPS, ["--train.resume", "auto"]
    )
    return straight, first, resumed


@pytest.fixture(scope="module")
def runs(toml, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("dyn_runs"))
    return {
        "base": base,
        **{w: run_distributed(_resume_case, w, toml, f"{base}/w{w}") for w in (1, 2)},
    }


def _assert_equal_entries(a, b, exact=True):
    for name, state in a.items():
        assert state["keys"].tolist() == b[name]["keys"].tolist() and state["keys"].numel(), name
        assert state["pending_keys"].tolist() == b[name]["pending_keys"].tolist(), name
        for key, value in state.items():
            if exact or not value.is_floating_point():
                assert torch.equal(value, b[name][key]), f"{name} {key}"
            else:
                torch.testing.assert_close(
                    value, b[name][key], rtol=1e-5, atol=1e-5, msg=f"{name} {key}"
                )


@pytest.mark.parametrize("world_size", [1, 2])
def test_exact_resume(runs, world_size):
    straight, first, resumed = runs[world_size]
    assert [straight[0][s] for s in range(SPLIT + 1, STEPS + 1)] == [
        resumed[0][s] for s in range(SPLIT + 1, STEPS + 1)
    ]
    assert resumed[1] == straight[1]  # weights_digest
    # rows, state, freq, last_step, seen, counts, pending keys
    _assert_equal_entries(straight[4], resumed[4])


def _reshard_case(rank, world_size, group, toml, base):
    """Load W=2's step-SPLIT checkpoint at W=4 (digest, entries); then resume from it at W=4 to STEPS."""
    path = f"{base}/w2/resumed/checkpoints/step_{SPLIT}"
    _, parts = load_parts(["--config", toml], rank, world_size, group)
    checkpoint.load(path, parts, context(rank, world_size, group))
    loaded = (weights_digest(parts), _entries(parts.embeddings))
    return loaded, _run_with_entries(
        rank, world_size, group, toml, f"{base}/w4", STEPS, ["--train.resume", path]
    )


def test_resharding_2_to_4_to_1(runs, toml):
    base = runs["base"]
    straight2, first2, _ = runs[2]
    (digest4, entries4), run4 = run_distributed(_reshard_case, 4, toml, base)
    assert digest4 == first2[1]  # the same weights give the same digest at W = 2 and 4
    # every key, pending ones included, moved to its new owner
    _assert_equal_entries(first2[4], entries4)
    # training on at W = 4 admits and evicts what W = 2 did, losses to round-off
    torch.testing.assert_close(
        torch.tensor([run4[0][s] for s in range(SPLIT + 1, STEPS + 1)]),
        torch.tensor([straight2[0][s] for s in range(SPLIT + 1, STEPS + 1)]),
        rtol=1e-5,
        atol=1e-6,
    )
    _assert_equal_entries(straight2[4], run4[4], exact=False)
    # 4 -> 1: W = 4's final checkpoint in one process
    _, parts = load_parts(["--config", toml])
    assert checkpoint.load(f"{base}/w4/checkpoints/step_{STEPS}", parts, context()) == STEPS
    assert weights_digest(parts) == run4[1]
    _assert_equal_entries(run4[4], _entries(parts.embeddings))


# ---- export -------------------------------------------------------------------------------------------------
def test_export_of_live_keys_and_since_step(toml, tmp_path):
    summary = train.main(
        ["--config", toml, "--run.dir", str(tmp_path / "a"), "--export.enabled", "true"]
    )
    full_dir, meta = (
        tmp_path / "a" / "export",
        json.load(open(os.path.join(summary["export"]["path"], "meta.json"))),
    )
    assert (
        meta["step"] == STEPS
        and meta["tables"]["users"]["dynamic"]
        and not meta["tables"]["static"]["dynamic"]
    )
    cfg = load_config(["--config", toml])
    for name in ("users", "items"):
        e = load_export(str(full_dir), name)
        assert summary["export"]["rows"][name] == len(e["keys"]) > 0
        assert (
            e["keys"].dtype == np.int64
            and e["keys"].max() > 2**32
            and np.all(np.diff(e["keys"]) > 0)
        )
        assert e["values"].shape == (len(e["keys"]), cfg.embedding.dim) and (e["freq"] >= 1).all()
        assert (e["last_step"] >= 1).all() and (e["last_step"] <= STEPS).all()
    since = STEPS - 2
    train.main(
        [
            "--config",
            toml,
            "--run.dir",
            str(tmp_path / "b"),
            "--export.enabled",
            "true",
            "--export.since_step",
            str(since),
        ]
    )
    for name in ("users", "items", "static"):
        full, recent = (
            load_export(str(full_dir), name),
            load_export(str(tmp_path / "b/export"), name),
        )
        mask = full["last_step"] > since
        # an incremental export: only rows updated after step `since`
        assert 0 < mask.sum() < len(mask), name
        for key in ("keys", "values", "freq", "last_step"):
            np.testing.assert_array_equal(recent[key], full[key][mask])


# ---- warm start ---------------------------------------------------------------------------------------------
GROWN = (
    TOML
    + """
[[embedding.tables]]
name = "new_dynamic"
num_embeddings = 50
dynamic = true
capacity = 16
key_shards = 4
[[embedding.tables]]
name = "new_static"
num_embeddings = 7
"""
)


@pytest.fixture(scope="module")
def source(toml, tmp_path_factory):
    """A finished run with a checkpoint and an export to start from."""
    run_dir = str(tmp_path_factory.mktemp("source"))
    train.main(
        [
            "--config",
            toml,
            "--run.dir",
            run_dir,
            "--train.checkpoint_every",
            str(STEPS),
            "--export.enabled",
            "true",
        ]
    )
    return run_dir


def _started(config_path, init_from, *extra):
    cfg, parts = load_parts(["--config", config_path, "--train.init_from", init_from, *extra])
    resume_or_warm_start(cfg, parts, context(), checkpoint.Checkpointer(cfg, parts, context()))
    return parts


def test_warm_start_from_a_checkpoint_with_new_tables(source, toml, tmp_path):
    grown = tmp_path / "grown.toml"
    grown.write_text(GROWN)
    _, src = load_parts(["--config", toml])
    checkpoint.load(f"{source}/checkpoints/step_{STEPS}", src, context())
    parts = _started(str(grown), f"{source}/checkpoints/step_{STEPS}")
    emb = parts.embeddings
    # the step counter continues: last_step, eviction, since_step line up
    assert emb.num_updates == STEPS
    _assert_equal_entries(
        _entries(src.embeddings), {k: v for k, v in _entries(emb).items() if k != "new_dynamic"}
    )
    want, got = src.embeddings.full_state_dict(), emb.full_state_dict()
    for name in ("static", "small"):
        assert all(torch.equal(v, got[name][k]) for k, v in want[name].items()), name
    assert got["new_dynamic"]["keys"].numel() == 0  # a new table starts empty ...
    src_bottom = {k: v for k, v in src.model.state_dict().items() if k.startswith("bottom")}
    assert src_bottom and all(
        torch.equal(v, parts.model.state_dict()[k]) for k, v in src_bottom.items()
    )
    # ... and training on admits its keys (new features change the interaction, so the top MLP started fresh)
    summary = train.main(
        [
            "--config",
            str(grown),
            "--run.dir",
            str(tmp_path / "run"),
            "--train.init_from",
            f"{source}/checkpoints/step_{STEPS}",
            "--train.steps",
            "3",
        ]
    )
    assert summary["dynamic"]["new_dynamic"]["live"] > 0 and summary["warm_start"][
        "fresh_tables"
    ] == ["new_dynamic", "new_static"]
    assert any(k.startswith("top") for k in summary["warm_start"]["fresh_dense"])


def test_warm_start_from_an_export(source, toml):
    parts = _started(toml, f"{source}/export")
    emb = parts.embeddings
    assert emb.num_updates == STEPS
    got = emb.full_state_dict()
    for name in ("users", "items", "static"):
        e = load_export(f"{source}/export", name)
        # row ids: the exported rows hold their values, the others their initial ones
        if name == "static":
            rows = torch.from_numpy(e["keys"])
            assert torch.equal(got[name]["weight"][rows], torch.from_numpy(e["values"]))
            continue
        assert got[name]["keys"].tolist() == e["keys"].tolist()
        for key, column in (("weight", "values"), ("freq", "freq"), ("last_step", "last_step")):
            assert torch.equal(got[name][key], torch.from_numpy(e[column])), (name, key)
        if "momentum1" in got[name]:
            assert not got[name]["momentum1"].any()  # an export has no optimizer state


@pytest.mark.parametrize(
    "change, message",
    [
        (
            ("--embedding.dim", "8", "--model.bottom_mlp", "8,8"),
            r"table 'static' has dim 4 there and 8 here",
        ),
        ((), r"table 'static' is static there and dynamic here"),
    ],
)
def test_warm_start_from_an_incompatible_run_names_the_table(source, tmp_path, change, message):
    text = (
        TOML
        if change
        else TOML.replace(
            'name = "static"\nnum_embeddings = 37\n',
            'name = "static"\nnum_embeddings = 37\ndynamic = true\ncapacity = 8\n',
        )
    )
    path = tmp_path / "changed.toml"
    path.write_text(text)
    for init_from in (f"{source}/checkpoints/step_{STEPS}", f"{source}/export"):
        with pytest.raises(ValueError, match=message):
            _started(str(path), init_from, *change)


def test_full_table_stops_training_naming_it(toml, tmp_path):
    capped = tmp_path / "capped.toml"
    capped.write_text(
        open(toml).read().replace("capacity = 8\n", "capacity = 8\nmax_capacity = 8\n", 1)
    )
    with pytest.raises(
        DynamicTableFull,
        match=r"dynamic table 'users' is full on rank 0: max_capacity=8 rows .* hold "
        r"\d+ live keys",
    ):
        train.main(
            [
                "--config",
                str(capped),
                "--run.dir",
                str(tmp_path / "run"),
                "--train.checkpoint_every",
                "1",
            ]
        )
    saved = [s for s, _ in checkpoint.complete_checkpoints(str(tmp_path / "run"))]
    # it stopped at the step that overflowed, after the last good save
    assert saved and max(saved) < STEPS


# ---- configs/dynamic_tiny.toml --------------------------------------------------------------------------------
@pytest.mark.slow
def test_dynamic_tiny_trains_at_one_and_two_ranks(tmp_path):
    args = [
        "--config",
        "configs/dynamic_tiny.toml",
        "--train.steps",
        "60",
        "--eval.samples",
        "2048",
        "--export.enabled",
        "true",
    ]
    one = train.main([*args, "--run.dir", str(tmp_path / "w1")])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "train.py",
        *args,
        "--run.dir",
        str(tmp_path / "w2"),
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.load(open(tmp_path / "w2" / "summary.json"))
    assert two["world_size"] == 2 and two["final_loss"] == pytest.approx(
        one["final_loss"], rel=1e-4
    )
    for name in ("user", "item"):
        counters = {k: v for k, v in two["dynamic"][name].items() if k != "rows_allocated"}
        assert counters == {k: v for k, v in one["dynamic"][name].items() if k != "rows_allocated"}
        keys = load_export(str(tmp_path / "w2" / "export"), name)["keys"]
        assert len(keys) == two["export"]["rows"][name] > 0 and keys.max() > 2**32
    lines = [json.loads(line) for line in open(tmp_path / "w2" / "metrics.jsonl")]
    assert all(line["dynamic"]["user"]["admitted"] >= 0 for line in lines)
    assert sum(line["dynamic"]["item"]["evicted"] for line in lines) > 0
