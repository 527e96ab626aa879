"""Where predict's scores go: one row per sample (row id, probability, label), streamed to a temporary file
and renamed into place once complete, so an existing file of that name is replaced whole or not at all.

    .csv   a header line "row,probability,label", then one line per sample (probability as float64, 17
           significant digits: it reads back as the same number)
    .npy   one structured array [N] of (row int64, probability float64, label float32)
"""

from __future__ import annotations

import os
import shutil

import numpy as np

FORMATS = (".csv", ".npy")
RECORD = np.dtype([("row", "<i8"), ("probability", "<f8"), ("label", "<f4")])


class OutputError(ValueError):
    """An output file predict cannot write; the message names it."""


def check_output_path(path: str) -> None:
    """OutputError unless path ends in a known format and its directory exists."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise OutputError(
            f"--out {path!r}: unknown format {ext or '(no extension)'!r}; use one of {FORMATS}"
        )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"--out {path!r}: directory {parent} does not exist")


class PredictionWriter:
    """write(rows, probabilities, labels) per batch, then close() renames the file into place; abort()
    (or an exception inside `with`) removes the temporary file and leaves `path` as it was."""

    def __init__(self, path: str):
        check_output_path(path)
        self.path, self.rows = path, 0
        self.npy = path.lower().endswith(".npy")
        self.tmp = os.path.join(
            os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp.{os.getpid()}"
        )
        self.f = open(self.tmp, "wb")
        if not self.npy:
            self.f.write(b"row,probability,label\n")

    def write(self, rows: np.ndarray, probabilities: np.ndarray, labels: np.ndarray) -> None:
        if self.npy:
            records = np.empty(len(rows), dtype=RECORD)
            records["row"], records["probability"], records["label"] = rows, probabilities, labels
            self.f.write(records.tobytes())
        else:
            lines = (
                f"{r},{p!r},{lab:g}\n"
                for r, p, lab in zip(
                    rows.tolist(), probabilities.tolist(), labels.tolist(), strict=True
                )
            )
            self.f.write("".join(lines).encode())
        self.rows += len(rows)

    def close(self) -> None:
        self.f.close()
        if self.npy:
            self._add_npy_header()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)

    def _add_npy_header(self) -> None:
        """The .npy header needs the row count: the records written so far go after it."""
        final = self.tmp + ".npy"
        header = {"descr": np.lib.format.dtype_to_descr(RECORD), "fortran_order": False}
        with open(final, "wb") as out, open(self.tmp, "rb") as body:
            np.lib.format.write_array_header_2_0(out, {**header, "shape": (self.rows,)})
            shutil.copyfileobj(body, out, 1 << 24)
        os.replace(final, self.tmp)

    def abort(self) -> None:
        self.f.close()
        for name in (self.tmp, self.tmp + ".npy"):
            if os.path.exists(name):
                os.remove(name)

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def read_predictions(path: str) -> dict[str, np.ndarray]:
    """A prediction file as {row, probability, label} arrays (tests, examples)."""
    if path.lower().endswith(".npy"):
        records = np.load(path)
        return {name: records[name] for name in RECORD.names}
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    return {"row": table[:, 0].astype(np.int64), "probability": table[:, 1], "label": table[:, 2]}
