"""Checkpoints at scale: tables streamed through a buffer smaller than they are (exact round trips at W=1
and W=2, resharding 2 -> 1, dynamic tables by key), the host memory of a save bounded by the buffer,
asynchronous saves (the same bytes as synchronous ones; a failed or killed background write leaves the
previous checkpoint the newest), and shards of the older torch.save format still read."""

import json
import os
import subprocess
import sys

import pytest
import torch

import train
from tests.support.configs import CHECKPOINT_TOML, DYNAMIC_TOML
from tests.support.dist_utils import run_distributed
from tests.support.paths import ROOT
from tests.support.training import context, load_parts, train_with_checkpoints
from training import checkpoint, checkpoint_files
from training.checkpoint_files import CheckpointError
from training.checkpoint_shard import ShardReader
from training.digest import optimizer_digest, weights_digest

BUFFER = 256  # bytes: 16 rows of dim 4 (float32), so every table is streamed in several chunks
SAVED_AT = 3


@pytest.fixture(scope="module")
def tomls(tmp_path_factory):
    base = tmp_path_factory.mktemp("stream")
    out = {}
    for name, text in (("static", CHECKPOINT_TOML), ("dynamic", DYNAMIC_TOML)):
        (base / f"{name}.toml").write_text(text)
        out[name] = str(base / f"{name}.toml")
    return out


def _state(parts):
    emb = parts.embeddings
    return emb.full_state_dict(), weights_digest(parts), optimizer_digest(parts), emb.num_updates


def _save_and_load(rank, world_size, group, toml, run_dir):
    """(state as saved at SAVED_AT, state loaded from that checkpoint into fresh parts); both buffered."""
    extra = [
        "--train.checkpoint_every",
        str(SAVED_AT),
        "--train.checkpoint_buffer_bytes",
        str(BUFFER),
    ]
    _, parts = train_with_checkpoints(rank, world_size, group, toml, run_dir, SAVED_AT, extra)
    return _state(parts), _load(
        rank, world_size, group, toml, f"{run_dir}/checkpoints/step_{SAVED_AT}"
    )


def _load(rank, world_size, group, toml, path):
    _, parts = load_parts(["--config", toml], rank, world_size, group)
    assert (
        checkpoint.load(path, parts, context(rank, world_size, group), buffer_bytes=BUFFER)
        == SAVED_AT
    )
    return _state(parts)


def _assert_same(a, b):
    (full_a, *digests_a), (full_b, *digests_b) = a, b
    assert digests_a == digests_b
    for table, tensors in full_a.items():
        for key, value in tensors.items():
            assert torch.equal(value, full_b[table][key]), f"table {table} {key}"


@pytest.fixture(scope="module")
def saved(tomls, tmp_path_factory):
    base = tmp_path_factory.mktemp("stream_runs")
    return {
        (kind, w): (run_distributed(_save_and_load, w, tomls[kind], f"{base}/{kind}_w{w}"), base)
        for kind in ("static", "dynamic")
        for w in (1, 2)
    }


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_tables_larger_than_the_buffer_round_trip(saved, kind, world_size):
    (as_saved, loaded), base = saved[kind, world_size]
    _assert_same(as_saved, loaded)
    shard = base / f"{kind}_w{world_size}" / "checkpoints" / f"step_{SAVED_AT}" / "shard_00000.bin"
    assert shard.stat().st_size > 8 * BUFFER


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_reshard_2_to_1_through_the_buffer(saved, tomls, kind):
    (as_saved, _), base = saved[kind, 2]
    path = f"{base}/{kind}_w2/checkpoints/step_{SAVED_AT}"
    _assert_same(as_saved, _load(0, 1, None, tomls[kind], path))


