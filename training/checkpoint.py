"""Checkpoints: save, verify, load (at any world size), prune, and which one to resume from.

One checkpoint is <run.dir>/checkpoints/step_<N>/ (N = steps done = next data step):
    manifest.json        rank 0: step, world size, plan, table shapes, optimizer, config, and every file's
                         size and xxh3_64 (its own checksum too: training.checkpoint_files)
    dense.pt             rank 0: dense model state_dict and dense optimizer state (replicated by DDP)
    shard_<rank>.bin     every rank: its part of every table, streamed in chunks of at most
                         train.checkpoint_buffer_bytes (training.checkpoint_shard), its RNG states and
                         the embedding update counter (shard_<rank>.pt, torch.save: the older format, read)
Saving (training.checkpoint_save): every rank hashes its shard as it writes it into .tmp_step_<N>/, rank 0
gathers the checksums into the manifest (written last) and renames the directory into place; deletes
rename to debris first (checkpoint_files), so a crash at any moment leaves the previous checkpoints intact
and nothing half-written or half-deleted under a checkpoint's name. With train.async_checkpoint the files
are written from a host snapshot in a background thread while training goes on. Loading: every rank
verifies the files it reads; under resume "auto" the ranks agree on the newest checkpoint that verifies
on all of them. Loading reads rows in chunks of at most train.checkpoint_buffer_bytes and keeps
the rows this rank owns under its current plan: a checkpoint written at W ranks loads at any W'
(docs/checkpoints.md).
"""

from __future__ import annotations

import os
import time

import torch

from training import checkpoint_files as files
from training import checkpoint_save
from training.checkpoint_files import CheckpointError, read_manifest
from training.checkpoint_save import (
    all_gather,
    checkpoint_root,
    complete_checkpoints,
    placements,
    prune,
    table_kinds,
)
from training.checkpoint_tables import read_shard, torch_load
from training.config import Config
from training.config.validate import ConfigError
from training.distributed import DistContext, restart_count, unwrap
from training.resume_checks import check_dense_optimizer

__all__ = ["CheckpointError", "checkpoint_root", "complete_checkpoints", "prune", "read_manifest"]
DEFAULT_BUFFER = 256 << 20


def resume_setting(cfg: Config) -> str:
    """train.resume, or "auto" when torchrun restarted the group after a failure."""
    return cfg.train.resume or ("auto" if restart_count() > 0 else "")


# ---- verify and choose ----------------------------------------------------------------------------------
def _files_to_read(manifest: dict, emb, env: DistContext) -> list[str]:
    shards = sorted(name for name in manifest["files"] if name.startswith("shard_"))
    if manifest["world_size"] == env.world_size and manifest["plan"] == placements(emb):
        # own shard + rank 0's (replicated tables)
        shards = [n for n in shards if n.startswith((f"shard_{env.rank:05d}.", "shard_00000."))]
    return [*shards, "dense.pt"]


def verify(path: str, parts, env: DistContext) -> dict:
    """The manifest, once every file it lists has its size and every file this rank reads its checksum;
    else CheckpointError naming the file and what is wrong."""
    manifest = read_manifest(path)
    listed = manifest["files"]
    for name, entry in listed.items():
        files.check_file(path, name, entry if isinstance(entry, int) else entry["size"])
    for name in _files_to_read(manifest, parts.embeddings, env):
        if name not in listed:
            raise CheckpointError(f"{path}/manifest.json is corrupt: it does not list {name}")
        files.check_file(path, name, listed[name])
    return manifest


def _agreed_problem(path: str, parts, env: DistContext) -> str | None:
    """Collective: what is wrong with the checkpoint on the first rank that found a problem, or None; the
    same answer on every rank, so that all load the same checkpoint."""
    try:
        verify(path, parts, env)
        problem = None
    except CheckpointError as e:
        problem = str(e)
    found = [p for p in all_gather(env, problem) if p]
    return found[0] if found else None


