"""Checkpoints you can trust: checksums verified on load (a bit flip, a truncation or a missing file of
each kind), resume auto falling back to the newest checkpoint that verifies, pruning that keeps the good
ones, the debris of interrupted deletes and re-saves, and the named fail points of train.fail_at."""

import json
import os
import re
import shutil

import pytest

import train
from tests.support.configs import CHECKPOINT_TOML
from training import checkpoint
from training.checkpoint_files import CheckpointError

STEPS = 8  # the saved run stops at 4 (step_2, step_4); the resumed runs go on to 8


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "small.toml"
    path.write_text(CHECKPOINT_TOML)
    return str(path)


def _args(toml, run, *extra):
    return ["--config", toml, "--run.dir", str(run), "--train.steps", str(STEPS), *extra]


@pytest.fixture(scope="module")
def straight(toml, tmp_path_factory):
    """The uninterrupted run's summary."""
    return train.main(_args(toml, tmp_path_factory.mktemp("straight")))


@pytest.fixture(scope="module")
def saved(toml, tmp_path_factory):
    """A run stopped after 4 steps, with checkpoints step_2 and step_4."""
    run = tmp_path_factory.mktemp("saved")
    train.main(_args(toml, run, "--train.steps", "4", "--train.checkpoint_every", "2"))
    return run


def _copy(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "run")
    return tmp_path / "run"


