import os
import shutil

import pytest
import torch

from tests.support import compile_report

# Without a GPU, Triton kernels can only run under the interpreter. Triton decides per kernel
# when its module is imported (@triton.jit), so this must happen before any test module
# imports kernels.*_triton; importing torch does not import triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# kernels.compile_check, started in the background for the tests of its report (tests/support/compile_report.py)
_COMPILE_CHECK = pytest.StashKey()


def _reads_compile_report(item) -> bool:
    return compile_report.FIXTURE in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config, items):
    # last, so that the check started at collection's end has the whole session to finish
    items[:] = sorted(items, key=_reads_compile_report)  # stable: the order is kept otherwise


def pytest_collection_finish(session):
    if not session.config.option.collectonly and any(map(_reads_compile_report, session.items)):
        session.config.stash[_COMPILE_CHECK] = compile_report.start(low_priority=True)


def pytest_sessionfinish(session):
    started = session.config.stash.get(_COMPILE_CHECK, None)
    if started is not None:
        started.stop()
        shutil.rmtree(started.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def compile_check_started(request):
    """The compile check this session started at collection's end, or None."""
    return request.config.stash.get(_COMPILE_CHECK, None)
