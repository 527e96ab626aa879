"""Checkpoints, resume, resharding, embedding export, input checks and fault injection for train.py.

Layout of one checkpoint, <run.dir>/checkpoints/step_<N>/ (N = steps done = next data step):
    manifest.json        rank 0: step, world size, plan, table shapes, optimizer, config, files and sizes
    dense.pt             rank 0: dense model state_dict and dense optimizer state (replicated by DDP)
    shard_<rank>.pt      every rank, in parallel: per table its local rows' global row ids and their
                         weight / sparse optimizer state / freq / last_step (replicated tables: rank 0
                         only; dynamic tables: the keys the rank owns, their rows and state, last step
                         seen, and the keys still counted for admission), the rank's RNG states and
                         the embedding update counter
Saving writes into .tmp_step_<N>/, then barrier, then rank 0 writes the manifest last and renames the
directory into place: a directory without manifest.json is never a checkpoint, so a crash mid-save
leaves the previous one intact. The last train.keep_checkpoints are kept.

Loading (torch.load(weights_only=True)) reads the shard files and keeps the rows this rank owns under
its *current* plan, so a checkpoint written at W ranks loads at any W' (resharding); dynamic tables'
keys are re-inserted under the new owner function (embedding.state.load_table_state).

Checkpointing is on iff train.checkpoint_every > 0 or train.resume is set; it then also saves at the
end. Under torchrun, a restarted group (TORCHELASTIC_RESTART_COUNT > 0) resumes with "auto".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from config import Config, to_dict

FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


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
        raise FileNotFoundError(f"train.resume={setting!r} is not a complete checkpoint (no manifest.json)")
    return setting


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def _dense_module(model):
    return getattr(model, "module", model)


def table_kinds(emb) -> dict[str, dict]:
    """The manifest's record of the dynamic tables (owner function: key_shards; W-free otherwise)."""
    return {t.name: {"key_shards": t.dynamic.key_shards} for t in emb.tables if t.dynamic}


