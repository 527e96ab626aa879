"""Checkpoints: save, load (at any world size), prune, and which one to resume from.

One checkpoint is <run.dir>/checkpoints/step_<N>/ (N = steps done = next data step):
    manifest.json        rank 0: step, world size, plan, table shapes, optimizer, config, files and sizes
    dense.pt             rank 0: dense model state_dict and dense optimizer state (replicated by DDP)
    shard_<rank>.pt      every rank: its part of every table (embedding.state.shard_tables), its RNG
                         states and the embedding update counter
Saving writes into .tmp_step_<N>/ and rank 0 renames it into place after writing the manifest last, so a
directory without manifest.json is never a checkpoint and a crash mid-save leaves the previous one intact.
Loading keeps the rows this rank owns under its current plan: a checkpoint written at W ranks loads at
any W' (docs/checkpoints.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import torch

from training import jsonio
from training.config import Config, to_dict
from training.distributed import DistContext, restart_count, unwrap
from training.resume_checks import check_dense_optimizer

FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_DIR = re.compile(r"^\.tmp_step_(\d+)$")


def resume_setting(cfg: Config) -> str:
    """train.resume, or "auto" when torchrun restarted the group after a failure."""
    return cfg.train.resume or ("auto" if restart_count() > 0 else "")


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def complete_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint (has manifest.json) in run_dir, oldest first."""
    root = checkpoint_root(run_dir)
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        m = _STEP_DIR.match(name)
        if m and os.path.isfile(os.path.join(root, name, "manifest.json")):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def resolve_resume(cfg: Config) -> str | None:
    """Checkpoint directory to resume from, or None for a fresh start."""
    setting = resume_setting(cfg)
    if not setting:
        return None
    if setting == "auto":
        found = complete_checkpoints(cfg.run.dir)
        return found[-1][1] if found else None
    if not os.path.isfile(os.path.join(setting, "manifest.json")):
        raise FileNotFoundError(
            f"train.resume={setting!r} is not a complete checkpoint (no manifest.json)"
        )
    return setting


def read_manifest(path: str) -> dict:
    with open(os.path.join(path, "manifest.json")) as f:
        return json.load(f)


def table_kinds(emb) -> dict[str, dict]:
    """The manifest's record of the dynamic tables (owner function: key_shards; W-free otherwise)."""
    return {t.name: {"key_shards": t.dynamic.key_shards} for t in emb.tables if t.dynamic}


def _placements(emb) -> dict[str, dict]:
    return {
        t.name: {
            "placement": emb.plan.placements[t.name].placement,
            "owner": emb.plan.placements[t.name].owner,
        }
        for t in emb.tables
    }


