"""Criteo-like TSV lines with the real data's quirks, and a plain-Python reference of the preprocessing."""

from __future__ import annotations

import gzip
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np


def make_lines(n: int, seed: int = 0) -> list[str]:
    """Lines with empty fields anywhere (but the label), negative I2, small and full-range 8-hex categories."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        fields = [str(rng.randint(0, 1))]
        for i in range(13):
            if rng.random() < 0.2:
                fields.append("")
            elif i == 1:
                fields.append(str(rng.choice([-1, -2, -3, 0, 7, rng.randint(0, 5000)])))
            else:
                fields.append(str(rng.choice([0, 1, 2, rng.randint(0, 10**6)])))
        for _ in range(26):
            if rng.random() < 0.15:
                fields.append("")
            # a few frequent values so the vocabulary threshold matters, plus rare full-range ones
            else:
                fields.append(
                    f"{rng.choice([rng.getrandbits(32), rng.randint(0, 5), 0xFFFFFFFF]):08x}"
                )
        lines.append("\t".join(fields))
    return lines


def write_tsv(path: Path, lines: list[str], final_newline: bool = True, gz: bool = False) -> Path:
    text = "\n".join(lines) + ("\n" if final_newline else "")
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(text.encode())
    else:
        path.write_bytes(text.encode())
    return path


def reference(lines: list[str], hash_rows: int | None = None, min_freq: int | None = None):
    """(dense float32 [R,13], sparse int64 [R,26], labels float32 [R], table_rows) computed line by line."""
    rows = [line.split("\t") for line in lines]
    labels = np.array([float(r[0]) for r in rows], dtype=np.float32)
    dense = np.array(
        [[math.log1p(max(int(x), 0)) if x else 0.0 for x in r[1:14]] for r in rows],
        dtype=np.float64,
    )
    raw = [[int(c, 16) if c else None for c in r[14:]] for r in rows]
    if hash_rows is not None:
        sparse = np.array([[(v or 0) % hash_rows for v in r] for r in raw], dtype=np.int64)
        return dense.astype(np.float32), sparse, labels, [hash_rows] * 26
    sparse = np.zeros((len(rows), 26), dtype=np.int64)
    table_rows = []
    for t in range(26):
        counts = Counter(r[t] for r in raw if r[t] is not None)
        kept = sorted(
            (v for v, c in counts.items() if c >= min_freq), key=lambda v: (-counts[v], v)
        )
        ids = {v: i + 1 for i, v in enumerate(kept)}
        table_rows.append(len(kept) + 1)
        for i, r in enumerate(raw):
            sparse[i, t] = ids.get(r[t], 0) if r[t] is not None else 0
    return dense.astype(np.float32), sparse, labels, table_rows
