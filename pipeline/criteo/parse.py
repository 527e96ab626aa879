"""Vectorized parsing of Criteo TSV chunks with numpy.

A chunk is the raw bytes of whole lines. Instead of splitting every line in Python we look
at the bytes as one uint8 array: tab and newline positions give every field's start and
end, and the integer / hex fields are decoded digit by digit with array arithmetic. Only
the lines found to be malformed are looked at again in plain Python, to say what is wrong.

Criteo line: label <TAB> I1..I13 <TAB> C1..C26, 40 fields. Any field but the label may be
empty; I fields are decimal (possibly negative); C fields are 8 hex digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
DENSE_NAMES = [f"I{i}" for i in range(1, NUM_DENSE + 1)]
SPARSE_NAMES = [f"C{i}" for i in range(1, NUM_SPARSE + 1)]
FIELD_NAMES = ["label", *DENSE_NAMES, *SPARSE_NAMES]

_MAX_INT_DIGITS = 18  # keeps every accepted decimal inside int64
_HEX_DIGITS = 8

_HEX_LUT = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    # Criteo writes lowercase; uppercase is accepted since it means the same number
    _HEX_LUT[_c] = 10 + _i


@dataclass
class ParsedChunk:
    labels: np.ndarray  # int64 [R] (0 or 1)
    dense_raw: np.ndarray  # int64 [R, 13]; empty fields are 0
    sparse_raw: np.ndarray  # int64 [R, 26] the hex value; empty fields are 0
    sparse_empty: np.ndarray  # bool [R, 26]
    bad_lines: np.ndarray  # int64, 0-based index within the chunk of each malformed line
    num_lines: int  # lines in the chunk, good and bad


def split_lines(data: bytes):
    """Line and field boundaries of a chunk that ends with a newline.

    Returns (buf, starts, ends, line_ok): field byte ranges [starts, ends) of the lines that
    have exactly 40 fields ([n_ok, 40]) and a bool mask over all lines.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    is_newline = buf == 10
    is_sep = is_newline | (buf == 9)
    sep_pos = np.flatnonzero(is_sep)
    sep_is_newline = is_newline[sep_pos]
    num_lines = int(sep_is_newline.sum())
    # a separator belongs to the line it ends; the newline itself is that line's last separator
    line_of_sep = np.cumsum(sep_is_newline) - sep_is_newline
    seps_per_line = np.bincount(line_of_sep, minlength=num_lines)
    line_ok = seps_per_line == NUM_FIELDS
    # a field starts right after the separator before it (the first field after the previous newline)
    field_start = np.concatenate([np.zeros(1, dtype=sep_pos.dtype), sep_pos[:-1] + 1])
    keep = line_ok[line_of_sep]
    ends = sep_pos[keep].reshape(-1, NUM_FIELDS)
    starts = field_start[keep].reshape(-1, NUM_FIELDS)
    return buf, starts, ends, line_ok


def _decode_decimal(buf, starts, lengths):
    """int64 values of decimal fields (optional leading '-'); empty fields give 0. Returns (values, bad)."""
    last = buf.shape[0] - 1
    first = buf[np.minimum(starts, last)]
    negative = (first == ord("-")) & (lengths > 0)
    digits = lengths - negative
    bad = (digits > _MAX_INT_DIGITS) | (negative & (digits == 0))
    value = np.zeros(starts.shape, dtype=np.int64)
    width = int(min(int(lengths.max()) if lengths.size else 0, _MAX_INT_DIGITS + 1))
    for k in range(width):
        in_digits = (k < lengths) & ~((k == 0) & negative)
        d = buf[np.minimum(starts + k, last)].astype(np.int64) - ord("0")
        bad |= in_digits & ((d < 0) | (d > 9))
        value = np.where(in_digits, value * 10 + d, value)
    return np.where(negative, -value, value), bad


def _decode_hex(buf, starts, lengths):
    """Values of 8-hex-digit fields; empty fields give 0. Returns (values, empty, bad)."""
    last = buf.shape[0] - 1
    empty = lengths == 0
    bad = ~empty & (lengths != _HEX_DIGITS)
    value = np.zeros(starts.shape, dtype=np.int64)
    for k in range(_HEX_DIGITS):
        d = _HEX_LUT[buf[np.minimum(starts + k, last)]]
        bad |= ~empty & (d < 0)
        value = value * 16 + np.maximum(d, 0)
    return np.where(empty, 0, value), empty, bad


def parse_chunk(data: bytes) -> ParsedChunk:
    """Parse whole lines (``data`` must end with b"\\n"). Malformed lines are listed, not raised."""
    buf, starts, ends, line_ok = split_lines(data)
    lengths = ends - starts
    ints, ints_bad = _decode_decimal(buf, starts[:, : 1 + NUM_DENSE], lengths[:, : 1 + NUM_DENSE])
    hexes, empty, hex_bad = _decode_hex(
        buf, starts[:, 1 + NUM_DENSE :], lengths[:, 1 + NUM_DENSE :]
    )
    labels = ints[:, 0]
    row_bad = (
        ints_bad.any(1) | hex_bad.any(1) | (lengths[:, 0] == 0) | ((labels != 0) & (labels != 1))
    )
    ok_lines = np.flatnonzero(line_ok)
    bad_lines = np.sort(np.concatenate([np.flatnonzero(~line_ok), ok_lines[row_bad]]))
    good = ~row_bad
    return ParsedChunk(
        labels=labels[good],
        dense_raw=ints[good, 1:],
        sparse_raw=hexes[good],
        sparse_empty=empty[good],
        bad_lines=bad_lines.astype(np.int64),
        num_lines=int(line_ok.size),
    )


def dense_transform(dense_raw):
    """float32 log(1 + max(x, 0)): negative counts (I2 has -1, -2, ...) and empty fields become 0."""
    return np.log1p(np.maximum(dense_raw, 0).astype(np.float64)).astype(np.float32)


def describe_bad_line(line: bytes) -> str:
    """Plain-Python account of what is wrong with one line (only called for lines known to be bad)."""
    text = line.rstrip(b"\n")
    fields = text.split(b"\t")
    if len(fields) != NUM_FIELDS:
        return f"has {len(fields)} tab-separated fields, expected {NUM_FIELDS}"
    for name, field in zip(FIELD_NAMES, fields, strict=True):
        if name == "label":
            if field not in (b"0", b"1"):
                return f"label is {field[:20]!r}, expected 0 or 1"
        elif name.startswith("I"):
            body = field[1:] if field.startswith(b"-") else field
            if field and (not body or not body.isdigit() or len(body) > _MAX_INT_DIGITS):
                return f"{name} is {field[:30]!r}, not a decimal integer"
        elif field and (len(field) != _HEX_DIGITS or any(_HEX_LUT[c] < 0 for c in field)):
            return f"{name} is {field[:30]!r}, not {_HEX_DIGITS} hex digits"
    return "malformed (no single field to blame)"
