"""Checkpoints: save, verify, load (at any world size), prune, and which one to resume from.

One checkpoint is <run.dir>/checkpoints/step_<N>/ (N = steps done = next data step):
    manifest.json        rank 0: step, world size, plan, table shapes, optimizer, config, and every file's
                         size and xxh3_64 (its own checksum too: training.checkpoint_files)
    dense.pt             rank 0: dense model state_dict and dense optimizer state (replicated by DDP)
    shard_<rank>.pt      every rank: its part of every table (embedding.state.shard_tables), its RNG
                         states and the embedding update counter
Saving: every rank hashes its shard as it writes it into .tmp_step_<N>/, rank 0 gathers the checksums into
the manifest (written last) and renames the directory into place; deletes rename to debris first
(checkpoint_files), so a crash at any moment leaves the previous checkpoints intact and nothing
half-written or half-deleted under a checkpoint's name. Loading: every rank verifies the files it reads;
under resume "auto" the ranks agree on the newest checkpoint that verifies on all of them. Loading keeps
the rows this rank owns under its current plan: a checkpoint written at W ranks loads at any W'
(docs/checkpoints.md).
"""

from __future__ import annotations

import os
import pickle
import time
import zipfile

import torch
import torch.distributed as dist

from training import checkpoint_files as files
from training.checkpoint_files import CheckpointError, read_manifest
from training.config import Config, to_dict
from training.distributed import DistContext, restart_count, unwrap
from training.guards import fail_point
from training.resume_checks import check_dense_optimizer


def resume_setting(cfg: Config) -> str:
    """train.resume, or "auto" when torchrun restarted the group after a failure."""
    return cfg.train.resume or ("auto" if restart_count() > 0 else "")


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


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


def _all_gather(env: DistContext, value) -> list:
    """Every rank's value, in rank order (collective)."""
    if env.world_size == 1:
        return [value]
    out = [None] * env.world_size
    dist.all_gather_object(out, value)
    return out


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


# ---- verify and choose ----------------------------------------------------------------------------------
def _files_to_read(manifest: dict, emb, env: DistContext) -> list[str]:
    shards = sorted(name for name in manifest["files"] if name.startswith("shard_"))
    if manifest["world_size"] == env.world_size and manifest["plan"] == _placements(emb):
        # own shard + rank 0's (replicated tables)
        shards = sorted({f"shard_{env.rank:05d}.pt", "shard_00000.pt"})
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
    found = [p for p in _all_gather(env, problem) if p]
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
    candidates = _all_gather(env, [p for _, p in complete_checkpoints(cfg.run.dir)])[0]
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


# ---- save -----------------------------------------------------------------------------------------------
def _save_hashed(obj, path: str) -> dict:
    return files.write_hashed(path, lambda f: torch.save(obj, f))


def save(cfg: Config, parts, step: int, env: DistContext, skipped_steps: int = 0, bad=()) -> str:
    """Collective: every rank writes its shard, rank 0 the dense state and manifest; returns the path.
    `bad`: checkpoints that failed verification (pruned first)."""
    root = checkpoint_root(cfg.run.dir)
    final, tmp = os.path.join(root, f"step_{step}"), os.path.join(root, f".tmp_step_{step}")
    if env.rank == 0:
        os.makedirs(root, exist_ok=True)
        files.clean(root)  # what interrupted saves and deletes left
        os.makedirs(tmp)
    env.barrier()
    emb = parts.embeddings
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    shard = {
        "step": step,
        "rank": env.rank,
        "world_size": env.world_size,
        "num_updates": emb.num_updates,
        "rng": rng,
        "tables": emb.shard_tables(),
    }
    written = {f"shard_{env.rank:05d}.pt": _save_hashed(shard, f"{tmp}/shard_{env.rank:05d}.pt")}
    if env.rank == 0:
        dense = {
            "model": unwrap(parts.model).state_dict(),
            "optimizer": parts.optimizer.state_dict(),
        }
        written["dense.pt"] = _save_hashed(dense, os.path.join(tmp, "dense.pt"))
    fail_point(cfg, env.rank, "save:shards")
    gathered = _all_gather(env, written)  # every shard is on disk, hashed by the rank that wrote it
    if env.rank == 0:
        manifest = {
            "step": step,
            "next_data_step": step,
            "world_size": env.world_size,
            "plan": _placements(emb),
            "tables": {t.name: [t.num_embeddings, t.dim] for t in emb.tables},
            "dynamic": table_kinds(emb),
            "sparse_optimizer": emb.optimizer.name,
            "skipped_steps": skipped_steps,
            "files": {name: e for part in gathered for name, e in sorted(part.items())},
            "config": to_dict(cfg),
        }
        files.write_manifest(tmp, manifest)
        fail_point(cfg, 0, "save:manifest")
        files.put_in_place(root, tmp, final, lambda: fail_point(cfg, 0, "save:rename"))
        prune(cfg, final, bad)
    env.barrier()
    return final


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


def _torch_load(path: str, **kwargs):
    """torch.load; a file it cannot read (a checkpoint without checksums) is an error naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} cannot be read: {first}") from None


def load(path: str, parts, env: DistContext, check: bool = True) -> int:
    """Load a checkpoint written at any world size into this rank's parts; returns its step. check=False
    where verify() has just run."""
    manifest = verify(path, parts, env) if check else read_manifest(path)
    emb = parts.embeddings
    _check_compatible(path, manifest, emb)
    *shards, _dense = _files_to_read(manifest, emb, env)
    index = {t.name: i for i, t in enumerate(emb.tables)}
    own_rng = None
    for name in shards:
        shard = _torch_load(os.path.join(path, name), mmap=True)
        emb.num_updates = int(shard["num_updates"])  # the same on every rank
        if shard["rank"] == env.rank or (own_rng is None and shard["rank"] == 0):
            own_rng = shard["rng"]
        for table_name, state in shard["tables"].items():
            emb.load_table_state(index[table_name], state, f"checkpoint {path}/{name}")
    dense = _torch_load(os.path.join(path, "dense.pt"))
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
        self.bad: list[str] = []  # checkpoints that failed verification at restore (pruned first)
        self.skipped_steps = 0  # as recorded by the checkpoint resumed from
        # checkpoint_save_ms / checkpoint_bytes / checkpoint_load_ms (rank 0)
        self.timings: dict[str, float] = {}

    def restore(self) -> int:
        """Resume from the checkpoint train.resume names (or the newest that verifies); returns its step, 0
        on a fresh start. checkpoint_load_ms includes the verification."""
        started = time.perf_counter()
        path, self.bad = choose_checkpoint(self.cfg, self.parts, self.env)
        if path is None:
            return 0
        step = load(path, self.parts, self.env, check=False)
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
        self.last_path = save(self.cfg, self.parts, step, self.env, skipped_steps, self.bad)
        # a re-saved step replaced the checkpoint that failed: it counts again
        self.bad = [p for p in self.bad if p != self.last_path]
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
