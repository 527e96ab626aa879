"""One run per run.dir: rank 0 holds <run.dir>/.lock (fcntl.flock on an open descriptor) for the job's life,
and a new run (not a resume) refuses a run.dir holding another config's summary.json or checkpoints.

The lock file says who holds it (host, pid, start time, job id) in JSON. The OS drops the flock when the holder
dies, so a lock file whose flock is free is stale: the next run takes it over (with a log line), a torchrun
restart of the same job (same TORCHELASTIC_RUN_ID) takes it back. Rank 0 decides and broadcasts the decision,
so every rank stops with the same one-line error and none waits in a collective rank 0 never joins.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time

import torch.distributed as dist

from training.checkpoint import complete_checkpoints, read_manifest, resume_setting
from training.config import Config, to_dict
from training.distributed import DistContext, restart_count

LOCK_NAME = ".lock"
# keys that may differ between a run and its continuation without changing what it writes
SAME_RUN_KEYS = ("run.dir", "train.resume")


class RunDirInUse(Exception):
    """Another run holds run.dir, or run.dir holds another run's output."""


def _holder() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "job": os.environ.get("TORCHELASTIC_RUN_ID") or f"pid-{os.getpid()}",
        "restart": restart_count(),
    }


def _read_holder(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that has not written its details yet"
    return (
        f"host {holder.get('host')} pid {holder.get('pid')} started {holder.get('started')} "
        f"(job {holder.get('job')})"
    )


class RunLock:
    """The flock on <run_dir>/.lock. acquire() raises RunDirInUse when another process holds it."""

    def __init__(self, run_dir: str):
        self.run_dir, self.path = run_dir, os.path.join(run_dir, LOCK_NAME)
        self.fd: int | None = None
        self.previous: dict = {}  # what a stale lock file said (empty when there was none)

    def acquire(self) -> RunLock:
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _describe(_read_holder(self.path))
                raise RunDirInUse(
                    f"run.dir {self.run_dir!r} is in use by another run: {holder}; wait for it to "
                    f"finish, pass another --run.dir, or, if that process is gone from that host, "
                    f"remove {self.path}"
                ) from None
            # the holder deletes the file on release: a lock on a deleted file holds nothing
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            os.close(fd)
        else:
            raise RunDirInUse(f"run.dir {self.run_dir!r}: {self.path} keeps changing; retry")
        with os.fdopen(os.dup(fd), "r+") as f:
            text = f.read()
            with contextlib.suppress(ValueError):
                self.previous = json.loads(text) if text.strip() else {}
            f.seek(0)
            f.truncate()
            json.dump(_holder(), f)
            f.flush()
            os.fsync(f.fileno())
        self.fd = fd
        return self

    def takeover_note(self) -> str | None:
        """The log line when the lock file was left by a process that is gone, else None."""
        if not self.previous:
            return None
        mine = _holder()
        if self.previous.get("job") == mine["job"] and mine["restart"] > 0:
            return f"run.dir lock {self.path} taken back for restart {mine['restart']} of job {mine['job']}"
        return (
            f"run.dir lock {self.path} was left by {_describe(self.previous)}, which is gone: "
            "taking it over"
        )

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while still held: nobody can take the lock on this file
            os.close(self.fd)
            self.fd = None


def _flat(config: dict) -> dict[str, str]:
    return {
        f"{section}.{key}": json.dumps(value, sort_keys=True)
        for section, values in config.items()
        for key, value in values.items()
        if f"{section}.{key}" not in SAME_RUN_KEYS
    }


def _config_difference(theirs: dict, ours: dict) -> str:
    """'' when equal, else the first few differing keys as 'key their_value -> our_value'."""
    a, b = _flat(theirs), _flat(ours)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    shown = [f"{k} {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in keys[:3]]
    return ", ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def other_runs_output(cfg: Config) -> str | None:
    """The one-line refusal when a new run (not a resume) would write into a run.dir that holds the output
    (summary.json, checkpoints) of a run with another config; None when it does not."""
    if resume_setting(cfg):
        return None
    ours = json.loads(json.dumps(to_dict(cfg)))
    found = [(os.path.join(cfg.run.dir, "summary.json"), None)]
    found += [
        (os.path.join(p, "manifest.json"), p) for _, p in complete_checkpoints(cfg.run.dir)[-1:]
    ]
    for path, checkpoint in found:
        if not os.path.isfile(path):
            continue
        try:
            theirs = (
                read_manifest(checkpoint)["config"] if checkpoint else _read_json(path)["config"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            return (
                f"run.dir {cfg.run.dir!r} holds {path}, which is not a readable run output: use "
                "another --run.dir or remove it"
            )
        difference = _config_difference(theirs, ours)
        if difference:
            return (
                f"run.dir {cfg.run.dir!r} holds another run's output ({path}: {difference}); pass "
                "--train.resume auto to continue that run, another --run.dir, or remove its files"
            )
    return None


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _agree(env: DistContext, refusal: str | None) -> None:
    """Rank 0's refusal (or None) on every rank; every rank raises it."""
    if env.world_size > 1:
        box = [refusal]
        dist.broadcast_object_list(box, src=0)
        refusal = box[0]
    if refusal:
        raise RunDirInUse(refusal)


# the locks this process holds, by run.dir: a process runs one run at a time
_HELD: dict[str, RunLock] = {}


def hold_run_dir(cfg: Config, env: DistContext) -> None:
    """Collective, before anything is written in run.dir: rank 0 takes its lock (kept until
    released_run_dir_locks() ends or this process exits); every rank raises if another run has it."""
    refusal = None
    if env.rank == 0:
        key = os.path.realpath(cfg.run.dir)
        for other in [d for d in _HELD if d != key]:  # an earlier run of this process is over
            _HELD.pop(other).release()
        try:
            os.makedirs(cfg.run.dir, exist_ok=True)
            if key not in _HELD:
                _HELD[key] = RunLock(cfg.run.dir).acquire()
                note = _HELD[key].takeover_note()
                if note:
                    env.log(note)
        except RunDirInUse as e:
            refusal = str(e)
        except OSError as e:  # e.g. a run.dir that cannot be created: every rank stops, none waits
            refusal = f"run.dir {cfg.run.dir!r} cannot hold the run's lock: {e}"
    _agree(env, refusal)


@contextlib.contextmanager
def released_run_dir_locks():
    """Release the run.dir locks taken inside the block when it ends, by return or by an error."""
    try:
        yield
    finally:
        while _HELD:
            _HELD.popitem()[1].release()


def refuse_other_runs_output(cfg: Config, env: DistContext) -> None:
    """Collective, after build (a dataset completes the config): every rank raises when run.dir holds the
    output of a run with another config and this run does not resume it."""
    _agree(env, other_runs_output(cfg) if env.rank == 0 else None)