# ---- save -----------------------------------------------------------------------------------------------
def save(cfg: Config, parts, step: int, env: DistContext, skipped_steps: int = 0) -> str:
    """Collective: every rank writes its shard, rank 0 the dense state and manifest; returns the path."""
    root = checkpoint_root(cfg.run.dir)
    final, tmp = os.path.join(root, f"step_{step}"), os.path.join(root, f".tmp_step_{step}")
    if env.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    env.barrier()
    emb = parts.embeddings
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    _save_durably(
        {
            "step": step,
            "rank": env.rank,
            "world_size": env.world_size,
            "num_updates": emb.num_updates,
            "rng": rng,
            "tables": emb.shard_tables(),
        },
        os.path.join(tmp, f"shard_{env.rank:05d}.pt"),
    )
    if env.rank == 0:
        _save_durably(
            {"model": unwrap(parts.model).state_dict(), "optimizer": parts.optimizer.state_dict()},
            os.path.join(tmp, "dense.pt"),
        )
    env.barrier()  # every shard is on disk
    if env.rank == 0:
        files = {name: os.path.getsize(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
        manifest = {
            "format": FORMAT,
            "step": step,
            "next_data_step": step,
            "world_size": env.world_size,
            "plan": _placements(emb),
            "tables": {t.name: [t.num_embeddings, t.dim] for t in emb.tables},
            "dynamic": table_kinds(emb),
            "sparse_optimizer": emb.optimizer.name,
            "skipped_steps": skipped_steps,
            "files": files,
            "config": to_dict(cfg),
        }
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            jsonio.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)  # the rename itself survives a power loss
        prune(cfg.run.dir, cfg.train.keep_checkpoints)
    env.barrier()
    return final


def _save_durably(obj, path: str) -> None:
    """torch.save, flushed to the disk: the manifest written after the barrier must not point at shard
    bytes still in the page cache when the power goes."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(run_dir: str, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (keep <= 0 keeps all) and stale temporaries."""
    root = checkpoint_root(run_dir)
    found = complete_checkpoints(run_dir)
    for _, path in found[: max(len(found) - keep, 0)] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    newest = found[-1][0] if found else -1
    for name in os.listdir(root):
        m = _TMP_DIR.match(name)
        if m and int(m.group(1)) <= newest:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


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


def load(path: str, parts, env: DistContext) -> int:
    """Load a checkpoint written at any world size into this rank's parts; returns its step."""
    manifest = read_manifest(path)
    emb = parts.embeddings
    _check_compatible(path, manifest, emb)
    shards = sorted(name for name in manifest["files"] if name.startswith("shard_"))
    if manifest["world_size"] == env.world_size and manifest["plan"] == _placements(emb):
        # own shard + rank 0's (replicated tables)
        shards = sorted({f"shard_{env.rank:05d}.pt", "shard_00000.pt"})
    index = {t.name: i for i, t in enumerate(emb.tables)}
    own_rng = None
    for name in shards:
        shard = torch.load(
            os.path.join(path, name), map_location="cpu", weights_only=True, mmap=True
        )
        emb.num_updates = int(shard["num_updates"])  # the same on every rank
        if shard["rank"] == env.rank or (own_rng is None and shard["rank"] == 0):
            own_rng = shard["rng"]
        for table_name, state in shard["tables"].items():
            emb.load_table_state(index[table_name], state, f"checkpoint {path}/{name}")
    dense = torch.load(os.path.join(path, "dense.pt"), map_location="cpu", weights_only=True)
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
    end; under torchrun a restarted group resumes with "auto"."""

    def __init__(self, cfg: Config, parts, env: DistContext):
        self.cfg, self.parts, self.env = cfg, parts, env
        self.enabled = cfg.train.checkpoint_every > 0 or bool(resume_setting(cfg))
        self.last_path: str | None = None
        self.skipped_steps = 0  # as recorded by the checkpoint resumed from
        # checkpoint_save_ms / checkpoint_bytes / checkpoint_load_ms (rank 0)
        self.timings: dict[str, float] = {}

    def restore(self) -> int:
        """Resume from the checkpoint train.resume names (or the newest one); returns its step, 0 on a fresh start."""
        path = resolve_resume(self.cfg)
        if path is None:
            return 0
        started = time.perf_counter()
        step = load(path, self.parts, self.env)
        self.env.barrier()  # the group's load time, not just this rank's
        self.timings["checkpoint_load_ms"] = (time.perf_counter() - started) * 1e3
        self.skipped_steps = read_manifest(path).get("skipped_steps", 0)
        self.last_path = path
        self.env.log(
            f"resumed from {path} at step {step} (loaded in {self.timings['checkpoint_load_ms']:.0f} ms)"
        )
        return step

    def due(self, step: int) -> bool:
        every = self.cfg.train.checkpoint_every
        return self.enabled and ((every > 0 and step % every == 0) or step == self.cfg.train.steps)

    def save(self, step: int, skipped_steps: int) -> str:
        started = time.perf_counter()
        self.last_path = save(self.cfg, self.parts, step, self.env, skipped_steps)
        if self.env.rank == 0:  # save() ends with a barrier: this is the whole group's time
            size = sum(
                os.path.getsize(os.path.join(self.last_path, n)) for n in os.listdir(self.last_path)
            )
            self.timings.update(
                checkpoint_save_ms=(time.perf_counter() - started) * 1e3, checkpoint_bytes=size
            )
            print(
                f"step {step}: checkpoint {self.last_path} saved in {self.timings['checkpoint_save_ms']:.0f} ms "
                f"({size / 1e6:.2f} MB)",
                flush=True,
            )
        return self.last_path