def test_static_shard_has_no_row_index(saved):
    (_, _), base = saved["static", 2]
    path = base / "static_w2" / "checkpoints" / f"step_{SAVED_AT}" / "shard_00001.bin"
    with ShardReader(str(path), BUFFER) as reader:
        header = reader.header
    assert header["tables"]["pinned"] == {"kind": "static", "rows": [1, 2, 14]}  # ids 1, 3, .. 27
    assert not [b for b in reader.blocks if b.endswith("/rows")]


MEMORY_SCRIPT = """
import json, sys
from tests.support.training import context, load_parts
from training.checkpoint import Checkpointer

def kb(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0])

toml, run_dir, buffer = sys.argv[1:]
cfg, parts = load_parts(["--config", toml, "--run.dir", run_dir, "--train.checkpoint_every", "1",
                         "--train.checkpoint_buffer_bytes", buffer])
ckpt = Checkpointer(cfg, parts, context())
ckpt.save(1, 0)  # imports and first-use allocations
open("/proc/self/clear_refs", "w").write("5")  # the peak RSS starts again from the current RSS
before = kb("VmRSS")
ckpt.save(2, 0)
rows = sum(v.numel() * v.element_size() for v in parts.embeddings.storage.tracked().values())
print(json.dumps({"growth": (kb("VmHWM") - before) * 1024, "table_bytes": rows}))
"""

MEMORY_TOML = """
[model]
bottom_mlp = [8, 16]
top_mlp = [8]
[embedding]
dim = 16
[[embedding.tables]]
name = "big"
num_embeddings = 600_000
[optimizer]
sparse = "sgd"
"""


def test_save_host_memory_stays_within_the_buffer(tmp_path):
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    (tmp_path / "big.toml").write_text(MEMORY_TOML)
    buffer = 1 << 20
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_SCRIPT,
            str(tmp_path / "big.toml"),
            str(tmp_path / "run"),
            str(buffer),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["table_bytes"] > 40e6  # a copy of the rows would show
    assert measured["growth"] < buffer + (8 << 20), measured


# ---- asynchronous saves ------------------------------------------------------------------------------------
def _args(toml, run, *extra):
    return [
        "--config",
        toml,
        "--run.dir",
        str(run),
        "--train.steps",
        "6",
        "--train.checkpoint_every",
        "2",
        *extra,
    ]


def test_async_save_writes_the_same_bytes(tomls, tmp_path):
    # the first run of a process draws from the global RNG once more (first-use initialisation): the
    # runs compared must both come after it, as their shards hold the RNG state
    train.main(_args(tomls["static"], tmp_path / "first", "--train.steps", "1"))
    sync = train.main(_args(tomls["static"], tmp_path / "sync"))
    asynchronous = train.main(
        _args(tomls["static"], tmp_path / "async", "--train.async_checkpoint", "true")
    )
    assert asynchronous["weights_digest"] == sync["weights_digest"]
    for step in (4, 6):
        manifests = [
            checkpoint_files.read_manifest(str(tmp_path / run / "checkpoints" / f"step_{step}"))
            for run in ("sync", "async")
        ]
        assert manifests[0]["files"] == manifests[1]["files"], step
    for summary in (sync, asynchronous):
        assert summary["checkpoint_saves"] == 3 and summary["checkpoint_bytes"] > 0
        assert summary["checkpoint_save_gbps"] > 0 and summary["checkpoint_stall_ms"] > 0


def test_failed_async_write_is_raised_at_the_next_save(tomls, tmp_path, monkeypatch):
    real_write = checkpoint_files.write_hashed

    def failing_write(path, write):
        if "step_4" in path and path.endswith(".bin"):
            raise OSError("disk full (injected)")
        return real_write(path, write)

    monkeypatch.setattr(checkpoint_files, "write_hashed", failing_write)
    extra = ["--train.checkpoint_every", "2", "--train.async_checkpoint", "true"]
    with pytest.raises(CheckpointError) as raised:
        train_with_checkpoints(0, 1, None, tomls["static"], str(tmp_path), 6, extra)
    tmp = tmp_path / "checkpoints" / ".tmp_step_4"
    assert str(raised.value) == (
        f"checkpoint {tmp_path}/checkpoints/step_4 was not saved: rank 0: writing {tmp}/shard_00000.bin "
        "failed: OSError: disk full (injected)"
    )
    assert [s for s, _ in checkpoint.complete_checkpoints(str(tmp_path))] == [2]