def choose_checkpoint(cfg: Config, parts, env: DistContext) -> tuple[str | None, list[str]]:
    """Collective: (the checkpoint to resume from, None for a fresh start; the checkpoints skipped because
    they failed verification). "auto" takes the newest that verifies on every rank; an explicit path that
    fails is an error."""
    setting = resume_setting(cfg)
    if not setting:
        return None, []
    root = checkpoint_root(cfg.run.dir)
    if env.rank == 0:
        files.recover(root)
    env.barrier()
    if setting != "auto":
        problem = _agreed_problem(setting, parts, env)
        if problem:
            raise CheckpointError(f"train.resume={setting!r}: {problem}")
        return setting, []
    # rank 0's listing: every rank tries the same candidates in the same order
    candidates = all_gather(env, [p for _, p in complete_checkpoints(cfg.run.dir)])[0]
    skipped, problems = [], []
    for path in reversed(candidates):
        problem = _agreed_problem(path, parts, env)
        if problem is None:
            return path, skipped
        env.log(f"train.resume=auto: skipping checkpoint {path}: {problem}")
        skipped.append(path)
        problems.append(problem)
    if problems:
        raise CheckpointError(
            f"train.resume=auto: no checkpoint in {root} verifies; the newest: {problems[0]}"
        )
    return None, []


# ---- load -----------------------------------------------------------------------------------------------
def _check_compatible(path: str, manifest: dict, emb) -> None:
    want = {t.name: [t.num_embeddings, t.dim] for t in emb.tables}
    if manifest["tables"] != want:
        raise ValueError(
            f"checkpoint {path} has tables {manifest['tables']}, the config has {want}"
        )
    if manifest.get("dynamic", {}) != table_kinds(emb):
        raise ValueError(
            f"checkpoint {path} has dynamic tables {manifest.get('dynamic', {})}, the config has "
            f"{table_kinds(emb)} (--train.init_from starts from a run with other tables)"
        )
    if manifest["sparse_optimizer"] != emb.optimizer.name:
        raise ValueError(
            f"checkpoint {path} was trained with sparse optimizer {manifest['sparse_optimizer']!r}, "
            f"the config has {emb.optimizer.name!r}"
        )


def load(
    path: str, parts, env: DistContext, check: bool = True, buffer_bytes: int = DEFAULT_BUFFER
) -> int:
    """Load a checkpoint written at any world size into this rank's parts, reading at most buffer_bytes
    of rows at a time; returns its step. check=False where verify() has just run."""
    manifest = verify(path, parts, env) if check else read_manifest(path)
    emb = parts.embeddings
    _check_compatible(path, manifest, emb)
    *shards, _dense = _files_to_read(manifest, emb, env)
    index = {t.name: i for i, t in enumerate(emb.tables)}
    own_rng = None
    for name in shards:
        where = f"checkpoint {path}/{name}"
        shard = read_shard(emb, os.path.join(path, name), index, where, buffer_bytes)
        emb.num_updates = int(shard["num_updates"])  # the same on every rank
        if shard["rank"] == env.rank or (own_rng is None and shard["rank"] == 0):
            own_rng = shard["rng"]
    dense = torch_load(os.path.join(path, "dense.pt"))
    unwrap(parts.model).load_state_dict(dense["model"])
    check_dense_optimizer(path, manifest, parts.optimizer)
    parts.optimizer.load_state_dict(dense["optimizer"])
    if own_rng is not None:
        torch.set_rng_state(own_rng["torch"])
        if "cuda" in own_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(own_rng["cuda"])
    return int(manifest["step"])


