"""The converter's per-column work written once against the array API that numpy and cupy share (``xp``):
hashing, vocabulary lookup by sort and search, dense transforms, list truncation.

``array_module("cpu")`` is numpy, ``array_module("cuda")`` cupy (imported only then). Columns come from
pyarrow as numpy arrays without per-row Python (``string_buffers`` hands over an Arrow string array's
UTF-8 bytes and offsets), go to the device with ``xp.asarray`` and come back with ``to_host``. Every
function gives the same bits with either module: integer arithmetic wraps modulo 2**64 in both, and the
float work is the same IEEE operations in the same order.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa

_P1 = 11400714785074694791
_P2 = 14029467366897019727
_P3 = 1609587929392839161
_P4 = 9650029242287828579
_P5 = 2870177450012600261
_MASK = (1 << 64) - 1


class DeviceError(ValueError):
    """--device names a device whose array module is missing."""


def array_module(device: str):
    """numpy for "cpu", cupy for "cuda" (a DeviceError when cupy is not installed)."""
    if device == "cpu":
        return np
    if device != "cuda":
        raise DeviceError(f"--device {device!r}: expected 'cpu' or 'cuda'")
    try:
        import cupy
    except ImportError:
        raise DeviceError(
            "--device cuda needs cupy, which is not installed (pip install cupy-cuda12x), "
            "or use --device cpu"
        ) from None
    return cupy


def to_host(array) -> np.ndarray:
    """A numpy array of a numpy or cupy array."""
    return array if isinstance(array, np.ndarray) else array.get()


def _quiet(xp):
    """numpy warns on overflow of some uint64 scalar operations; the hashes wrap on purpose."""
    return np.errstate(over="ignore") if xp is np else contextlib.nullcontext()


def splitmix64(xp, z):
    """splitmix64's finalizer of uint64 values (the hash of an int id)."""
    with _quiet(xp):
        z = z + xp.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> xp.uint64(30))) * xp.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> xp.uint64(27))) * xp.uint64(0x94D049BB133111EB)
        return z ^ (z >> xp.uint64(31))


