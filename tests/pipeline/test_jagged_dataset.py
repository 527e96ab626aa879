"""Datasets with jagged (multi-hot) features: read back as the converter's bags, any row range, named errors."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.dataset import BinaryDataset, DatasetError
from pipeline.ingest import ingest, load_schema

SCHEMA = """
[label]
column = "y"
[[dense]]
column = "x"
[[categorical]]
column = "u"
type = "int"
encode = "raw"
[[categorical]]
column = "tags"
type = "int"
encode = "raw"
list = true
[[categorical]]
column = "v"
type = "int"
encode = "raw"
"""
ROWS = 40


def _bags(rng):
    return [rng.integers(0, 9, rng.integers(0, 4)).tolist() for _ in range(ROWS)]


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(3)
    table = {
        "y": rng.integers(0, 2, ROWS).astype(float),
        "x": rng.random(ROWS),
        "u": rng.integers(0, 50, ROWS),
        "tags": _bags(rng),
        "v": rng.integers(0, 5, ROWS),
    }
    (tmp_path / "s.toml").write_text(SCHEMA)
    pq.write_table(pa.table(table), tmp_path / "a.parquet", row_group_size=16)
    ingest(load_schema(tmp_path / "s.toml"), [str(tmp_path / "a.parquet")], tmp_path / "ds")
    return tmp_path / "ds", table


def test_rows_read_back_as_feature_major_bags(dataset):
    path, table = dataset
    ds = BinaryDataset(path, verify_checksums=True)
    assert ds.one_hot_features == ["u", "v"] and list(ds.jagged) == ["tags"]
    segments = [(30, 35), (3, 6), (12, 13)]
    rows = [r for a, b in segments for r in range(a, b)]
    batch = ds.read_rows(segments)
    batch.sparse.validate()
    want = {
        "u": [[int(table["u"][r])] for r in rows],
        "tags": [table["tags"][r] for r in rows],
        "v": [[int(table["v"][r])] for r in rows],
    }
    from pipeline.batch import KeyedJagged

    expected = KeyedJagged.from_lists(want)
    assert batch.sparse.keys == ["u", "tags", "v"]
    assert batch.sparse.values.tolist() == expected.values.tolist()
    assert batch.sparse.offsets.tolist() == expected.offsets.tolist()
    assert batch.labels.tolist() == [table["y"][r] for r in rows]
    assert any(not table["tags"][r] for r in rows)  # an empty bag among them
    where = ds.describe_rows(segments)
    assert where(5, "bag:tags", 0).startswith(
        f"row 3 of {path / 'tags.offsets.bin'} (its bag: values"
    )


def test_damaged_offsets_are_named(dataset):
    path, _ = dataset
    offsets = np.fromfile(path / "tags.offsets.bin", np.int32)
    bad = offsets.copy()
    bad[7] = bad[8] + 1  # row 7's bag ends before it starts
    bad.tofile(path / "tags.offsets.bin")
    with pytest.raises(DatasetError, match=r"tags.offsets.bin: row 7's bag ends before it starts"):
        BinaryDataset(path).read_rows([(0, 10)])
    offsets[:-1].tofile(path / "tags.offsets.bin")
    with pytest.raises(DatasetError, match=r"tags.offsets.bin has 160 bytes, expected 164"):
        BinaryDataset(path)


def test_meta_must_split_the_features(dataset):
    path, _ = dataset
    meta = json.loads((path / "meta.json").read_text())
    meta["one_hot_features"] = ["v", "u"]
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        DatasetError, match=r"one_hot_features \['v', 'u'\] and the jagged features"
    ):
        BinaryDataset(path)
