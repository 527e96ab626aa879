"""The frequency-threshold vocabulary is saved with the dataset and can map new files (--vocab)."""

import json

import numpy as np
import pytest

from pipeline import criteo
from pipeline.criteo import PreprocessOptions, VocabularyError, preprocess
from pipeline.dataset import BinaryDataset
from tests.support.criteo_reference import make_lines, reference, write_tsv


def _sparse(out):
    meta = json.loads((out / "meta.json").read_text())
    return np.fromfile(out / "sparse.bin", dtype=meta["files"]["sparse"]["dtype"]).reshape(
        -1, 26
    ), meta


def _reference_ids(lines, min_freq):
    """Per table: raw hex value -> id, from the plain-Python reference of the vocabulary."""
    _, sparse, _, _ = reference(lines, min_freq=min_freq)
    ids = [{} for _ in range(26)]
    for line, row in zip(lines, sparse, strict=True):
        for t, field in enumerate(line.split("\t")[14:]):
            if field:
                ids[t][int(field, 16)] = int(row[t])
    return ids


@pytest.fixture
def first(tmp_path):
    """A --min-freq 2 dataset over two files; returns (its directory, its lines)."""
    lines = make_lines(150, seed=2)
    paths = [
        write_tsv(tmp_path / "day_0", lines[:70]),
        write_tsv(tmp_path / "day_1.gz", lines[70:], gz=True),
    ]
    out = tmp_path / "first"
    preprocess(paths, out, PreprocessOptions(min_freq=2, chunk_rows=16, progress=False))
    return out, lines


def test_vocabulary_is_saved_and_described(first):
    out, lines = first
    _, meta = _sparse(out)
    reference_ids = _reference_ids(lines, 2)
    vocab = meta["vocabulary"]
    assert (
        vocab["dir"] == "vocab"
        and vocab["min_freq"] == 2
        and vocab["table_rows"] == meta["table_rows"]
    )
    assert json.loads((out / "vocab" / "vocab.json").read_text())["files"] == vocab["files"]
    for t in range(26):
        values = np.load(out / "vocab" / f"C{t + 1}.npy")
        assert values.dtype == np.uint32 and values.size + 1 == meta["table_rows"][t]
        assert vocab["files"][f"C{t + 1}"]["values"] == values.size
        # values[i] has id i + 1: exactly the reference's kept values and ids
        assert {int(v): i + 1 for i, v in enumerate(values)} == {
            v: i for v, i in reference_ids[t].items() if i
        }
    assert BinaryDataset(out, verify_checksums=True).table_rows == meta["table_rows"]


@pytest.mark.parametrize("where", ["dataset", "vocab_dir"])
def test_new_file_mapped_through_saved_vocabulary(tmp_path, first, where):
    out, lines = first
    reference_ids = _reference_ids(lines, 2)
    # a "test day": 30 lines of the first data (every kept value seen again) and 40 new lines
    unseen = "\t".join(["1"] + ["3"] * 13 + ["0badf00d"] * 26)
    assert all(0x0BADF00D not in ids for ids in reference_ids)
    new_lines = lines[:30] + make_lines(40, seed=9) + [unseen]
    test_day = write_tsv(tmp_path / "day_test", new_lines, final_newline=False)
    vocab_path = out if where == "dataset" else out / "vocab"
    second = tmp_path / "second"
    assert (
        criteo.main(
            [
                "preprocess",
                str(test_day),
                "--out",
                str(second),
                "--vocab",
                str(vocab_path),
                "--chunk-rows",
                "16",
            ]
        )
        == 0
    )

    first_sparse, first_meta = _sparse(out)
    sparse, meta = _sparse(second)
    np.testing.assert_array_equal(sparse[:30], first_sparse[:30])  # same raw values, same ids
    expected = np.array(
        [
            [
                reference_ids[t].get(int(f, 16), 0) if f else 0
                for t, f in enumerate(line.split("\t")[14:])
            ]
            for line in new_lines
        ]
    )
    np.testing.assert_array_equal(sparse, expected)  # unseen values and empty fields -> row 0
    assert sparse[-1].tolist() == [0] * 26
    assert meta["table_rows"] == first_meta["table_rows"]
    assert meta["options"]["ids"] == "vocabulary" and meta["options"]["min_freq"] == 2
    assert meta["options"]["vocab_from"] == str(vocab_path.resolve())
    # the same vocabulary, saved again
    assert meta["vocabulary"]["files"] == first_meta["vocabulary"]["files"]
    assert BinaryDataset(second).num_rows == len(new_lines)


def test_missing_or_corrupt_vocabulary_names_the_file(tmp_path, first, capsys):
    out, _ = first
    day = write_tsv(tmp_path / "day_x", make_lines(10, seed=4))
    target = tmp_path / "mapped"

    (out / "vocab" / "C3.npy").write_bytes(
        (out / "vocab" / "C3.npy").read_bytes()[:-4] + b"\xff\xff\xff\xff"
    )
    with pytest.raises(VocabularyError, match=r"vocab/C3\.npy: sha256 does not match"):
        preprocess([day], target, PreprocessOptions(vocab=str(out), progress=False))
    (out / "vocab" / "C3.npy").unlink()
    with pytest.raises(VocabularyError, match=r"vocabulary file .*vocab/C3\.npy is missing"):
        preprocess([day], target, PreprocessOptions(vocab=str(out), progress=False))
    (out / "vocab" / "vocab.json").write_text("{not json")
    assert criteo.main(["preprocess", str(day), "--out", str(target), "--vocab", str(out)]) == 1
    assert "vocab/vocab.json: not valid JSON" in capsys.readouterr().err
    assert not target.exists() and not (tmp_path / ".mapped.partial").exists()

    hashed = tmp_path / "hashed"
    preprocess([day], hashed, PreprocessOptions(hash_rows=[10], progress=False))
    assert json.loads((hashed / "meta.json").read_text())["vocabulary"] is None
    with pytest.raises(
        VocabularyError,
        match=r"hashed/vocab/vocab\.json is missing: .*hashed holds no saved vocabulary",
    ):
        preprocess([day], target, PreprocessOptions(vocab=str(hashed), progress=False))
    with pytest.raises(ValueError, match="exactly one of"):
        preprocess([day], target, PreprocessOptions(min_freq=2, vocab=str(out), progress=False))
