"""Saving a checkpoint in two halves: begin() (collective) prepares .tmp_step_<N>/ and this rank's files,
write() writes them (inline, or in a background thread for train.async_checkpoint), complete() (collective)
gathers every rank's checksums into the manifest, renames the directory into place and prunes.

Every collective runs in the training thread: the background thread only copies rows to disk and hashes
them, so it never issues a collective concurrently with the training thread's (one process group, whose
collectives must come in the same order on every rank). An asynchronous save is completed by the next
save, or at once when it is the run's last; a failure of its write is raised there, on every rank, naming
the file.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from training import checkpoint_files as files
from training.checkpoint_files import CheckpointError
from training.checkpoint_shard import shard_name, snapshot, write_shard
from training.checkpoint_tables import rng_blocks, table_blocks
from training.config import Config, to_dict
from training.distributed import DistContext, unwrap
from training.guards import fail_point


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def all_gather(env: DistContext, value) -> list:
    """Every rank's value, in rank order (collective)."""
    if env.world_size == 1:
        return [value]
    out = [None] * env.world_size
    dist.all_gather_object(out, value)
    return out


def table_kinds(emb) -> dict[str, dict]:
    """The manifest's record of the dynamic tables (owner function: key_shards; W-free otherwise)."""
    return {t.name: {"key_shards": t.dynamic.key_shards} for t in emb.tables if t.dynamic}


def placements(emb) -> dict[str, dict]:
    return {
        t.name: {
            "placement": emb.plan.placements[t.name].placement,
            "owner": emb.plan.placements[t.name].owner,
        }
        for t in emb.tables
    }


class PendingSave:
    """One save of this rank: its files, what was written (name -> size, xxh3_64) and how long it took."""

    def __init__(self, cfg: Config, env: DistContext, step: int, final: str, tmp: str):
        self.cfg, self.env, self.step, self.final, self.tmp = cfg, env, step, final, tmp
        self.jobs: list[tuple[str, Callable[[str], dict]]] = []
        self.written: dict[str, dict] = {}
        self.manifest: dict = {}
        self.error: str | None = None
        self.snapshot_s = self.write_s = 0.0
        self.thread: threading.Thread | None = None

    def write(self, catch: bool = False) -> None:
        """Write every file; catch: keep the error (a background write) instead of raising it."""
        started, name = time.perf_counter(), ""
        try:
            for name, job in self.jobs:
                self.written[name] = job(os.path.join(self.tmp, name))
            name = ""
            fail_point(self.cfg, self.env.rank, "save:shards")
        except Exception as e:
            if not catch:
                raise
            where = os.path.join(self.tmp, name) if name else self.tmp
            self.error = f"writing {where} failed: {type(e).__name__}: {e}"
        self.write_s = time.perf_counter() - started

    def start(self) -> None:
        self.thread = threading.Thread(
            target=self.write, args=(True,), name=f"checkpoint step_{self.step}", daemon=True
        )
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()


def _manifest(cfg: Config, emb, step: int, world_size: int, skipped_steps: int) -> dict:
    """The manifest but its "files" (which complete() adds once every rank's are written)."""
    return {
        "step": step,
        "next_data_step": step,
        "world_size": world_size,
        "plan": placements(emb),
        "tables": {t.name: [t.num_embeddings, t.dim] for t in emb.tables},
        "dynamic": table_kinds(emb),
        "sparse_optimizer": emb.optimizer.name,
        "skipped_steps": skipped_steps,
        "config": to_dict(cfg),
    }


def begin(
    cfg: Config, parts, step: int, env: DistContext, skipped_steps: int, snap: bool
) -> PendingSave:
    """Collective: the temporary directory made (what interrupted saves left removed first) and this
    rank's files ready to write; snap: from host copies of the rows (taken now), so that training may go
    on while they are written."""
    root = checkpoint_root(cfg.run.dir)
    final, tmp = os.path.join(root, f"step_{step}"), os.path.join(root, f".tmp_step_{step}")
    if env.rank == 0:
        os.makedirs(root, exist_ok=True)
        files.clean(root)  # what interrupted saves and deletes left
        os.makedirs(tmp)
    env.barrier()
    started = time.perf_counter()
    emb, buffer_bytes = parts.embeddings, cfg.train.checkpoint_buffer_bytes
    pending = PendingSave(cfg, env, step, final, tmp)
    meta = {
        "format": "recfuse-shard",
        "version": 1,
        "step": step,
        "rank": env.rank,
        "world_size": env.world_size,
        "num_updates": emb.num_updates,
    }
    tables, blocks = table_blocks(emb)
    blocks = rng_blocks() + blocks
    if snap:
        blocks = snapshot(blocks, buffer_bytes)
    pending.jobs.append(
        (shard_name(env.rank), lambda path: write_shard(path, meta, tables, blocks, buffer_bytes))
    )
    if env.rank == 0:
        dense = {
            "model": unwrap(parts.model).state_dict(),
            "optimizer": parts.optimizer.state_dict(),
        }
        if snap:
            dense = copy.deepcopy(dense)  # the live parameters change as training goes on
        pending.jobs.append(
            ("dense.pt", lambda path: files.write_hashed(path, lambda f: torch.save(dense, f)))
        )
        pending.manifest = _manifest(cfg, emb, step, env.world_size, skipped_steps)
    pending.snapshot_s = time.perf_counter() - started
    return pending


def complete(pending: PendingSave, bad=()) -> tuple[float, float]:
    """Collective: once every rank's files are written, rank 0 writes the manifest, renames the directory
    into place and prunes; returns (the longest write of any rank, this completion) in seconds. A failed
    write of any rank is a CheckpointError on every rank, naming the file; the previous checkpoints
    stay."""
    cfg, env = pending.cfg, pending.env
    pending.wait()
    started = time.perf_counter()
    gathered = all_gather(env, (pending.written, pending.error, pending.write_s))
    errors = [f"rank {r}: {e}" for r, (_, e, _) in enumerate(gathered) if e]
    if errors:
        raise CheckpointError(f"checkpoint {pending.final} was not saved: {errors[0]}")
    if env.rank == 0:
        root = os.path.dirname(pending.final)
        listed = {name: e for written, _, _ in gathered for name, e in sorted(written.items())}
        files.write_manifest(pending.tmp, {**pending.manifest, "files": listed})
        fail_point(cfg, 0, "save:manifest")
        files.put_in_place(
            root, pending.tmp, pending.final, lambda: fail_point(cfg, 0, "save:rename")
        )
        prune(cfg, pending.final, bad)
    env.barrier()
    return max(s for _, _, s in gathered), time.perf_counter() - started


def complete_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint (has manifest.json) in run_dir, oldest first; whether
    its files are intact is verify()'s."""
    root = checkpoint_root(run_dir)
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        m = files.STEP_DIR.match(name)
        if m and files.has_manifest(os.path.join(root, name)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def prune(cfg: Config, newest: str, bad=()) -> None:
    """Delete all but the newest train.keep_checkpoints complete checkpoints (<= 0 keeps all), never
    `newest` (the one just saved, hashed as it was written); checkpoints in `bad` (failed verification)
    are deleted and not counted."""
    root, keep = checkpoint_root(cfg.run.dir), cfg.train.keep_checkpoints
    others = [p for _, p in complete_checkpoints(cfg.run.dir) if p != newest]
    good = [p for p in others if p not in bad]
    doomed = [p for p in others if p in bad]
    if keep > 0:
        doomed += good[: max(len(good) - (keep - 1), 0)]
    for path in doomed:
        files.remove(root, os.path.basename(path), lambda: fail_point(cfg, 0, "prune"))