class Checkpointer:
    """A run's checkpoints: restore() before the loop, due(step) and save(step) after each step.

    Checkpointing is on iff train.checkpoint_every > 0 or train.resume is set, and then also saves at the
    end; under torchrun a restarted group resumes with "auto". With train.async_checkpoint a save returns
    once a host snapshot of the rows is taken; its files are written in the background and the save is
    completed (manifest, rename, prune) by the next save, and by the run's last save at once."""

    def __init__(self, cfg: Config, parts, env: DistContext):
        self.cfg, self.parts, self.env = cfg, parts, env
        self.enabled = cfg.train.checkpoint_every > 0 or bool(resume_setting(cfg))
        self.last_path: str | None = None  # the newest checkpoint in place
        self.bad: list[str] = []  # checkpoints that failed verification at restore (pruned first)
        self.skipped_steps = 0  # as recorded by the checkpoint resumed from
        self.pending: checkpoint_save.PendingSave | None = None
        # rank 0, for summary.json: checkpoint_load_ms / _load_bytes / _load_gbps on resume; the last
        # save's checkpoint_save_ms / _bytes / _save_gbps / _stall_ms (the training thread's time in
        # save()), and checkpoint_saves / _stall_ms_max / _stall_ms_total over the run
        self.timings: dict[str, float] = {}
        if cfg.train.checkpoint_buffer_bytes < 1:
            raise ConfigError(
                f"config key 'train.checkpoint_buffer_bytes' is {cfg.train.checkpoint_buffer_bytes}; "
                "it must be >= 1"
            )

    def restore(self) -> int:
        """Resume from the checkpoint train.resume names (or the newest that verifies); returns its step, 0
        on a fresh start. checkpoint_load_ms includes the verification."""
        started = time.perf_counter()
        path, self.bad = choose_checkpoint(self.cfg, self.parts, self.env)
        if path is None:
            return 0
        buffer_bytes = self.cfg.train.checkpoint_buffer_bytes
        step = load(path, self.parts, self.env, check=False, buffer_bytes=buffer_bytes)
        self.env.barrier()  # the group's load time, not just this rank's
        seconds = time.perf_counter() - started
        manifest = read_manifest(path)
        read = _files_to_read(manifest, self.parts.embeddings, self.env)
        size = sum(os.path.getsize(os.path.join(path, n)) for n in read)  # this rank's reads
        self.timings.update(
            checkpoint_load_ms=seconds * 1e3,
            checkpoint_load_bytes=size,
            checkpoint_load_gbps=size / seconds / 1e9,
        )
        self.skipped_steps = manifest.get("skipped_steps", 0)
        self.last_path = path
        self.env.log(
            f"resumed from {path} at step {step} (loaded in {seconds * 1e3:.0f} ms, "
            f"{size / seconds / 1e9:.2f} GB/s)"
        )
        return step

    def due(self, step: int) -> bool:
        every = self.cfg.train.checkpoint_every
        return self.enabled and ((every > 0 and step % every == 0) or step == self.cfg.train.steps)

    def save(self, step: int, skipped_steps: int) -> str | None:
        """Collective: save step; returns the newest checkpoint in place (an asynchronous save is in place
        once completed: by the next save, or at once at the run's last step)."""
        started = time.perf_counter()
        self.wait()
        asynchronous = self.cfg.train.async_checkpoint
        pending = checkpoint_save.begin(
            self.cfg, self.parts, step, self.env, skipped_steps, snap=asynchronous
        )
        if asynchronous:
            pending.start()
        else:
            pending.write()
        self.pending = pending
        if not asynchronous or step == self.cfg.train.steps:
            self.wait()
        stall = (time.perf_counter() - started) * 1e3
        if self.env.rank == 0:
            n = self.timings.get("checkpoint_saves", 0) + 1
            self.timings.update(
                checkpoint_saves=n,
                checkpoint_stall_ms=stall,
                checkpoint_stall_ms_max=max(self.timings.get("checkpoint_stall_ms_max", 0), stall),
                checkpoint_stall_ms_total=self.timings.get("checkpoint_stall_ms_total", 0) + stall,
            )
        return self.last_path

    def wait(self) -> None:
        """Collective: complete the save under way, if any (its write failing on any rank: CheckpointError
        naming the file)."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        write_s, finish_s = checkpoint_save.complete(pending, self.bad)
        self.last_path = pending.final
        # a re-saved step replaced the checkpoint that failed: it counts again
        self.bad = [p for p in self.bad if p != self.last_path]
        if self.env.rank == 0:
            size = sum(
                os.path.getsize(os.path.join(self.last_path, n)) for n in os.listdir(self.last_path)
            )
            seconds = pending.snapshot_s + write_s + finish_s  # not the training in between
            self.timings.update(
                checkpoint_save_ms=seconds * 1e3,
                checkpoint_bytes=size,
                checkpoint_save_gbps=size / seconds / 1e9,
            )
            print(
                f"step {pending.step}: checkpoint {self.last_path} saved in {seconds * 1e3:.0f} ms "
                f"({size / 1e6:.2f} MB, {size / seconds / 1e9:.2f} GB/s)",
                flush=True,
            )
