"""The converter's per-column work on the array API (pipeline/ingest/arrays.py): the same functions with numpy
here (cupy with --device cuda), the vectorized xxh64 against the xxhash package, and a dataset byte-identical
to the one the converter wrote before its columns went through the array API."""

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from pipeline.ingest import IngestError, IngestOptions, ingest, load_schema

SCHEMA = """
[label]
column = "y"
[weight]
column = "w"
[[dense]]
column = "price"
transform = "standardize"
[[dense]]
column = "age"
fill = 3
transform = "log1p"
[[dense]]
column = "score"
fill = -1
[[categorical]]
column = "user"
min_freq = 2
[[categorical]]
column = "city"
type = "int"
min_freq = 3
[[categorical]]
column = "url"
encode = "hash"
rows = 1000
[[categorical]]
column = "shop"
type = "int"
encode = "hash"
rows = 77
[[categorical]]
column = "item"
type = "int"
encode = "raw"
[[categorical]]
column = "genres"
list = true
max_len = 3
keep = "last"
[[categorical]]
column = "clicks"
type = "int"
encode = "hash"
rows = 500
list = true
max_len = 4
"""

ROWS = 3000


def _column(rng, values, nulls=0.05):
    return [None if rng.random() < nulls else v for v in values]


def write_input(directory):
    """A Parquet file (row groups of 700) with every encoding, nulls, long and non-ASCII strings."""
    rng = np.random.default_rng(11)
    words = ["", "a", "héllo", "ß" * 20, "x" * 31, "y" * 32, "z" * 33, "日本語のテキスト" * 9]
    words += [f"user-{i}" for i in range(300)]
    urls = [f"https://example.com/{'p' * int(rng.integers(0, 90))}/{i}" for i in range(ROWS)]
    table = {
        "y": (rng.random(ROWS) < 0.2).astype(np.float64).tolist(),
        "w": rng.uniform(0, 2, ROWS).tolist(),
        "price": _column(rng, rng.lognormal(2, 1, ROWS).tolist()),
        "age": _column(rng, rng.integers(-5, 90, ROWS).astype(float).tolist()),
        "score": _column(rng, rng.normal(size=ROWS).tolist()),
        "user": _column(rng, [words[int(i)] for i in rng.zipf(1.3, ROWS) % len(words)]),
        "city": _column(rng, (rng.zipf(1.5, ROWS) % 50 - 3).tolist()),
        "url": _column(rng, [urls[int(i)] for i in rng.integers(0, ROWS, ROWS)]),
        "shop": _column(rng, rng.integers(-(2**62), 2**62, ROWS).tolist()),
        "item": rng.integers(0, 10_000, ROWS).tolist(),
        "genres": _column(
            rng,
            [[words[int(i)] for i in rng.integers(0, 40, rng.integers(0, 7))] for _ in range(ROWS)],
        ),
        "clicks": _column(
            rng, [rng.integers(-100, 10**9, rng.integers(0, 9)).tolist() for _ in range(ROWS)]
        ),
    }
    (directory / "schema.toml").write_text(SCHEMA)
    pq.write_table(pa.table(table), directory / "in.parquet", row_group_size=700)
    return load_schema(directory / "schema.toml"), directory / "in.parquet"


def digests(out) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(out.glob("*.bin"))
    }


# sha256 (first 16 hex digits) of every array file, as the converter wrote them with its per-column work in
# pyarrow and Python (per distinct string) calls before it moved to the array API
BEFORE = {
    "clicks.offsets.bin": "8a1250b3a08e9f9d",
    "clicks.values.bin": "722d27bee4d7dd1a",
    "dense.bin": "2707553550cb2071",
    "genres.offsets.bin": "7d3a4dfa71b35c39",
    "genres.values.bin": "e20da4c562793f57",
    "labels.bin": "a7ceff5cb18f7949",
    "sparse.bin": "cdc7535f629119a1",
    "weights.bin": "ff9887da4acb66ad",
}


def test_output_is_byte_identical_to_the_converter_before(tmp_path):
    schema, path = write_input(tmp_path)
    ingest(schema, [str(path)], tmp_path / "out")
    assert digests(tmp_path / "out") == BEFORE
    # the eval files' path: mapped through the saved vocabularies and statistics
    ingest(schema, [str(path)], tmp_path / "eval", IngestOptions(vocab=str(tmp_path / "out")))
    assert digests(tmp_path / "eval") == BEFORE


def test_vectorized_xxh64_is_xxhash():
    from pipeline.ingest.arrays import string_buffers, xxh64

    rng = np.random.default_rng(3)
    alphabet = list("ab\u00e9\u65e5\u00df0189-")
    texts = ["", "a"] + ["".join(rng.choice(alphabet, n)) for n in range(0, 140)]
    texts += ["x" * n for n in (7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 100)]
    column = pa.array(["skipped"] + texts + [None])[1:]  # a slice: an Arrow offset of 1
    data, offsets = string_buffers(column)
    want = [xxhash.xxh64_intdigest((t or "").encode()) for t in column.to_pylist()]
    assert xxh64(np, data, offsets).tolist() == want
    empty = string_buffers(pa.array([], pa.string()))
    assert xxh64(np, *empty).tolist() == []


def test_vocab_lookup_and_truncate_with_numpy():
    from pipeline.ingest.arrays import sort_vocab, truncate, vocab_lookup

    vocab = sort_vocab(np, np.array([40, -3, 7, 12]))
    values = np.array([7, 12, 5, 40, -3, 99, 7])
    valid = np.array([True, True, True, True, True, True, False])
    assert vocab_lookup(np, vocab, values, valid).tolist() == [3, 4, 0, 1, 2, 0, 0]
    nothing = sort_vocab(np, np.zeros(0, np.int64))
    assert vocab_lookup(np, nothing, values, valid).tolist() == [0] * 7
    ids, lengths = np.arange(10), np.array([4, 0, 1, 5])
    first, kept = truncate(np, ids, lengths, 2, "first")
    assert first.tolist() == [0, 1, 4, 5, 6] and kept.tolist() == [2, 0, 1, 2]
    last, _ = truncate(np, ids, lengths, 2, "last")
    assert last.tolist() == [2, 3, 4, 8, 9]


def test_device_cuda_without_cupy_is_one_line(tmp_path, capsys):
    try:
        import cupy  # noqa: F401

        pytest.skip("cupy is installed here")
    except ImportError:
        pass
    from pipeline.ingest.cli import main

    schema, path = write_input(tmp_path)
    argv = ["--schema", schema.path, "--out", str(tmp_path / "out"), "--device", "cuda", str(path)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "error: --device cuda needs cupy, which is not installed (pip install cupy-cuda12x), "
        "or use --device cpu\n"
    )
    assert not (tmp_path / "out").exists()
    with pytest.raises(IngestError, match="needs cupy"):
        ingest(schema, [str(path)], tmp_path / "out", IngestOptions(device="cuda"))
