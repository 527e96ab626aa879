"""python -m pipeline.ingest: schema-driven Parquet/CSV conversion, its encodings and its named errors."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from pipeline.ingest import IngestError, IngestOptions, SchemaError, ingest, load_schema
from pipeline.ingest.cli import main

SCHEMA = """
[label]
column = "clicked"
[weight]
column = "w"
[[dense]]
column = "price"
transform = "standardize"
[[dense]]
column = "age"
fill = 3
transform = "log1p"
[[categorical]]
column = "user"
min_freq = 2
[[categorical]]
column = "shop"
type = "int"
encode = "hash"
rows = 7
[[categorical]]
column = "item"
type = "int"
encode = "raw"
[[categorical]]
column = "genres"
list = true
max_len = 2
keep = "last"
"""

TABLE = {
    "clicked": [1.0, 0.0, 0.0, 1.0, 0.0],
    "w": [1.0, 2.0, 1.0, 1.0, 0.5],
    "price": [1.0, 2.0, 3.0, 4.0, 5.0],
    "age": [0.0, None, 1.0, 2.0, 3.0],
    "user": ["b", "a", "b", "c", None],
    "shop": [5, 6, None, 5, 9],
    "item": [10, 0, 3, 10, 7],
    "genres": [["x", "y", "z"], [], None, ["y"], ["z", "x"]],
}


def _write(tmp_path, schema=SCHEMA, table=TABLE, name="a.parquet", row_group_size=2):
    (tmp_path / "s.toml").write_text(schema)
    pq.write_table(pa.table(table), tmp_path / name, row_group_size=row_group_size)
    return load_schema(tmp_path / "s.toml"), tmp_path / name


def _array(out, name, dtype):
    return np.fromfile(out / name, dtype=dtype)


def _splitmix_hash(x, rows):
    z = (x + 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return 1 + (z ^ (z >> 31)) % (rows - 1)


def test_encodings_and_layout(tmp_path):
    schema, path = _write(tmp_path)
    meta = ingest(schema, [str(path)], tmp_path / "out")
    out = tmp_path / "out"
    assert meta["num_rows"] == 5 and meta["feature_names"] == ["user", "shop", "item", "genres"]
    # user: "b" twice kept (id 1); "a", "c" once (< min_freq), missing: row 0
    # genres: by count x 2, y 2, z 2 -> ties by value: x=1, y=2, z=3
    assert meta["table_rows"] == [2, 7, 11, 4]
    sparse = _array(out, "sparse.bin", np.int32).reshape(5, 3)
    assert sparse[:, 0].tolist() == [1, 0, 1, 0, 0]
    assert sparse[:, 1].tolist() == [
        _splitmix_hash(5, 7),
        _splitmix_hash(6, 7),
        0,
        _splitmix_hash(5, 7),
        9 and _splitmix_hash(9, 7),
    ]
    assert sparse[:, 2].tolist() == [10, 0, 3, 10, 7]
    # keep the last 2: [y, z], [], [], [y], [z, x]
    assert _array(out, "genres.values.bin", np.int32).tolist() == [2, 3, 2, 3, 1]
    assert _array(out, "genres.offsets.bin", np.int32).tolist() == [0, 2, 2, 2, 3, 5]
    dense = _array(out, "dense.bin", np.float32).reshape(5, 2)
    price = np.array([1, 2, 3, 4, 5.0])
    np.testing.assert_allclose(dense[:, 0], (price - 3) / price.std(), rtol=1e-6)
    np.testing.assert_allclose(dense[:, 1], np.log1p([0, 3, 1, 2, 3]), rtol=1e-6)
    assert _array(out, "weights.bin", np.float32).tolist() == TABLE["w"]
    assert meta["jagged"]["genres"]["offsets"]["dtype"] == "int32"
    assert meta["one_hot_features"] == ["user", "shop", "item"]
    vocab = json.loads((out / "vocab" / "vocab.json").read_text())
    assert vocab["dense"]["price"]["mean"] == 3.0


def test_string_hash_is_xxh64(tmp_path):
    schema_text = (
        '[label]\ncolumn = "clicked"\n[[categorical]]\ncolumn = "user"\nencode = "hash"\nrows = 5\n'
    )
    schema, path = _write(tmp_path, schema_text)
    ingest(schema, [str(path)], tmp_path / "out")
    want = [1 + xxhash.xxh64_intdigest(v.encode()) % 4 if v else 0 for v in TABLE["user"]]
    assert _array(tmp_path / "out", "sparse.bin", np.int32).tolist() == want


def test_workers_give_the_same_bytes_and_vocab_maps_later_files(tmp_path):
    schema, path = _write(tmp_path)
    ingest(schema, [str(path)], tmp_path / "one")
    ingest(schema, [str(path)], tmp_path / "two", IngestOptions(workers=2))
    files = sorted(p.name for p in (tmp_path / "one").glob("*.bin"))
    assert len(files) == 6
    for name in files + ["vocab/user.parquet", "vocab/genres.parquet", "vocab/vocab.json"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), (
            name
        )
    later = dict(TABLE, user=["c", "b", "zz", "b", "b"], genres=[["q"], ["x"], [], [], ["z"]])
    pq.write_table(pa.table(later), tmp_path / "later.parquet")
    meta = ingest(
        schema,
        [str(tmp_path / "later.parquet")],
        tmp_path / "ev",
        IngestOptions(vocab=str(tmp_path / "one")),
    )
    assert meta["table_rows"] == [2, 7, 11, 4] and not (tmp_path / "ev" / "vocab").exists()
    assert _array(tmp_path / "ev", "sparse.bin", np.int32).reshape(5, 3)[:, 0].tolist() == [
        0,
        1,
        0,
        1,
        1,
    ]
    assert _array(tmp_path / "ev", "genres.values.bin", np.int32).tolist() == [0, 1, 3]
    # the train statistics, not the later file's
    dense = _array(tmp_path / "ev", "dense.bin", np.float32).reshape(5, 2)
    assert dense[2, 0] == 0.0


def test_csv_with_a_delimited_list(tmp_path):
    schema_text = (
        '[label]\ncolumn = "y"\n[[categorical]]\ncolumn = "tags"\nlist = true\nseparator = "|"\n'
        '[[categorical]]\ncolumn = "id"\ntype = "int"\nencode = "raw"\nrows = 100\n'
    )
    (tmp_path / "s.toml").write_text(schema_text)
    (tmp_path / "a.csv").write_text("y,tags,id\n1,a|b,5\n0,,7\n0,b,99\n")
    meta = ingest(load_schema(tmp_path / "s.toml"), [str(tmp_path / "a.csv")], tmp_path / "out")
    assert meta["table_rows"] == [3, 100]
    assert _array(tmp_path / "out", "tags.values.bin", np.int32).tolist() == [2, 1, 1]
    assert _array(tmp_path / "out", "tags.offsets.bin", np.int32).tolist() == [0, 2, 2, 3]


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"clicked": [1.0, 0.0, 0.0, 2.0, 0.0]},
            r"a.parquet, row group 1, row 3, column 'clicked': 2.0 is not a label in \[0, 1\]",
        ),
        (
            {"clicked": [1.0, 0.0, 0.0, 1.0, None]},
            r"row group 2, row 4, column 'clicked': None is missing",
        ),
        (
            {"price": [1.0, 2.0, float("nan"), 4.0, 5.0]},
            r"row group 1, row 2, column 'price': nan is not a finite",
        ),
        ({"item": [1, 2, 3, 4, -5]}, r"row group 2, row 4, column 'item': raw id -5 must be >= 0"),
        (
            {"w": [1.0, -2.0, 1.0, 1.0, 1.0]},
            r"row group 0, row 1, column 'w': -2.0 is not a finite weight",
        ),
        ({"shop": ["5", "6", "x", "5", "9"]}, r"row group 1, row 2, column 'shop': 'x' is not int"),
    ],
)
def test_bad_values_name_file_row_group_row_and_column(tmp_path, change, message):
    schema, path = _write(tmp_path, table=dict(TABLE, **change))
    with pytest.raises(IngestError, match=message):
        ingest(schema, [str(path)], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "s.toml"]


def test_missing_column_empty_input_and_bad_schema(tmp_path, capsys):
    schema, path = _write(tmp_path, table={k: v for k, v in TABLE.items() if k != "age"})
    with pytest.raises(
        IngestError, match=r"a.parquet: column 'age' \(named in schema .*s.toml\) is missing"
    ):
        ingest(schema, [str(path)], tmp_path / "out")
    empty = {
        k: pa.array(v[:0], type=pa.table(TABLE).schema.field(k).type) for k, v in TABLE.items()
    }
    pq.write_table(pa.table(empty), tmp_path / "empty.parquet")
    with pytest.raises(
        IngestError, match=r"no rows in the input: .*empty.parquet has no data rows"
    ):
        ingest(
            load_schema(tmp_path / "s.toml"), [str(tmp_path / "empty.parquet")], tmp_path / "out"
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    (tmp_path / "bad.toml").write_text(
        '[label]\ncolumn = "y"\n[[categorical]]\ncolumn = "u"\nencode = "md5"\n'
    )
    with pytest.raises(
        SchemaError,
        match=r"bad.toml \[\[categorical\]\] #1: key 'encode' is 'md5', expected one of",
    ):
        load_schema(tmp_path / "bad.toml")
    assert (
        main(["--schema", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "o"), str(path)]) == 2
    )
    assert "error: schema" in capsys.readouterr().err
