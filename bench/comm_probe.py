"""One rank of a W-rank train.py run that measures its local work apart from its communication.

Launched by bench/local_work.py under torchrun (W processes, possibly sharing one device):

    python -m torch.distributed.run --nproc_per_node=W bench/comm_probe.py --out DIR -- <train.py args>

It runs train.py unchanged with three instruments around it:
- every torch.distributed collective the step calls (the embedding exchange, the guards' all-reduces),
  DDP's gradient all-reduce (a comm hook) and DDP's forward preamble (its bucket rebuild and buffer
  broadcast) runs synchronously, the device synchronized before and after,
  and its wall time is charged to the innermost training.stages stage it ran in;
- a device lock (an flock on DIR/device.lock) serializes the ranks' local work: a rank holds it inside
  its outermost stage and gives it up for every collective, so each rank's kernels run alone on the
  device, as they would on a device of their own, while the others wait (counted as communication);
- at every StageTimer.collect it records the stage totals, the communication charged to each stage, the
  collectives' calls and bytes, and the training steps since the previous one.
Each rank writes DIR/probe_rank<r>.json at exit. local work of a stage = its time - its communication.
Collectives are serialized where the trainer overlaps them, and a stage ends with a device sync: the
local work measured this way can only be longer than the trainer's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from training import jsonio  # noqa: E402
from training.stages import StageTimer  # noqa: E402

# the collectives the training code calls as dist.<name>; each is wrapped where torch has it
COLLECTIVES = (
    "all_to_all_single",
    "all_to_all",
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "reduce_scatter_tensor",
    "broadcast",
    "barrier",
)
LOCK_TIMEOUT_S = 120.0  # a rank holding the lock in a collective nobody wrapped would hang the run
OUTSIDE = "outside_stages"  # charge of collectives run outside any stage (log lines, evaluation)


class DeviceLock:
    """An exclusive flock shared by the ranks of one machine, polled so that a deadlock ends in an error."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        self.held = False

    def acquire(self) -> None:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.held = True
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        "comm_probe: device lock not acquired in time; another rank holds it inside a "
                        "collective comm_probe does not wrap"
                    ) from None
                time.sleep(2e-4)

    def release(self) -> None:
        self.held = False
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class Probe:
    """The instruments' state in this process: the stage stack, the lock and the per-window counters."""

    def __init__(self, lock: DeviceLock | None, device_sync):
        self.lock, self.sync = lock, device_sync
        self.stack: list[str] = []
        self.depth = (
            0  # collectives under way: one inside another is charged once, by the outer one
        )
        self.windows: list[dict] = []
        self._new_window()

    def _new_window(self) -> None:
        self.steps, self.comm_ms, self.calls, self.bytes = 0, {}, {}, {}

    def enter_stage(self, name: str) -> None:
        if not self.stack and self.lock is not None:
            self.lock.acquire()
        self.stack.append(name)
        if name == "dense_fwd":  # once per training step
            self.steps += 1

    def exit_stage(self) -> None:
        self.stack.pop()
        if not self.stack and self.lock is not None:
            self.sync()  # this rank's kernels finish before another rank's start
            self.lock.release()

    @contextlib.contextmanager
    def collective(self, kind: str, nbytes: int, stage: str | None = None):
        """Times a collective run to completion, charged to ``stage`` (default: the innermost one)."""
        if self.depth:
            yield
            return
        stage = stage or (self.stack[-1] if self.stack else OUTSIDE)
        self.sync()  # local work queued before the collective is local work
        started = time.perf_counter()
        holding = self.lock is not None and self.lock.held
        if holding:
            self.lock.release()
        self.depth += 1
        try:
            yield
            self.sync()
        finally:
            self.depth -= 1
            if holding:
                self.lock.acquire()
            ms = (time.perf_counter() - started) * 1e3
            self.comm_ms[stage] = self.comm_ms.get(stage, 0.0) + ms
            key = f"{stage}/{kind}"
            self.calls[key] = self.calls.get(key, 0) + 1
            self.bytes[key] = self.bytes.get(key, 0) + nbytes

    def record_window(self, stage_ms: dict) -> None:
        self.windows.append(
            {
                "steps": self.steps,
                "stage_ms": dict(stage_ms),
                "comm_ms": self.comm_ms,
                "calls": self.calls,
                "bytes": self.bytes,
            }
        )
        self._new_window()


