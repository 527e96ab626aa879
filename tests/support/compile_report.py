"""kernels.compile_check for tests/kernels/test_kernels_compile.py, started when the session starts.

Compiling every specialization for sm_90 and sm_80 is CPU work that needs nothing from the other tests, and
most of them leave a core idle (one Python process, the Triton interpreter, small tensors). So when the
session selects a test of its report, tests/conftest.py starts it at collection's end at the lowest CPU
priority (it takes what the other tests leave), and moves those tests to the end of the session, where its
fixture waits for it. Run alone, the fixture starts it itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from tests.support.paths import ROOT

FIXTURE = "compiled"  # the fixture of test_kernels_compile.py that reads the report


def compile_check_command(tmp: str, *args: str) -> tuple[list[str], dict]:
    """(argv, env) of kernels.compile_check: TRITON_INTERPRET unset, a cold cache of its own under tmp
    (ptxas then reports every specialization's registers and spills)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = os.path.join(tmp, "triton_cache")
    return [sys.executable, "-m", "kernels.compile_check", "--quiet", *args], env


@dataclass
class Started:
    proc: subprocess.Popen
    dir: str
    report: str

    def wait(self, timeout: float) -> tuple[int, str, str]:
        """(return code, stdout, stderr) once it has finished. Nothing else runs while a test waits: its
        priority goes back to normal (where the OS lets a process raise it; else it finishes as it is)."""
        with contextlib.suppress(PermissionError, ProcessLookupError):
            os.setpriority(os.PRIO_PGRP, self.proc.pid, 0)
        self.proc.wait(timeout=timeout)
        out, err = (open(os.path.join(self.dir, name)).read() for name in ("stdout", "stderr"))
        return self.proc.returncode, out, err

    def stop(self) -> None:
        """End it (and its compile workers, in its own process group) if the session ends first."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start(low_priority: bool) -> Started:
    """kernels.compile_check --json into a fresh directory, in the background."""
    tmp = tempfile.mkdtemp(prefix="recfuse_compile_check_")
    report = os.path.join(tmp, "report.json")
    argv, env = compile_check_command(tmp, "--json", report)
    with (
        open(os.path.join(tmp, "stdout"), "w") as out,
        open(os.path.join(tmp, "stderr"), "w") as err,
    ):
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group: stop() ends its workers too
            preexec_fn=(lambda: os.nice(19)) if low_priority else None,
        )
    return Started(proc, tmp, report)
