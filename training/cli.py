"""train.py's command line around the run: --help, and a bad config or dataset as one line with exit
status 2 (a traceback is for bugs, not for a value the user typed)."""

from __future__ import annotations

import contextlib
import os
import sys

from pipeline.dataset_format import DatasetError
from training.config import ConfigError
from training.config.help import usage, wants_help

# errors whose message is the whole story: the key, file or row to fix
USER_ERRORS = (ConfigError, DatasetError)


def print_help_if_asked(argv: list[str], intro: str) -> None:
    """--help / -h anywhere: print every config key (training.config.help) and exit 0."""
    if wants_help(argv):
        print(usage(intro))
        raise SystemExit(0)


@contextlib.contextmanager
def one_line_errors():
    """A USER_ERRORS exception becomes `error: <message>` on stderr (rank 0 only: every rank has the
    same config) and exit status 2."""
    try:
        yield
    except USER_ERRORS as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