def string_buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes uint8, offsets int64 [n + 1]) of a string array, zero-copy from its Arrow buffers; a null
    is an empty string."""
    values = values.cast(pa.large_string()).fill_null("")
    _, offsets, data = values.buffers()
    offsets = np.frombuffer(offsets, np.int64)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return data, offsets


def _rotl(xp, x, r: int):
    return (x << xp.uint64(r)) | (x >> xp.uint64(64 - r))


def _round(xp, acc, lane):
    return _rotl(xp, acc + lane * xp.uint64(_P2), 31) * xp.uint64(_P1)


def _reader(xp, data):
    """read(pos, width): the little-endian unsigned int of `width` (1, 4 or 8) bytes at each position: one
    gather from 8 copies of the bytes as uint64 words, copy s shifted by s bytes."""
    words = data.shape[0] // 8 + 2
    padded = xp.concatenate([data, xp.zeros(words * 8 + 8 - data.shape[0], dtype=xp.uint8)])
    shifted = xp.stack(
        [xp.ascontiguousarray(padded[s : s + words * 8]).view(xp.uint64) for s in range(8)]
    )
    last = words * 8 - 8

    def read(pos, width: int = 8):
        pos = xp.minimum(pos, last)
        word = shifted[pos & 7, pos >> 3]
        return word if width == 8 else word & xp.uint64((1 << (8 * width)) - 1)

    return read


def xxh64(xp, data, offsets):
    """XXH64 (seed 0) of every string data[offsets[i]:offsets[i + 1]], vectorized over the strings: the
    32-byte stripes, then the 8-, 4- and 1-byte tails, each step applied where a string still has bytes."""
    start, length = offsets[:-1], offsets[1:] - offsets[:-1]
    read = _reader(xp, data)
    with _quiet(xp):
        stripes = length // 32
        v = [
            xp.full(start.shape, (_P1 + _P2) & _MASK, dtype=xp.uint64),
            xp.full(start.shape, _P2, dtype=xp.uint64),
            xp.zeros(start.shape, dtype=xp.uint64),
            xp.full(start.shape, (-_P1) & _MASK, dtype=xp.uint64),
        ]
        for k in range(int(stripes.max()) if stripes.shape[0] else 0):
            live = stripes > k
            for lane in range(4):
                v[lane] = xp.where(
                    live, _round(xp, v[lane], read(start + 32 * k + 8 * lane)), v[lane]
                )
        h = _rotl(xp, v[0], 1) + _rotl(xp, v[1], 7) + _rotl(xp, v[2], 12) + _rotl(xp, v[3], 18)
        for lane in v:
            h = (h ^ _round(xp, xp.zeros_like(lane), lane)) * xp.uint64(_P1) + xp.uint64(_P4)
        h = xp.where(stripes > 0, h, xp.uint64(_P5)) + length.astype(xp.uint64)
        pos, rest = start + 32 * stripes, length % 32
        for j in range(int((rest // 8).max()) if rest.shape[0] else 0):
            live = rest // 8 > j
            k1 = _round(xp, xp.zeros_like(h), read(pos + 8 * j))
            h = xp.where(live, _rotl(xp, h ^ k1, 27) * xp.uint64(_P1) + xp.uint64(_P4), h)
        pos, rest = pos + 8 * (rest // 8), rest % 8
        live = rest >= 4
        mixed = _rotl(xp, h ^ (read(pos, 4) * xp.uint64(_P1)), 23) * xp.uint64(_P2) + xp.uint64(_P3)
        h = xp.where(live, mixed, h)
        pos, rest = pos + 4 * live, rest % 4
        for j in range(int(rest.max()) if rest.shape[0] else 0):
            byte = read(pos + j, 1)
            h = xp.where(rest > j, _rotl(xp, h ^ (byte * xp.uint64(_P5)), 11) * xp.uint64(_P1), h)
        h ^= h >> xp.uint64(33)
        h *= xp.uint64(_P2)
        h ^= h >> xp.uint64(29)
        h *= xp.uint64(_P3)
        return h ^ (h >> xp.uint64(32))


def hash_rows(xp, h, valid, rows: int):
    """Table rows of 64-bit hashes: 1 + h % (rows - 1), 0 where the value is missing."""
    ids = (h % xp.uint64(rows - 1)).astype(xp.int64) + 1
    return xp.where(valid, ids, 0)


def sort_vocab(xp, vocab):
    """(order, sorted values) of a vocabulary's distinct values, for vocab_lookup."""
    order = xp.argsort(vocab)
    return order, vocab[order]


def vocab_lookup(xp, sorted_vocab, values, valid):
    """1 + the position of each value in the vocabulary (sort_vocab's) by binary search; 0 for a value not
    in it or missing."""
    order, ordered = sorted_vocab
    if ordered.shape[0] == 0:
        return xp.zeros(values.shape, dtype=xp.int64)
    at = xp.minimum(xp.searchsorted(ordered, values), ordered.shape[0] - 1)
    found = (ordered[at] == values) & valid
    return xp.where(found, order[at].astype(xp.int64) + 1, 0)


def fill_and_transform(xp, values, nulls, fill: float, transform: str):
    """A dense column (float64) with its missing values filled, log1p(max(x, 0)) for "log1p"."""
    values = xp.where(nulls, fill, values)
    if transform == "log1p":
        values = xp.log1p(xp.maximum(values, 0.0))
    return values


def truncate(xp, ids, lengths, max_len: int, keep: str):
    """Each row's ids (rows of `lengths` ids, flattened) cut to max_len, keeping the first or the last."""
    if not max_len or not lengths.shape[0] or int(lengths.max()) <= max_len:
        return ids, lengths
    starts = xp.cumsum(lengths) - lengths
    kept = xp.minimum(lengths, max_len)
    if keep == "last":
        starts = starts + lengths - kept
    out_starts = xp.cumsum(kept) - kept
    take = xp.repeat(starts - out_starts, kept) + xp.arange(int(kept.sum()))
    return ids[take], kept
