"""Frequency-threshold vocabularies over the 26 Criteo tables.

A vocabulary is (sorted keys, their ids, rows per table), keys being ``table << 32 | hex value``.
Saved (save_vocabulary) into a dataset's ``vocab/`` directory:
    vocab/C1.npy ... vocab/C26.npy   uint32 [V_t]: the kept raw hex values of that table ordered by id,
                                     i.e. values[i] has id i + 1 (id 0 is the shared low-frequency row)
    vocab/vocab.json                 format, min_freq, table rows, and per file: values, bytes, sha256
load_vocabulary reads that back (from the vocab directory or the dataset directory holding it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.criteo.parse import NUM_SPARSE, SPARSE_NAMES

VOCAB_FORMAT = "recfuse-criteo-vocabulary"
VOCAB_DIR = "vocab"


class VocabularyError(ValueError):
    """A saved vocabulary that is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class Vocabulary:
    keys: np.ndarray  # int64, sorted: table << 32 | hex value of every kept value
    ids: np.ndarray  # int64, the row id of each key (1..V within its table)
    table_rows: list[int]  # V + 1 per table (row 0: low-frequency, unseen and empty values)
    min_freq: int  # the threshold it was built with


# ids of all tables live in one sorted key space (table << 32 | hex value) so one unique/searchsorted serves 26 tables
def table_keys(sparse_raw, empty):
    tables = np.arange(NUM_SPARSE, dtype=np.int64)[None, :]
    return ((tables << 32) | sparse_raw)[~empty]


def merge_counts(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique keys, int64 summed counts) of (key, count) pairs in any order, keys repeated or not."""
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order].astype(np.int64, copy=False)
    if keys.size == 0:
        return keys, counts
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[starts], np.add.reduceat(counts, starts)


class ValueCounter:
    """Running (key, count) over all tables; chunk results are merged in batches to keep it near-linear."""

    def __init__(self):
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.pending: list = []
        self.pending_size = 0

    def add(self, keys) -> None:
        uniq, counts = np.unique(keys, return_counts=True)
        self.pending.append((uniq, counts.astype(np.int64)))
        self.pending_size += uniq.size
        if self.pending_size > max(self.keys.size, 1 << 22):
            self._merge()

    def _merge(self) -> None:
        if self.pending:
            self.keys, self.counts = merge_counts(
                np.concatenate([self.keys] + [k for k, _ in self.pending]),
                np.concatenate([self.counts] + [c for _, c in self.pending]),
            )
        self.pending, self.pending_size = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted unique keys, their counts) of everything added."""
        self._merge()
        return self.keys, self.counts


def build_vocabulary(keys: np.ndarray, counts: np.ndarray, min_freq: int) -> Vocabulary:
    """The vocabulary of the kept values (sorted unique ``keys``, each seen ``counts`` >= min_freq times).

    Ids follow decreasing count within a table, ties broken by the smaller value, so they do not depend
    on the order in which the counts were gathered (how many workers, how the input was cut).
    """
    table = keys >> 32
    # last key is primary: table, then count desc, then value
    order = np.lexsort(np.stack([keys, -counts, table]))
    table_sizes = np.bincount(table, minlength=NUM_SPARSE)
    table_start = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(table_sizes)[:-1]])
    ids = np.zeros(keys.size, dtype=np.int64)
    ids[order] = np.arange(keys.size, dtype=np.int64) - table_start[table[order]] + 1
    return Vocabulary(keys, ids, [int(n) + 1 for n in table_sizes], min_freq)


def map_to_vocabulary(sparse_raw, empty, vocab: Vocabulary):
    """Row ids [R, 26]: a value's id in the vocabulary, 0 for values not in it and empty fields."""
    tables = np.arange(NUM_SPARSE, dtype=np.int64)[None, :]
    keys = (tables << 32) | sparse_raw
    if vocab.keys.size == 0:
        return np.zeros(keys.shape, dtype=np.int64)
    pos = np.minimum(np.searchsorted(vocab.keys, keys), vocab.keys.size - 1)
    found = (vocab.keys[pos] == keys) & ~empty
    return np.where(found, vocab.ids[pos], 0)


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            sha.update(block)
    return sha.hexdigest()