def _tensor_bytes(args, kwargs, position: int, name: str) -> int:
    tensor = kwargs.get(name, args[position] if len(args) > position else None)
    return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0


# which argument is the buffer a rank sends, by collective (0 bytes counted for the others)
SEND_ARG = {
    "all_to_all_single": (1, "input"),
    "all_reduce": (0, "tensor"),
    "broadcast": (0, "tensor"),
}


def _wrap_collective(probe: Probe, name: str, original):
    def wrapped(*args, **kwargs):
        nbytes = _tensor_bytes(args, kwargs, *SEND_ARG[name]) if name in SEND_ARG else 0
        with probe.collective(name, nbytes):
            work = original(*args, **kwargs)
            if kwargs.get("async_op") and work is not None:
                work.wait()
        return work

    return wrapped


def _ddp_hook(probe: Probe, all_reduce):
    """DDP comm hook: the bucket's all-reduce, synchronous and charged to dense_bwd (DDP's default hook
    divides by the world size and all-reduces: the same sum)."""

    def hook(state, bucket):
        buffer = bucket.buffer()
        buffer.div_(dist.get_world_size())
        with probe.collective("ddp_allreduce", buffer.numel() * buffer.element_size(), "dense_bwd"):
            all_reduce(buffer)
        future = torch.futures.Future()
        future.set_result(buffer)
        return future

    return hook


def install(probe: Probe) -> None:
    """Wraps torch.distributed's collectives, StageTimer.stage/collect and DDP's constructor."""
    originals = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}
    for name, original in originals.items():
        setattr(dist, name, _wrap_collective(probe, name, original))
    stage, collect = StageTimer.stage, StageTimer.collect

    @contextlib.contextmanager
    def probed_stage(self, name):
        probe.enter_stage(name)
        try:
            with stage(self, name):
                yield
        finally:
            probe.exit_stage()

    def probed_collect(self):
        totals = collect(self)
        probe.record_window(totals)
        return totals

    StageTimer.stage, StageTimer.collect = probed_stage, probed_collect
    _probe_ddp(probe, originals["all_reduce"])


def _probe_ddp(probe: Probe, all_reduce) -> None:
    """DDP's gradient all-reduce through a timed comm hook; its forward's collectives (bucket rebuild and
    buffer broadcast, made in C++ by DistributedDataParallel._pre_forward) as one collective."""
    ddp = torch.nn.parallel.DistributedDataParallel
    ddp_init, pre_forward = ddp.__init__, getattr(ddp, "_pre_forward", None)
    register = ddp.register_comm_hook

    def probed_ddp_init(self, *args, **kwargs):
        ddp_init(self, *args, **kwargs)
        register(self, None, _ddp_hook(probe, all_reduce))

    def probed_register(self, state, hook):
        """training.build registers DDP's allreduce_hook (divide, then all-reduce): the probe's hook, set at
        construction (a DDP takes one), does the same, timed."""

    ddp.register_comm_hook = probed_register

    def probed_pre_forward(self, *args, **kwargs):
        with probe.collective("ddp_pre_forward", 0):
            return pre_forward(self, *args, **kwargs)

    ddp.__init__ = probed_ddp_init
    if (
        pre_forward is not None
    ):  # a torch without it: a collective there ends in the lock's timeout error
        ddp._pre_forward = probed_pre_forward


def _device_sync():
    """Waits for this rank's device: the probe's clock must not stop while its kernels run."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    own, train_args = argv[:split], argv[split + 1 :]
    out = own[own.index("--out") + 1]
    lock = None if "--no-lock" in own else DeviceLock(os.path.join(out, "device.lock"))
    probe = Probe(lock, _device_sync)
    install(probe)
    import train

    rank = int(os.environ.get("RANK", "0"))
    try:
        train.main(train_args)
    finally:
        with open(os.path.join(out, f"probe_rank{rank}.json"), "w") as f:
            jsonio.dump({"rank": rank, "lock": lock is not None, "windows": probe.windows}, f)


if __name__ == "__main__":
    main()