def _flip(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_manifest(path):  # valid JSON, another value: only the manifest's own checksum sees it
    text = path.read_text()
    assert '"skipped_steps": 0' in text
    path.write_text(text.replace('"skipped_steps": 0', '"skipped_steps": 1'))


DAMAGE = {"flip": _flip, "truncate": _truncate, "edit": _edit_manifest}
WHAT = {
    ("manifest.json", "flip"): r"is not valid JSON \(\d+ bytes, truncated or corrupt\)",
    ("manifest.json", "truncate"): r"is not valid JSON \(\d+ bytes, truncated or corrupt\)",
    (
        "manifest.json",
        "edit",
    ): r"is corrupt: its content has xxh3_64 [0-9a-f]+, it records [0-9a-f]+",
    ("dense.pt", "flip"): r"is corrupt: xxh3_64 [0-9a-f]+, the manifest says [0-9a-f]+",
    ("dense.pt", "truncate"): r"is truncated: \d+ bytes, the manifest says \d+",
    ("shard_00000.bin", "flip"): r"is corrupt: xxh3_64 [0-9a-f]+, the manifest says [0-9a-f]+",
    ("shard_00000.bin", "truncate"): r"is truncated: \d+ bytes, the manifest says \d+",
}


def _same_state(summary, straight):
    assert summary["steps"] == STEPS
    assert summary["weights_digest"] == straight["weights_digest"]
    assert summary["optimizer_digest"] == straight["optimizer_digest"]


@pytest.mark.parametrize("name,damage", sorted(WHAT))
def test_damaged_file_falls_back_under_auto(toml, saved, straight, tmp_path, capsys, name, damage):
    run = _copy(saved, tmp_path)
    DAMAGE[damage](run / "checkpoints" / "step_4" / name)
    summary = train.main(_args(toml, run, "--train.resume", "auto"))
    out = capsys.readouterr().out
    skipped = rf"train.resume=auto: skipping checkpoint \S+/step_4: \S+/step_4/{name} {WHAT[name, damage]}"
    assert re.search(skipped, out), out
    assert re.search(r"resumed from \S+/step_2 at step 2", out), out
    _same_state(summary, straight)


@pytest.mark.parametrize("name,damage", sorted(WHAT))
def test_damaged_file_is_an_error_under_explicit_resume(toml, saved, tmp_path, name, damage):
    run = _copy(saved, tmp_path)
    path = run / "checkpoints" / "step_4"
    DAMAGE[damage](path / name)
    where = re.escape(str(path))
    with pytest.raises(
        CheckpointError, match=rf"^train.resume='{where}': {where}/{name} {WHAT[name, damage]}"
    ):
        train.main(_args(toml, run, "--train.resume", str(path)))


def test_half_deleted_checkpoint_and_debris(toml, saved, straight, tmp_path, capsys):
    """A delete interrupted by the old code left step_4/ with only its manifest, and an empty step_7/."""
    run = _copy(saved, tmp_path)
    root = run / "checkpoints"
    for name in ("dense.pt", "shard_00000.bin"):
        (root / "step_4" / name).unlink()
    (root / "step_7").mkdir()
    (root / ".del_step_1").mkdir()
    summary = train.main(
        _args(toml, run, "--train.resume", "auto", "--train.checkpoint_every", "2")
    )
    out = capsys.readouterr().out
    assert re.search(r"skipping checkpoint \S+/step_4: \S+/step_4/dense.pt is missing", out), out
    assert re.search(r"resumed from \S+/step_2 at step 2", out), out
    _same_state(summary, straight)
    # step_4 re-saved whole, the debris gone, the last two kept
    assert sorted(os.listdir(root)) == ["step_6", "step_8"]
    for path in (root / "step_6", root / "step_8"):
        assert checkpoint.read_manifest(str(path))["step"] == int(path.name[5:])


def test_failed_checkpoints_are_pruned_before_good_ones(toml, saved, tmp_path):
    run = _copy(saved, tmp_path)
    _flip(run / "checkpoints" / "step_4" / "dense.pt")
    flags = ["--train.resume", "auto", "--train.checkpoint_every", "3", "--train.steps", "6"]
    train.main(_args(toml, run, *flags))
    # saved at 3 and 6: the corrupt step_4 went first, then the oldest good one
    assert [s for s, _ in checkpoint.complete_checkpoints(str(run))] == [3, 6]


def test_resaved_step_counts_again(toml, saved, tmp_path):
    run = _copy(saved, tmp_path)
    _flip(run / "checkpoints" / "step_4" / "dense.pt")
    flags = ["--train.resume", "auto", "--train.checkpoint_every", "2", "--train.steps", "6"]
    train.main(_args(toml, run, *flags))
    # step_4 was re-saved whole: kept beside step_6, the older step_2 pruned
    assert [s for s, _ in checkpoint.complete_checkpoints(str(run))] == [4, 6]


def test_no_checkpoint_verifies(toml, saved, tmp_path):
    run = _copy(saved, tmp_path)
    for step in (2, 4):
        _truncate(run / "checkpoints" / f"step_{step}" / "dense.pt")
    with pytest.raises(
        CheckpointError,
        match=r"^train.resume=auto: no checkpoint in \S+ verifies; the newest: \S+/step_4/dense.pt is "
        r"truncated",
    ):
        train.main(_args(toml, run, "--train.resume", "auto"))


# ---- fail points ------------------------------------------------------------------------------------------
class _Killed(BaseException):
    """os._exit, in this process: nothing after the fail point runs."""


def _kill(code):
    raise _Killed(code)


def _crash(toml, run, monkeypatch, capsys, point, *extra):
    monkeypatch.setattr(os, "_exit", _kill)
    with pytest.raises(_Killed):
        train.main(_args(toml, run, "--train.fail_at", point, *extra))
    monkeypatch.undo()
    assert f"rank 0: injected failure at {point} (train.fail_at)" in capsys.readouterr().out


AFTER_CRASH = {  # what the crash in step 6's save left (keep_checkpoints 1)
    "save:shards": ["step_2", "step_4"],
    "save:manifest": ["step_2", "step_4"],  # and the complete .tmp_step_6: put in place on resume
    "save:rename": ["step_2", "step_4"],
    "prune": ["step_4", "step_6"],  # step_2 renamed to debris
}


@pytest.mark.parametrize("point", sorted(AFTER_CRASH))
def test_fail_point_then_resume_auto(toml, saved, straight, tmp_path, monkeypatch, capsys, point):
    run = _copy(saved, tmp_path)
    flags = [
        "--train.resume",
        "auto",
        "--train.checkpoint_every",
        "2",
        "--train.keep_checkpoints",
        "1",
    ]
    _crash(toml, run, monkeypatch, capsys, point, *flags)
    root = run / "checkpoints"
    found = [f"step_{s}" for s, _ in checkpoint.complete_checkpoints(str(run))]
    assert found == AFTER_CRASH[point], sorted(os.listdir(root))
    summary = train.main(_args(toml, run, *flags))
    _same_state(summary, straight)
    assert sorted(os.listdir(root)) == ["step_8"]  # the next saves removed debris and pruned


def test_resave_interrupted_between_renames(toml, saved, straight, tmp_path, monkeypatch, capsys):
    """Re-saving step_4 (resumed from step_2): killed after the old step_4 was moved aside, before the new
    one took its place. The complete new one is put in place and resumed from."""
    run = _copy(saved, tmp_path)
    root = run / "checkpoints"
    flags = ["--train.checkpoint_every", "2"]
    _crash(
        toml,
        run,
        monkeypatch,
        capsys,
        "save:rename",
        "--train.resume",
        str(root / "step_2"),
        *flags,
    )
    assert sorted(os.listdir(root)) == [".del_step_4", ".tmp_step_4", "step_2"]
    summary = train.main(_args(toml, run, "--train.resume", "auto", *flags))
    assert re.search(r"resumed from \S+/step_4 at step 4", capsys.readouterr().out)
    _same_state(summary, straight)
    assert sorted(os.listdir(root)) == ["step_6", "step_8"]


def test_manifest_records_every_file_checksum(saved):
    manifest = json.load(open(saved / "checkpoints" / "step_4" / "manifest.json"))
    assert sorted(manifest["files"]) == ["dense.pt", "shard_00000.bin"]
    for name, entry in manifest["files"].items():
        assert entry["size"] == os.path.getsize(saved / "checkpoints" / "step_4" / name)
        assert re.fullmatch(r"[0-9a-f]{16}", entry["xxh3_64"])
    assert re.fullmatch(r"[0-9a-f]{16}", manifest["manifest_xxh3_64"])


@pytest.mark.parametrize("name", ["dense.pt", "shard_00000.bin"])
def test_warm_start_from_a_damaged_checkpoint_names_the_file(toml, saved, tmp_path, name):
    """A warm start reads every file of the checkpoint (the rows are re-picked): each is checked first."""
    run = _copy(saved, tmp_path)
    source = run / "checkpoints" / "step_4"
    _flip(source / name)
    with pytest.raises(
        CheckpointError,
        match=rf"^train.init_from='{source}': {source}/{name} is corrupt: xxh3_64 \w+, the manifest says",
    ):
        train.main(_args(toml, tmp_path / "new", "--train.init_from", str(source)))
