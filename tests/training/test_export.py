"""Exports are atomic and verified: a crash mid re-export leaves the previous export whole and current (warm
starts use it), re-exports keep the previous one, and a corrupt, missing or mismatched file is named."""

import json
import os
import shutil

import numpy as np
import pytest

import train
from tests.support.configs import CHECKPOINT_TOML
from tests.support.training import context, load_parts
from training import checkpoint
from training.export import KEEP_EXPORTS, LATEST, ExportError, export_embeddings, load_export
from training.warm_start import resume_or_warm_start

STEPS = 6
TABLES = ("big", "shared", "small", "pinned")


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "ckpt.toml"
    path.write_text(CHECKPOINT_TOML)
    return str(path)


@pytest.fixture(scope="module")
def source(toml, tmp_path_factory):
    """A finished run's export directory."""
    run_dir = tmp_path_factory.mktemp("source")
    train.main(["--config", toml, "--run.dir", str(run_dir), "--export.enabled", "true"])
    return str(run_dir / "export")


@pytest.fixture
def export_dir(source, tmp_path):
    """A copy of the source's export to change."""
    return shutil.copytree(source, tmp_path / "export")


def _arrays(path):
    return {t: load_export(str(path), t) for t in TABLES}


def _assert_same(a, b):
    for t in TABLES:
        for name in a[t]:
            np.testing.assert_array_equal(a[t][name], b[t][name], err_msg=f"{t}/{name}")


def _warm_started(toml, init_from):
    cfg, parts = load_parts(["--config", toml, "--train.init_from", str(init_from)])
    resume_or_warm_start(cfg, parts, context(), checkpoint.Checkpointer(cfg, parts, context()))
    return parts.embeddings


def test_layout(source):
    assert open(os.path.join(source, LATEST)).read().strip() == f"step_{STEPS}"
    assert sorted(os.listdir(source)) == [LATEST, f"step_{STEPS}"]  # no temporary left
    manifest = json.load(open(os.path.join(source, f"step_{STEPS}", "manifest.json")))
    assert sorted(manifest["files"]) == sorted(
        [
            "meta.json",
            *(f"{t}/{n}.npy" for t in TABLES for n in ("keys", "values", "freq", "last_step")),
        ]
    )


@pytest.mark.parametrize("step", [STEPS, STEPS + 3])
def test_a_crash_mid_reexport_leaves_the_previous_export(toml, export_dir, step, monkeypatch):
    before = _arrays(export_dir)
    _, parts = load_parts(["--config", toml])  # other weights: a re-export would change every table
    parts.embeddings.num_updates = step
    saves, real_save = [], np.save

    def save_then_crash(*args, **kwargs):
        if len(saves) == 4:  # after the first table's four files
            raise OSError("disk gone")
        saves.append(args)
        real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_crash)
    with pytest.raises(OSError, match="disk gone"):
        export_embeddings(parts.embeddings, str(export_dir), 1, 0)
    monkeypatch.undo()
    _assert_same(before, _arrays(export_dir))
    emb = _warm_started(toml, export_dir)
    assert emb.num_updates == STEPS
    state = emb.full_state_dict()["big"]
    rows = before["big"]["keys"]
    np.testing.assert_array_equal(state["weight"][rows].numpy(), before["big"]["values"])


def test_reexports_keep_the_previous_one(toml, export_dir):
    _, parts = load_parts(["--config", toml])
    for step in (STEPS + 1, STEPS + 2):
        parts.embeddings.num_updates = step
        export_embeddings(parts.embeddings, str(export_dir), 1, 0)
        assert open(export_dir / LATEST).read().strip() == f"step_{step}"
    assert KEEP_EXPORTS == 2 and sorted(os.listdir(export_dir)) == [
        LATEST,
        f"step_{STEPS + 1}",
        f"step_{STEPS + 2}",
    ]
    # the same step again replaces it
    export_embeddings(parts.embeddings, str(export_dir), 1, 0)
    assert sorted(os.listdir(export_dir))[1:] == [f"step_{STEPS + 1}", f"step_{STEPS + 2}"]
    assert _warm_started(toml, export_dir / f"step_{STEPS + 1}").num_updates == STEPS + 1


def test_a_corrupt_or_missing_file_is_named(toml, export_dir):
    values = export_dir / f"step_{STEPS}" / "big" / "values.npy"
    data = bytearray(values.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last value: np.load reads it without complaint
    values.write_bytes(bytes(data))
    corrupt = r"table 'big' file values.npy is corrupt: its xxh3_64 is \w+, manifest.json says \w+"
    with pytest.raises(ExportError, match=corrupt):
        load_export(str(export_dir), "big")
    with pytest.raises(ExportError, match=rf"train.init_from='{export_dir}': export .*{corrupt}"):
        _warm_started(toml, export_dir)
    os.remove(export_dir / f"step_{STEPS}" / "shared" / "freq.npy")
    with pytest.raises(ExportError, match=r"table 'shared' file freq.npy is missing"):
        load_export(str(export_dir), "shared")


def test_an_old_export_with_mismatched_rows_is_named(toml, source, tmp_path):
    """An export written in place before manifests, mixed by a killed re-export."""
    old = shutil.copytree(os.path.join(source, f"step_{STEPS}"), tmp_path / "old")
    os.remove(old / "manifest.json")
    keys = np.load(old / "big" / "keys.npy")
    np.save(old / "big" / "keys.npy", keys[:-1])
    with pytest.raises(
        ExportError,
        match=rf"table 'big' has mismatched rows: {len(keys) - 1} in keys.npy, {len(keys)} in values.npy",
    ):
        load_export(str(old), "big")
    with pytest.raises(ExportError, match=r"table 'big' has mismatched rows"):
        _warm_started(toml, old)


class _Killed(BaseException):
    """os._exit, in this process: nothing after the fail point runs."""


def test_kill_mid_export_keeps_the_previous_one(toml, tmp_path, monkeypatch, capsys):
    """train.fail_at export kills rank 0 once the first table of an export is written: the previous export
    stays whole and current, and the next complete run replaces it."""
    run = tmp_path / "run"
    base = ["--config", toml, "--run.dir", str(run), "--export.enabled", "true"]
    train.main([*base, "--train.steps", "4", "--train.checkpoint_every", "2"])
    before = _arrays(run / "export")

    def kill(code):
        raise _Killed(code)

    monkeypatch.setattr(os, "_exit", kill)
    with pytest.raises(_Killed):
        train.main([*base, "--train.resume", "auto", "--train.fail_at", "export"])
    monkeypatch.undo()
    assert "rank 0: injected failure at export (train.fail_at)" in capsys.readouterr().out
    assert open(run / "export" / LATEST).read().strip() == "step_4"
    _assert_same(_arrays(run / "export"), before)
    train.main([*base, "--train.resume", "auto"])
    assert open(run / "export" / LATEST).read().strip() == f"step_{STEPS}"
