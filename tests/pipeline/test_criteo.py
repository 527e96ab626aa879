import json

import numpy as np
import pytest

from pipeline import criteo
from pipeline.criteo import CriteoFormatError, PreprocessOptions, convert, preprocess
from pipeline.dataset import BinaryDataset, DatasetError
from tests.support.criteo_reference import make_lines, reference, write_tsv


def _three_files(tmp_path, lines):
    """The lines spread over a plain file, a file without final newline and a .gz file."""
    a, b, c = lines[:40], lines[40:75], lines[75:]
    return [
        write_tsv(tmp_path / "day_0", a),
        write_tsv(tmp_path / "day_1", b, final_newline=False),
        write_tsv(tmp_path / "day_2.gz", c, gz=True),
    ]


def _read(out, meta):
    files = meta["files"]
    dense = np.fromfile(out / "dense.bin", dtype=np.float32).reshape(-1, 13)
    sparse = np.fromfile(out / "sparse.bin", dtype=files["sparse"]["dtype"]).reshape(-1, 26)
    labels = np.fromfile(out / "labels.bin", dtype=files["labels"]["dtype"])
    return dense, sparse, labels


@pytest.mark.parametrize("id_dtype,label_dtype", [("int32", "float32"), ("int64", "uint8")])
def test_hashing_matches_reference(tmp_path, id_dtype, label_dtype):
    lines = make_lines(120, seed=1)
    paths = _three_files(tmp_path, lines)
    out = tmp_path / "out"
    meta = preprocess(
        paths,
        out,
        PreprocessOptions(
            hash_rows=[1000],
            chunk_rows=7,
            id_dtype=id_dtype,
            label_dtype=label_dtype,
            progress=False,
        ),
    )
    dense, sparse, labels, table_rows = reference(lines, hash_rows=1000)
    got_dense, got_sparse, got_labels = _read(out, meta)
    np.testing.assert_array_equal(got_dense, dense)
    np.testing.assert_array_equal(got_sparse, sparse)
    np.testing.assert_array_equal(got_labels.astype(np.float32), labels)
    assert got_sparse.dtype == np.dtype(id_dtype) and got_labels.dtype == np.dtype(label_dtype)
    assert meta["table_rows"] == table_rows and meta["num_rows"] == 120
    assert [s["rows"] for s in meta["sources"]] == [40, 35, 45]
    assert json.loads((out / "meta.json").read_text())["files"]["dense"]["bytes"] == 120 * 13 * 4


@pytest.mark.parametrize("min_freq", [1, 3])
def test_vocabulary_matches_reference(tmp_path, min_freq):
    lines = make_lines(150, seed=2)
    out = tmp_path / "out"
    meta = preprocess(
        _three_files(tmp_path, lines),
        out,
        PreprocessOptions(min_freq=min_freq, chunk_rows=16, progress=False),
    )
    dense, sparse, labels, table_rows = reference(lines, min_freq=min_freq)
    got_dense, got_sparse, got_labels = _read(out, meta)
    np.testing.assert_array_equal(got_dense, dense)
    np.testing.assert_array_equal(got_sparse, sparse)
    np.testing.assert_array_equal(got_labels, labels)
    assert meta["table_rows"] == table_rows
    assert (got_sparse < np.array(table_rows)).all()


def test_dense_edge_values(tmp_path):
    line = "1\t\t-1\t0\t3\t-5\t" + "\t".join(["1"] * 8) + "\t" + "\t".join([""] * 25 + ["0000000a"])
    out = tmp_path / "out"
    meta = preprocess(
        [write_tsv(tmp_path / "x", [line])], out, PreprocessOptions(hash_rows=[7], progress=False)
    )
    dense, sparse, _ = _read(out, meta)
    np.testing.assert_array_equal(dense[0, :5], np.float32([0, 0, 0, np.log1p(3.0), 0]))
    assert sparse[0].tolist() == [0] * 25 + [10 % 7]  # empty categorical -> row 0


