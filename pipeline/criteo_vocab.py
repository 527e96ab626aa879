"""Frequency-threshold vocabularies over the 26 Criteo tables, written over an array module ``xp`` (numpy or cupy)."""

from __future__ import annotations

from pipeline.criteo_parse import NUM_SPARSE, to_numpy


# ids of all tables live in one sorted key space (table << 32 | hex value) so one unique/searchsorted serves 26 tables
def table_keys(sparse_raw, empty, xp):
    tables = xp.arange(NUM_SPARSE, dtype=xp.int64)[None, :]
    return ((tables << 32) | sparse_raw)[~empty]


class ValueCounter:
    """Running (key, count) over all tables; chunk results are merged in batches to keep it near-linear."""

    def __init__(self, xp):
        self.xp = xp
        self.keys = xp.zeros(0, dtype=xp.int64)
        self.counts = xp.zeros(0, dtype=xp.int64)
        self.pending: list = []
        self.pending_size = 0

    def add(self, keys) -> None:
        uniq, counts = self.xp.unique(keys, return_counts=True)
        self.pending.append((uniq, counts.astype(self.xp.int64)))
        self.pending_size += uniq.size
        if self.pending_size > max(self.keys.size, 1 << 22):
            self._merge()

    def _merge(self) -> None:
        xp = self.xp
        keys = xp.concatenate([self.keys] + [k for k, _ in self.pending])
        counts = xp.concatenate([self.counts] + [c for _, c in self.pending])
        self.keys, inverse = xp.unique(keys, return_inverse=True)
        # float64 weights are exact up to 2**53 occurrences, far beyond any dataset
        summed = xp.bincount(inverse.reshape(-1), weights=counts.astype(xp.float64), minlength=self.keys.size)
        self.counts = summed.astype(xp.int64)
        self.pending, self.pending_size = [], 0

    def vocabulary(self, min_freq: int):
        """(sorted kept keys, their 1-based ids, rows per table); ids follow decreasing count within a table."""
        xp = self.xp
        self._merge()
        kept = self.counts >= min_freq
        keys, counts = self.keys[kept], self.counts[kept]
        table = keys >> 32
        order = xp.lexsort(xp.stack([keys, -counts, table]))  # last key is primary: table, then count desc, then value
        table_sizes = xp.bincount(table, minlength=NUM_SPARSE)
        table_start = xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(table_sizes)[:-1]])
        ids = xp.zeros(keys.size, dtype=xp.int64)
        ids[order] = xp.arange(keys.size, dtype=xp.int64) - table_start[table[order]] + 1
        return keys, ids, [int(n) + 1 for n in to_numpy(table_sizes)]


def map_to_vocabulary(sparse_raw, empty, vocab_keys, vocab_ids, xp):
    tables = xp.arange(NUM_SPARSE, dtype=xp.int64)[None, :]
    keys = (tables << 32) | sparse_raw
    if vocab_keys.size == 0:
        return xp.zeros(keys.shape, dtype=xp.int64)
    pos = xp.minimum(xp.searchsorted(vocab_keys, keys), vocab_keys.size - 1)
    found = (vocab_keys[pos] == keys) & ~empty
    return xp.where(found, vocab_ids[pos], 0)