# ---- save -----------------------------------------------------------------------------------------------
def save(cfg: Config, parts, step: int, rank: int, world_size: int, skipped_steps: int = 0) -> str:
    """Collective: every rank writes its shard, rank 0 the dense state and manifest; returns the path."""
    root = checkpoint_root(cfg.run.dir)
    final, tmp = os.path.join(root, f"step_{step}"), os.path.join(root, f".tmp_step_{step}")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier(world_size)
    emb = parts.embeddings
    tables = emb.shard_tables()
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    _save_durably({"step": step, "rank": rank, "world_size": world_size, "num_updates": emb.num_updates,
                   "rng": rng, "tables": tables}, os.path.join(tmp, f"shard_{rank:05d}.pt"))
    if rank == 0:
        _save_durably({"model": _dense_module(parts.model).state_dict(), "optimizer": parts.optimizer.state_dict()},
                      os.path.join(tmp, "dense.pt"))
    _barrier(world_size)  # every shard is on disk
    if rank == 0:
        files = {name: os.path.getsize(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
        manifest = {"format": FORMAT, "step": step, "next_data_step": step, "world_size": world_size,
                    "plan": {t.name: {"placement": emb.plan.placements[t.name].placement,
                                      "owner": emb.plan.placements[t.name].owner} for t in emb.tables},
                    "tables": {t.name: [t.num_embeddings, t.dim] for t in emb.tables}, "dynamic": table_kinds(emb),
                    "sparse_optimizer": emb.optimizer.name, "skipped_steps": skipped_steps, "files": files,
                    "config": to_dict(cfg)}
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)  # the rename itself survives a power loss
        prune(cfg.run.dir, cfg.train.keep_checkpoints)
    _barrier(world_size)
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
        m = re.match(r"^\.tmp_step_(\d+)$", name)
        if m and int(m.group(1)) <= newest:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


# ---- load -----------------------------------------------------------------------------------------------
def load(path: str, parts, rank: int, world_size: int) -> int:
    """Load a checkpoint written at any world size into this rank's parts; returns its step."""
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    emb = parts.embeddings
    want = {t.name: [t.num_embeddings, t.dim] for t in emb.tables}
    if manifest["tables"] != want:
        raise ValueError(f"checkpoint {path} has tables {manifest['tables']}, the config has {want}")
    if manifest.get("dynamic", {}) != table_kinds(emb):
        raise ValueError(f"checkpoint {path} has dynamic tables {manifest.get('dynamic', {})}, the config has "
                         f"{table_kinds(emb)} (--train.init_from starts from a run with other tables)")
    if manifest["sparse_optimizer"] != emb.optimizer.name:
        raise ValueError(f"checkpoint {path} was trained with sparse optimizer {manifest['sparse_optimizer']!r}, "
                         f"the config has {emb.optimizer.name!r}")
    shards = sorted(name for name in manifest["files"] if name.startswith("shard_"))
    same_layout = manifest["world_size"] == world_size and all(
        manifest["plan"][t.name] == {"placement": emb.plan.placements[t.name].placement,
                                     "owner": emb.plan.placements[t.name].owner} for t in emb.tables)
    if same_layout:  # own shard + rank 0's (replicated tables)
        shards = sorted({f"shard_{rank:05d}.pt", "shard_00000.pt"})
    index = {t.name: i for i, t in enumerate(emb.tables)}
    own_rng = None
    for name in shards:
        shard = torch.load(os.path.join(path, name), map_location="cpu", weights_only=True, mmap=True)
        emb.num_updates = int(shard["num_updates"])  # the same on every rank
        if shard["rank"] == rank or (own_rng is None and shard["rank"] == 0):
            own_rng = shard["rng"]
        for table_name, state in shard["tables"].items():
            emb.load_table_state(index[table_name], state, f"checkpoint {path}/{name}")
    dense = torch.load(os.path.join(path, "dense.pt"), map_location="cpu", weights_only=True)
    _dense_module(parts.model).load_state_dict(dense["model"])
    parts.optimizer.load_state_dict(dense["optimizer"])
    if own_rng is not None:
        torch.set_rng_state(own_rng["torch"])
        if "cuda" in own_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(own_rng["cuda"])
    return int(manifest["step"])


# ---- digest and export ----------------------------------------------------------------------------------
def weights_digest(parts) -> str:
    """sha256 over the dense state_dict (sorted keys, float32 bytes of this rank's replica) and every table's
    64-bit digest (ShardedEmbeddingCollection.table_digests, computed on the device shard by shard).

    Collective; same value on every rank and at every world size and plan. Tables are never gathered: the
    host holds at most the dense model, and the device one chunk of one shard at a time."""
    table_digests = parts.embeddings.table_digests()
    h = hashlib.sha256()
    for key, value in sorted(_dense_module(parts.model).state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    for table, digest in zip(parts.embeddings.tables, table_digests, strict=True):
        h.update(table.name.encode())
        h.update(digest.to_bytes(8, "little"))
    return h.hexdigest()


def export_embeddings(parts, out_dir: str, min_freq: int, rank: int, since_step: int = 0) -> dict[str, int]:
    """Collective. Rank 0 writes <out_dir>/<table>/{keys,values,freq,last_step}.npy (sorted by key: row ids of static
    tables, raw keys of dynamic ones) for rows looked up at least max(min_freq, 1) times and updated after
    since_step (incremental export), and <out_dir>/meta.json (step, the filters, each table's dim, kind and rows).
    Only the exported rows are gathered, one table at a time. Returns {table: rows exported}."""
    emb = parts.embeddings
    counts, tables = {}, {}
    for t, table in enumerate(emb.tables):
        parts_ = [p for p in emb.exchange.gather_objects(emb.export_rows(t, min_freq, since_step)) if p is not None]
        keys = torch.cat([p[0] for p in parts_])
        counts[table.name] = keys.numel()
        tables[table.name] = {"dim": table.dim, "dynamic": table.dynamic is not None, "rows": keys.numel(),
                              "num_embeddings": table.num_embeddings}
        if rank == 0:
            order = torch.argsort(keys)
            d = os.path.join(out_dir, table.name)
            os.makedirs(d, exist_ok=True)
            for i, name in enumerate(EXPORT_FILES):
                np.save(os.path.join(d, f"{name}.npy"), torch.cat([p[i] for p in parts_])[order].numpy())
    if rank == 0:
        meta = {"step": emb.num_updates, "since_step": since_step, "min_freq": min_freq, "tables": tables}
        with open(os.path.join(out_dir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
    return counts


EXPORT_FILES = ("keys", "values", "freq", "last_step")


def load_export(out_dir: str, table: str) -> dict[str, np.ndarray]:
    return {name: np.load(os.path.join(out_dir, table, f"{name}.npy")) for name in EXPORT_FILES}


# ---- input checks -----------------------------------------------------------------------------------------
def sample_index(first_sample: int):
    """where() for check_batch when samples have a global index (synthetic data): "sample <first + b>"."""
    return lambda b, key, column=0: f"sample {first_sample + b}"


def check_batch(batch, at: str, where):
    """Raise ValueError naming `at` (e.g. "step 5"), the sample and the value for NaN/inf dense features
    or labels outside [0, 1]. where(b, key, column) names the batch's b-th sample: sample_index() for
    synthetic data, BinaryDataset.describe_rows() for a dataset (file, row and byte offset)."""
    bad = ~torch.isfinite(batch.dense)
    if bool(bad.any()):
        b, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"{at}: dense feature {j} of {where(b, 'dense', j)} is {float(batch.dense[b, j])}")
    bad = ~((batch.labels >= 0) & (batch.labels <= 1))  # NaN fails both comparisons
    if bool(bad.any()):
        b = int(bad.nonzero()[0])
        raise ValueError(f"{at}: label of {where(b, 'labels', 0)} is {float(batch.labels[b])}, "
                         "expected a value in [0, 1]")
    return batch


def checked_batches(batches, global_batch: int, rank: int, world_size: int, first_step: int):
    """Wrap local_batches(..., first_step): check every batch before it reaches the model."""
    local = global_batch // world_size
    for step, batch in enumerate(batches, start=first_step + 1):
        yield check_batch(batch, f"step {step}", sample_index((step - 1) * global_batch + rank * local))


# ---- the training-loop hooks -----------------------------------------------------------------------------
class NonFiniteLoss(FloatingPointError):
    pass


class Checkpointer:
    """What train.py calls: restore() before the loop, before_backward() in every step, step_done() after
    every step, check_losses() with the all-reduced window losses at log steps, finish() for the summary."""

    def __init__(self, cfg: Config, parts, rank: int, world_size: int):
        self.cfg, self.parts, self.rank, self.world_size = cfg, parts, rank, world_size
        self.enabled = cfg.train.checkpoint_every > 0 or bool(resume_setting(cfg))
        self.last_path: str | None = None
        self.last_step_saved = -1
        self.first_step = self.steps_done = 0
        self.skipped_steps = 0  # steps skipped for a non-finite loss (train.skip_nonfinite_loss)
        self.timings: dict[str, float] = {}  # checkpoint_save_ms / checkpoint_bytes / checkpoint_load_ms (rank 0)
        device = parts.embeddings.weight.device
        self._never = torch.tensor(2**62, dtype=torch.int64, device=device)
        self._first_bad = self._never.clone()  # first local step with a non-finite loss (no host sync per step)

    def restore(self) -> int:
        path = resolve_resume(self.cfg)
        if path is None and self.cfg.train.init_from:  # a new run from another run's tables (warm_start.py)
            from warm_start import warm_start
            self.timings["warm_start"] = warm_start(self.cfg.train.init_from, self.parts, self.rank)
        if path is not None:
            started = time.perf_counter()
            self.first_step = self.steps_done = load(path, self.parts, self.rank, self.world_size)
            _barrier(self.world_size)  # the group's load time, not just this rank's
            self.timings["checkpoint_load_ms"] = (time.perf_counter() - started) * 1e3
            with open(os.path.join(path, "manifest.json")) as f:
                self.skipped_steps = json.load(f).get("skipped_steps", 0)
            self.last_path, self.last_step_saved = path, self.first_step
            if self.rank == 0:
                print(f"resumed from {path} at step {self.first_step} "
                      f"(loaded in {self.timings['checkpoint_load_ms']:.0f} ms)", flush=True)
        return self.first_step

    def _raise_nonfinite(self, step: int) -> None:
        where = self.last_path or "none (nothing saved yet)"
        raise NonFiniteLoss(f"loss is NaN/inf at step {step}; training stopped, last good checkpoint: {where} "
                            "(train.skip_nonfinite_loss=true skips such steps instead)")

    def before_backward(self, loss: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(loss, skip): called between the loss and backward. With train.skip_nonfinite_loss, skip is True on
        every rank when the loss is NaN/inf on any rank (one all-reduce of a flag and one host sync per step);
        the sparse update runs inside backward, so this is the last point where a step can still be dropped.
        Also the fault injection train.inject_nan_loss_step / inject_nan_loss_rank."""
        t, step = self.cfg.train, self.steps_done + 1
        if t.inject_nan_loss_step == step and t.inject_nan_loss_rank == self.rank:
            loss = loss * float("nan")
        if not t.skip_nonfinite_loss:
            return loss, False
        bad = (~torch.isfinite(loss.detach())).to(torch.int32).reshape(1)
        if self.world_size > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bool(bad):
            return loss, False
        self.skipped_steps += 1
        if self.rank == 0:
            print(f"step {step}: loss is NaN/inf on a rank; step skipped on every rank (train.skip_nonfinite_loss), "
                  f"{self.skipped_steps} skipped so far", flush=True)
        return loss, True

    def check_losses(self, losses: torch.Tensor, step: int) -> torch.Tensor:
        """losses: the all-reduced per-step losses of the window ending at step (same on every rank).
        Returns the losses of the steps that were applied (skipped steps' losses are NaN/inf)."""
        finite = torch.isfinite(losses)
        if self.cfg.train.skip_nonfinite_loss:
            return losses[finite]
        bad = (~finite).nonzero()
        if bad.numel():
            self._raise_nonfinite(step - losses.numel() + 1 + int(bad[0]))
        self._first_bad = self._never.clone()
        return losses

    def _check_collective(self) -> None:
        first_bad = self._first_bad.clone()
        if self.world_size > 1:
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        if int(first_bad) != int(self._never):
            self._raise_nonfinite(int(first_bad))

    def step_done(self, step: int, loss: torch.Tensor) -> None:
        cfg = self.cfg
        self.steps_done = step
        if not cfg.train.skip_nonfinite_loss:  # skipped steps changed nothing: their loss is no reason to stop
            self._first_bad = torch.where(torch.isfinite(loss) | (self._first_bad != self._never), self._first_bad,
                                          torch.tensor(step, device=self._first_bad.device))
        inject_fault(cfg, self.rank, step)
        every = cfg.train.checkpoint_every
        if self.enabled and ((every > 0 and step % every == 0) or step == cfg.train.steps):
            self.save(step)

    def save(self, step: int) -> str:
        self._check_collective()  # never write weights that a non-finite loss has touched
        started = time.perf_counter()
        self.last_path = save(self.cfg, self.parts, step, self.rank, self.world_size, self.skipped_steps)
        self.last_step_saved = step
        if self.rank == 0:  # save() ends with a barrier: this is the whole group's time
            size = sum(os.path.getsize(os.path.join(self.last_path, n)) for n in os.listdir(self.last_path))
            self.timings.update(checkpoint_save_ms=(time.perf_counter() - started) * 1e3, checkpoint_bytes=size)
            print(f"step {step}: checkpoint {self.last_path} saved in {self.timings['checkpoint_save_ms']:.0f} ms "
                  f"({size / 1e6:.2f} MB)", flush=True)
        return self.last_path

    def finish(self, summary: dict) -> dict:
        """Collective: weights_digest (and the export when export.enabled) into the summary."""
        summary["weights_digest"] = weights_digest(self.parts)
        if self.parts.embeddings.dynamic:  # collective
            summary["dynamic"] = self.parts.embeddings.dynamic_metrics()
        summary["skipped_steps"] = self.skipped_steps
        if self.cfg.export.enabled:
            out_dir = self.cfg.export.dir or os.path.join(self.cfg.run.dir, "export")
            summary["export"] = {"dir": out_dir, "rows": export_embeddings(self.parts, out_dir, self.cfg.export.min_freq,
                                                                           self.rank, self.cfg.export.since_step)}
        if self.last_path:
            summary["checkpoint"] = self.last_path
        summary.update(self.timings)
        return summary


def inject_fault(cfg: Config, rank: int, step: int) -> None:
    """Test-only faults after `step`, on the first torchrun attempt: train.fail_at_step (rank exits
    abruptly) and train.hang_at_step (rank stops entering collectives: the others must time out)."""
    t = cfg.train
    if restart_count() > 0:
        return
    if t.fail_at_step == step and t.fail_rank == rank:
        print(f"rank {rank}: injected failure at step {step} (train.fail_at_step)", flush=True)
        os._exit(1)
    if t.hang_at_step == step and t.hang_rank == rank:
        # one write with its newline: other ranks' lines share the pipe
        sys.stdout.write(f"rank {rank}: injected hang at step {step} (train.hang_at_step), pid {os.getpid()}\n")
        sys.stdout.flush()
        time.sleep(max(100 * t.timeout_s, 600))
        os._exit(1)


def init_process_group(backend: str, timeout, device_id=None) -> None:
    """init_process_group whose store keys are prefixed by the torchrun attempt: a restarted group would
    otherwise read the dead attempt's addresses from the agent's store (gloo: "connection refused")."""
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    store = dist.PrefixStore(f"recfuse_attempt_{restart_count()}", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout, device_id=device_id)


@contextlib.contextmanager
def explain_timeouts(cfg: Config):
    """Turn a collective timeout into an error that names the timeout and its config key."""
    try:
        yield
    except RuntimeError as e:
        text = str(e)
        if ("timed out" in text.lower() or "timeout" in text.lower()) and "connection refused" not in text.lower():
            first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
            raise RuntimeError(f"a collective did not complete within train.timeout_s={cfg.train.timeout_s:g} s: "
                               f"a rank is hung or died (raise train.timeout_s if this is expected). {first}") from e
        raise