@pytest.mark.parametrize(
    "bad,reason",
    [
        ("only\tthree\tfields", "3 tab-separated fields"),
        (None, "C5 is b'zz00ff00'"),
        (None, "I3 is b'1.5'"),
        (None, "label is b'2'"),
        (None, "C26 is b'abc'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, reason):
    good = make_lines(30, seed=3)
    if bad is None:
        fields = good[0].split("\t")
        if reason.startswith("C5"):
            fields[14 + 4] = "zz00ff00"
        elif reason.startswith("I3"):
            fields[3] = "1.5"
        elif reason.startswith("label"):
            fields[0] = "2"
        else:
            fields[39] = "abc"
        bad = "\t".join(fields)
    second = good[10:20]
    second[6] = bad  # line 7 of the second file, in the second chunk of 4 lines
    paths = [
        write_tsv(tmp_path / "a.tsv", good[:10]),
        write_tsv(tmp_path / "b.tsv", second, final_newline=False),
    ]
    with pytest.raises(CriteoFormatError, match=rf"b\.tsv:7 \(byte offset \d+\): .*{reason}"):
        preprocess(
            paths, tmp_path / "out", PreprocessOptions(hash_rows=[10], chunk_rows=4, progress=False)
        )
    assert not (tmp_path / "out").exists()

    meta = preprocess(
        paths,
        tmp_path / "out",
        PreprocessOptions(hash_rows=[10], chunk_rows=4, skip_bad_lines=True, progress=False),
    )
    assert meta["num_rows"] == 19 and meta["bad_lines"]["count"] == 1
    assert "b.tsv:7" in meta["bad_lines"]["examples"][0]
    dense, sparse, _, _ = reference(good[:10] + second[:6] + second[7:], hash_rows=10)
    got_dense, got_sparse, _ = _read(tmp_path / "out", meta)
    np.testing.assert_array_equal(got_sparse, sparse)
    np.testing.assert_array_equal(got_dense, dense)


def test_blank_line_is_malformed(tmp_path):
    lines = make_lines(5)
    path = tmp_path / "x.tsv"
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    with pytest.raises(CriteoFormatError, match=r"x\.tsv:3 .*1 tab-separated fields"):
        preprocess([path], tmp_path / "out", PreprocessOptions(hash_rows=[10], progress=False))


def test_interrupted_publish_leaves_nothing(tmp_path, monkeypatch):
    path = write_tsv(tmp_path / "x.tsv", make_lines(20))
    out = tmp_path / "out"

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "_publish", fail)
    with pytest.raises(KeyboardInterrupt):
        preprocess([path], out, PreprocessOptions(hash_rows=[10], progress=False))
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


def test_killed_before_meta_is_refused_by_reader(tmp_path, monkeypatch):
    """A hard kill cannot clean up: the partial directory it leaves has no meta.json and is refused."""
    path = write_tsv(tmp_path / "x.tsv", make_lines(20))
    monkeypatch.setattr(convert.shutil, "rmtree", lambda *a, **k: None)
    monkeypatch.setattr(
        convert, "_write_meta", lambda *a: (_ for _ in ()).throw(SystemExit("killed"))
    )
    with pytest.raises(SystemExit):
        preprocess([path], tmp_path / "out", PreprocessOptions(hash_rows=[10], progress=False))
    partial = tmp_path / ".out.partial"
    assert (partial / "dense.bin").exists() and not (partial / "meta.json").exists()
    assert not (tmp_path / "out").exists()
    with pytest.raises(DatasetError, match="no meta.json"):
        BinaryDataset(partial)
    monkeypatch.undo()
    # clears the stale partial dir
    preprocess([path], tmp_path / "out", PreprocessOptions(hash_rows=[10], progress=False))
    assert BinaryDataset(tmp_path / "out").num_rows == 20 and not partial.exists()


def test_existing_output_needs_overwrite(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", make_lines(8))
    preprocess([path], tmp_path / "out", PreprocessOptions(hash_rows=[10], progress=False))
    with pytest.raises(FileExistsError):
        preprocess([path], tmp_path / "out", PreprocessOptions(hash_rows=[10], progress=False))
    meta = preprocess(
        [path], tmp_path / "out", PreprocessOptions(hash_rows=[5], overwrite=True, progress=False)
    )
    assert BinaryDataset(tmp_path / "out").table_rows == meta["table_rows"] == [5] * 26


def test_cli(tmp_path, capsys):
    lines = make_lines(50)
    paths = [
        str(write_tsv(tmp_path / "d0", lines[:25])),
        str(write_tsv(tmp_path / "d1.gz", lines[25:], gz=True)),
    ]
    out = tmp_path / "out"
    assert (
        criteo.main(
            [
                "preprocess",
                *paths,
                "--out",
                str(out),
                "--min-freq",
                "2",
                "--files-are-days",
                "--id-dtype",
                "int64",
            ]
        )
        == 0
    )
    ds = BinaryDataset(out, verify_checksums=True)
    assert ds.meta["days"] == [25, 25] and ds.default_eval_range == (25, 37)
    assert criteo.main(["preprocess", *paths, "--out", str(out), "--hash-rows", "9"]) == 1
    assert "already exists" in capsys.readouterr().err
