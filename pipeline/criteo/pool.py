"""Worker processes for the Criteo preprocessing: an ordered, bounded map and a per-worker broadcast.

Why not multiprocessing.Pool or concurrent.futures: the counting pass keeps a value counter in
each worker and must collect every worker's counter exactly once at the end (``broadcast``),
which needs workers that can be addressed one by one; and results must come back in input
order with a bound on how many are held (``imap``'s window), which Pool.imap does not give
(it queues every task at once and buffers any number of finished results).

Processes, not threads: the parsing is numpy plus Python glue and holds the GIL much of the time.
How they start (``start_method``): by plain ``fork`` when this process has a single thread, i.e. when
nothing can be inherited half-way (the command line: pipeline/criteo/__main__.py keeps numpy's BLAS
thread pool from starting); otherwise (a caller with threads: torch's, tqdm's monitor, BLAS) by a
``forkserver``, a clean process started once per parent process that has imported only numpy and the
parser and forks the workers. A fork takes ~10 ms; the forkserver's start ~0.3 s once (the 2-core
machine), ``spawn`` would cost every worker its own interpreter and numpy import.
Workers share nothing mutable with the parent: every message is pickled through a pipe.

``InlinePool`` runs the same calls in the calling process (``--workers 1``): no processes, no pickling.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait


def start_method() -> str:
    """ "fork" if this process has one thread (Linux: /proc/self/task), else "forkserver"."""
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc: assume threads
        threads = 0
    return (
        "fork"
        if threads == 1 and "fork" in multiprocessing.get_all_start_methods()
        else "forkserver"
    )


def _serve(conn, index: int) -> None:
    """Worker loop: run (fn, job, arg) messages until None or a closed pipe."""
    # Ctrl-C reaches the whole process group; the parent decides and terminates the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, job, arg = message
        try:
            reply = (True, fn(job, arg))
        except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent, which re-raises it
            reply = (False, e)
        try:
            conn.send(reply)
        except Exception:  # an unpicklable exception or result: send its text instead
            conn.send(
                (False, RuntimeError(f"criteo worker {index} failed:\n{traceback.format_exc()}"))
            )


class WorkerDied(RuntimeError):
    """A worker process ended without answering (killed, out of memory)."""


class ProcessPool:
    def __init__(self, workers: int):
        self.start_method = start_method()
        ctx = multiprocessing.get_context(self.start_method)
        # the server imports numpy and the parser once per parent process
        if self.start_method == "forkserver":
            ctx.set_forkserver_preload(["pipeline.criteo.work"])
        self.workers = workers
        self._conns, self._procs = [], []
        self._broken = False
        try:
            for i in range(workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_serve, args=(child, i), name=f"criteo-worker-{i}", daemon=True
                )
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
        except BaseException:
            self.terminate()
            raise

    def _recv(self, w: int) -> tuple[bool, object]:
        """(ok, result or exception) from worker w."""
        try:
            return self._conns[w].recv()
        except (EOFError, OSError):
            self._broken = True
            self._procs[w].join(timeout=5)
            raise WorkerDied(
                f"criteo worker process {w} (pid {self._procs[w].pid}) ended unexpectedly with exit "
                f"code {self._procs[w].exitcode} (a negative code is the signal that killed it, "
                "-9 e.g. by the out-of-memory killer)"
            ) from None

    def imap(self, fn: Callable, job, items: Iterable, window: int) -> Iterator:
        """fn(job, item) for every item, yielded in input order.

        At most ``window`` items are out at once (running, or finished and waiting for an earlier one),
        so memory stays bounded however slow one item is; items are pulled from ``items`` only as
        workers free up (for gzip input that is where the parent decompresses).
        """
        if self._broken:
            raise RuntimeError(
                "the criteo worker pool was left in an unknown state by an earlier error"
            )
        source = iter(items)
        idle = list(range(self.workers))[::-1]
        busy: dict[int, int] = {}  # worker -> index of the item it runs
        done: dict[int, object] = {}
        sent = emitted = 0
        exhausted = False
        try:
            while True:
                while idle and not exhausted and sent < emitted + window:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    w = idle.pop()
                    self._conns[w].send((fn, job, item))
                    busy[w] = sent
                    sent += 1
                if emitted in done:
                    # an item's error is raised in its turn, so the first failing item in input order wins
                    ok, value = done.pop(emitted)
                    if not ok:
                        raise value
                    yield value
                    emitted += 1
                    continue
                if not busy:
                    return
                by_conn = {self._conns[w]: w for w in busy}
                for conn in wait(list(by_conn)):
                    w = by_conn[conn]
                    index = busy.pop(w)
                    idle.append(w)
                    done[index] = self._recv(w)
        finally:
            # abandoned (an error, or the caller stopped): their answers would confuse a later call
            if busy:
                self._broken = True

    def broadcast(self, fn: Callable, job) -> list:
        """fn(job, i) once on every worker i; the answers in worker order."""
        if self._broken:
            raise RuntimeError(
                "the criteo worker pool was left in an unknown state by an earlier error"
            )
        for i, conn in enumerate(self._conns):
            conn.send((fn, job, i))
        # all of them, so that every pipe stays in step
        replies = [self._recv(i) for i in range(self.workers)]
        for ok, value in replies:
            if not ok:
                raise value
        return [value for _, value in replies]

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=10)
        self.terminate()

    def terminate(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self._broken:
            self.close()
        else:  # workers may be in the middle of a task: do not wait for them
            self.terminate()


class InlinePool:
    """The same interface, run in the calling process."""

    workers = 1

    def imap(self, fn: Callable, job, items: Iterable, window: int) -> Iterator:
        return (fn(job, item) for item in items)

    def broadcast(self, fn: Callable, job) -> list:
        return [fn(job, 0)]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return None


def make_pool(workers: int) -> ProcessPool | InlinePool:
    return InlinePool() if workers == 1 else ProcessPool(workers)
