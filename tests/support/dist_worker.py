"""One rank of tests/support/dist_utils.py's W processes: runs the jobs it is sent until its socket closes.

    python -m tests.support.dist_worker RANK WORLD_SIZE FD

Per job it receives (the caller's environment, working directory, sys.path, a log file), then the pickled
(fn, args, init file, result path), and answers None or the traceback. These are set before the job is
unpickled, so a module first imported by the job sees them as a spawned process would.
"""

import os
import pickle
import sys
import traceback
from multiprocessing.connection import Connection


def _redirect_output(log: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def serve(rank: int, world_size: int, conn: Connection) -> None:
    while True:
        try:
            env, cwd, path, log = conn.recv()
            job = conn.recv_bytes()
        except EOFError:
            return
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.path[:] = path
        _redirect_output(log)
        try:
            from tests.support.dist_utils import _entry

            fn, args, init_file, out_path = pickle.loads(job)
            _entry(rank, world_size, init_file, fn, args, out_path)
            error = None
        except BaseException:
            error = traceback.format_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        conn.send(error)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), Connection(int(sys.argv[3])))