def save_vocabulary(directory: Path, vocab: Vocabulary) -> dict:
    """Write the vocabulary into ``directory`` (created; the caller renames it into place) and return its
    description (also written as vocab.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    keys, ids = vocab.keys, vocab.ids
    table = keys >> 32
    files = {}
    for t, name in enumerate(SPARSE_NAMES):
        mine = table == t
        values = np.zeros(int(mine.sum()), dtype=np.uint32)
        values[ids[mine] - 1] = keys[mine] & 0xFFFFFFFF  # position = id - 1
        path = directory / f"{name}.npy"
        np.save(path, values)
        files[name] = {
            "name": path.name,
            "dtype": "uint32",
            "values": int(values.size),
            "bytes": path.stat().st_size,
            "sha256": _sha256(path),
        }
    info = {
        "format": VOCAB_FORMAT,
        "version": 1,
        "min_freq": vocab.min_freq,
        "table_rows": list(vocab.table_rows),
        "ids": "values[i] of <table>.npy has id i + 1; unseen and empty values have id 0",
        "files": files,
    }
    (directory / "vocab.json").write_text(json.dumps(info, indent=2, allow_nan=False) + "\n")
    return info


def _read_values(path: Path, entry: dict):
    if not path.is_file():
        raise VocabularyError(f"vocabulary file {path} is missing (vocab.json lists it)")
    if path.stat().st_size != entry["bytes"]:
        raise VocabularyError(
            f"vocabulary file {path} has {path.stat().st_size} bytes, vocab.json lists "
            f"{entry['bytes']} (truncated or overwritten?)"
        )
    if _sha256(path) != entry["sha256"]:
        raise VocabularyError(
            f"vocabulary file {path}: sha256 does not match vocab.json (corrupt or replaced)"
        )
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise VocabularyError(
            f"vocabulary file {path} is not a readable .npy array ({e})"
        ) from None
    if values.dtype != np.uint32 or values.ndim != 1 or values.size != entry["values"]:
        raise VocabularyError(
            f"vocabulary file {path} holds {values.dtype} {list(values.shape)}, "
            f"expected uint32 [{entry['values']}]"
        )
    return values


def load_vocabulary(path: str | Path) -> Vocabulary:
    """A vocabulary saved by save_vocabulary; ``path`` is its directory or the dataset directory holding it."""
    path = Path(path)
    if (path / VOCAB_DIR / "vocab.json").is_file() or (path / "meta.json").is_file():
        path = path / VOCAB_DIR
    info_path = path / "vocab.json"
    if not info_path.is_file():
        raise VocabularyError(
            f"{info_path} is missing: {path.parent if path.name == VOCAB_DIR else path} holds no "
            "saved vocabulary (preprocess with --min-freq saves one)"
        )
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise VocabularyError(f"{info_path}: not valid JSON ({e})") from None
    if (
        info.get("format") != VOCAB_FORMAT
        or sorted(info.get("files", {})) != sorted(SPARSE_NAMES)
        or len(info.get("table_rows", [])) != NUM_SPARSE
    ):
        raise VocabularyError(
            f"{info_path}: not a {VOCAB_FORMAT} description of tables {SPARSE_NAMES[0]}.."
            f"{SPARSE_NAMES[-1]}"
        )
    keys, ids = [], []
    for t, name in enumerate(SPARSE_NAMES):
        values = _read_values(path / info["files"][name]["name"], info["files"][name])
        if values.size + 1 != info["table_rows"][t]:
            raise VocabularyError(
                f"vocabulary file {path / info['files'][name]['name']} has {values.size} values but "
                f"vocab.json lists {info['table_rows'][t]} rows for {name} (values + row 0)"
            )
        keys.append((np.int64(t) << 32) | values.astype(np.int64))
        ids.append(np.arange(1, values.size + 1, dtype=np.int64))
    keys, ids = np.concatenate(keys), np.concatenate(ids)
    order = np.argsort(keys, kind="stable")
    keys, ids = keys[order], ids[order]
    repeated = np.flatnonzero(keys[1:] == keys[:-1])
    if repeated.size:
        key = int(keys[repeated[0]])
        raise VocabularyError(
            f"vocabulary file {path / info['files'][SPARSE_NAMES[key >> 32]]['name']} lists value "
            f"{key & 0xFFFFFFFF:08x} twice"
        )
    return Vocabulary(keys, ids, [int(n) for n in info["table_rows"]], int(info["min_freq"]))
