"""Process groups and devices: which device a rank uses, the groups it talks on, and what a timeout means.

Every rank runs the same program; ``DistContext`` is what the rest of the training code knows of the others.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from training.config import Config


@dataclass
class DistContext:
    """This process's place in the run: rank of world_size, its device and the embedding exchange's group
    (None when W = 1)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    group: object = None
    input_group: object = None  # the embeddings' id exchange (input_dist)

    def log(self, *args) -> None:
        """Print from rank 0 only: every rank runs the same code, one copy of each line is enough."""
        if self.rank == 0:
            print(*args, flush=True)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def synchronize(self) -> None:
        """Wait for the device: wall-clock timings must not stop while its kernels still run."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def restart_count() -> int:
    """How often torchrun restarted this group after a failure (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def pick_device(
    cfg: Config, local_rank: int, local_world: int, gpus: int
) -> tuple[str, torch.device, str]:
    """(backend, device, note) for local rank r of local_world ranks on a node with `gpus` CUDA devices.

    Rank r uses GPU r % gpus. NCCL needs a GPU per rank; with fewer GPUs than local ranks run.backend "auto"
    falls back to gloo (it takes CUDA tensors for all-reduce, all-to-all and DDP), so W ranks can share one
    GPU for tests and debugging; an explicit "nccl" is then an error that says so."""
    use_cuda = cfg.run.device == "cuda" or (cfg.run.device == "auto" and gpus > 0)
    backend = cfg.run.backend if cfg.run.backend != "auto" else ("nccl" if use_cuda else "gloo")
    if not use_cuda:
        return backend, torch.device("cpu"), ""
    if gpus == 0:
        raise RuntimeError("run.device=cuda but torch sees no CUDA device")
    note = ""
    if local_world > gpus and backend == "nccl":
        if cfg.run.backend == "nccl":
            raise ValueError(
                f"run.backend=nccl needs one GPU per rank, but this node runs {local_world} ranks on "
                f"{gpus} GPU(s); use --run.backend gloo to share GPUs"
            )
        backend, note = (
            "gloo",
            f"{local_world} ranks on {gpus} GPU(s): backend gloo (NCCL needs one GPU per rank)",
        )
    return backend, torch.device("cuda", local_rank % gpus), note


def setup_distributed(cfg: Config) -> DistContext:
    """Rank, world size and device from torchrun's environment; the process groups when W > 1."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend, device, note = pick_device(cfg, local_rank, local_world, gpus)
    env = DistContext(rank, world_size, device)
    if note:
        env.log(note)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1:
        timeout = timedelta(seconds=cfg.train.timeout_s)
        # nccl binds the group to this rank's GPU; gloo sharing a GPU must not (device_id is nccl's)
        init_process_group(backend, timeout, device if backend == "nccl" else None)
        # embedding exchanges stay apart from DDP's all-reduces; new_group's timeout does not default to the world's
        env.group = dist.new_group(backend=backend, timeout=timeout)
        # and the next batch's ids (input_dist, pipelined on a side stream) from both
        env.input_group = dist.new_group(backend=backend, timeout=timeout)
    return env


# process groups this process has joined: a process that runs train.main more than once (tests run
# several configs in one launch) must not read its earlier group's keys from the same store
_JOINED = itertools.count()


def init_process_group(backend: str, timeout, device_id=None) -> None:
    """init_process_group whose store keys are prefixed by the torchrun attempt: a restarted group would
    otherwise read the dead attempt's addresses from the agent's store (gloo: "connection refused")."""
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    joined = next(_JOINED)
    prefix = f"recfuse_attempt_{restart_count()}" + (f"_group_{joined}" if joined else "")
    store = dist.PrefixStore(prefix, store)
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world_size, timeout=timeout, device_id=device_id
    )


def shutdown(env: DistContext) -> None:
    if env.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The dense network inside DDP (its state_dict keys carry no "module." prefix)."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def explain_timeouts(cfg: Config):
    """Turn a collective timeout into an error that names the timeout and its config key."""
    try:
        yield
    except RuntimeError as e:
        text = str(e)
        if (
            "timed out" in text.lower() or "timeout" in text.lower()
        ) and "connection refused" not in text.lower():
            first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
            raise RuntimeError(
                f"a collective did not complete within train.timeout_s={cfg.train.timeout_s:g} s: "
                f"a rank is hung or died (raise train.timeout_s if this is expected). {first}"
            ) from e
        raise
