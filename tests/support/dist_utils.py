"""Run a function on W real processes (gloo, CPU) and collect rank 0's return value.

The W processes are started once per world size and serve every later call (tests/support/dist_worker.py):
process start and imports (torch, the test's module) cost more than most of the runs. Each call is still a
fresh process group (init, fn, destroy), in the caller's environment, working directory and sys.path at the
call, as a newly spawned process would see them; a rank that fails ends all W (and the next call starts new ones).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import socket
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection, wait

import torch
import torch.distributed as dist

from tests.support.paths import ROOT


def _entry(rank, world_size, init_file, fn, args, out_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        group = dist.new_group(backend="gloo")
        result = fn(rank, world_size, group, *args)
        if rank == 0:
            torch.save(result, out_path)
    finally:
        dist.destroy_process_group()


class RankFailed(RuntimeError):
    """A rank of run_distributed raised or died; the message holds its traceback and output."""


class _Ranks:
    """W worker processes, each holding one end of a socket pair."""

    def __init__(self, world_size: int):
        self.world_size, self.procs, self.conns = world_size, [], []
        for rank in range(world_size):
            ours, theirs = socket.socketpair()
            argv = [sys.executable, "-m", "tests.support.dist_worker", str(rank), str(world_size)]
            argv.append(str(theirs.fileno()))
            # not a multiprocessing child: tests that count multiprocessing.active_children() see none
            self.procs.append(subprocess.Popen(argv, cwd=ROOT, pass_fds=[theirs.fileno()]))
            theirs.close()
            self.conns.append(Connection(ours.detach()))

    def run(self, fn, args, tmp: str):
        """fn on every rank; rank 0's result. Raises RankFailed (after ending every rank) if a rank fails."""
        out_path = os.path.join(tmp, "result.pt")
        logs = [os.path.join(tmp, f"rank{r}.log") for r in range(self.world_size)]
        job = pickle.dumps((fn, args, os.path.join(tmp, "init"), out_path))
        for conn, log in zip(self.conns, logs, strict=True):
            conn.send((dict(os.environ), os.getcwd(), list(sys.path), log))
            conn.send_bytes(job)
        pending, failure = dict(zip(self.conns, range(self.world_size), strict=True)), None
        while pending and failure is None:
            for conn in wait(list(pending)):
                rank = pending.pop(conn)
                try:
                    error = conn.recv()
                except EOFError:
                    error = f"exited with status {self.procs[rank].wait()}"
                if error is not None:
                    failure = f"rank {rank} failed: {error}"
                    break
        output = "".join(open(log).read() for log in logs if os.path.exists(log))
        if failure is not None:
            self.close(kill=True)
            raise RankFailed(f"{failure}\n--- output of the ranks ---\n{output}")
        sys.stdout.write(output)  # where the calling test's output goes
        return torch.load(out_path, weights_only=False)

    def close(self, kill: bool = False) -> None:
        for conn in self.conns:
            conn.close()  # a waiting worker reads EOF and exits
        for proc in self.procs:
            if not kill:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            proc.kill()  # a rank still in a collective of a failed or interrupted call
            proc.wait()
        _RANKS.pop(self.world_size, None)


_RANKS: dict[int, _Ranks] = {}


@atexit.register
def _close_all() -> None:
    for ranks in list(_RANKS.values()):
        ranks.close()


def run_distributed(fn, world_size: int, *args):
    """fn(rank, world_size, group, *args) on world_size processes; returns rank 0's result.

    W=1 runs in this process with group=None (the single-process code path)."""
    if world_size == 1:
        return fn(0, 1, None, *args)
    if world_size not in _RANKS:
        _RANKS[world_size] = _Ranks(world_size)
    with tempfile.TemporaryDirectory() as tmp:
        return _RANKS[world_size].run(fn, args, tmp)