def test_async_write_killed_leaves_the_previous_checkpoint(tomls, tmp_path):
    straight = train.main(
        ["--config", tomls["static"], "--run.dir", str(tmp_path / "straight"), "--train.steps", "6"]
    )
    run = tmp_path / "run"
    train.main(_args(tomls["static"], run, "--train.steps", "4"))
    flags = ["--train.resume", "auto", "--train.async_checkpoint", "true"]
    killed = subprocess.run(
        [
            sys.executable,
            "train.py",
            *_args(tomls["static"], run, *flags, "--train.fail_at", "save:shards"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == 1 and "injected failure at save:shards" in killed.stdout, (
        killed.stderr
    )
    assert [s for s, _ in checkpoint.complete_checkpoints(str(run))] == [2, 4]
    resumed = train.main(_args(tomls["static"], run, *flags))
    assert resumed["weights_digest"] == straight["weights_digest"]
    assert resumed["optimizer_digest"] == straight["optimizer_digest"]


# ---- the older format ----------------------------------------------------------------------------------------
def test_torch_save_shards_are_still_read(saved, tomls, tmp_path):
    """A checkpoint whose shard is shard_00000.pt (torch.save of shard_tables(), the older format)."""
    (as_saved, _), base = saved["dynamic", 1]
    src = f"{base}/dynamic_w1/checkpoints/step_{SAVED_AT}"
    _, parts = load_parts(["--config", tomls["dynamic"]])
    checkpoint.load(src, parts, context())
    emb, path = parts.embeddings, tmp_path / f"step_{SAVED_AT}"
    path.mkdir()
    shard = {"step": SAVED_AT, "rank": 0, "world_size": 1, "num_updates": emb.num_updates}
    shard |= {"rng": {"torch": torch.get_rng_state()}, "tables": emb.shard_tables()}
    written = checkpoint_files.write_hashed(
        str(path / "shard_00000.pt"), lambda f: torch.save(shard, f)
    )
    files = {"shard_00000.pt": written}
    manifest = checkpoint_files.read_manifest(src)
    files["dense.pt"] = manifest["files"]["dense.pt"]
    (path / "dense.pt").write_bytes(open(f"{src}/dense.pt", "rb").read())
    checkpoint_files.write_manifest(str(path), {**manifest, "files": files})
    _assert_same(as_saved, _load(0, 1, None, tomls["dynamic"], str(path)))


# ---- bad input ---------------------------------------------------------------------------------------------
def test_a_file_that_is_not_a_shard_is_named(tmp_path):
    path = tmp_path / "shard_00000.bin"
    path.write_bytes(b"PK\x03\x04 a zip file, say")
    with pytest.raises(CheckpointError, match=r"shard_00000.bin is not a RecFuse shard file"):
        ShardReader(str(path), BUFFER)


def test_a_shard_shorter_than_its_header_says_is_named(saved, tmp_path):
    (_, _), base = saved["static", 1]
    data = (
        base / "static_w1" / "checkpoints" / f"step_{SAVED_AT}" / "shard_00000.bin"
    ).read_bytes()
    path = tmp_path / "shard_00000.bin"
    path.write_bytes(data[:-8])
    with pytest.raises(
        CheckpointError,
        match=rf"is corrupt: {len(data) - 8} bytes, its header describes {len(data)}$",
    ):
        ShardReader(str(path), BUFFER)


def test_buffer_below_one_byte_is_a_config_error(tomls, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        train.main(_args(tomls["static"], tmp_path, "--train.checkpoint_buffer_bytes", "0"))
    assert stopped.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("error: config key 'train.checkpoint_buffer_bytes' is 0; it must be >= 1")
    )
