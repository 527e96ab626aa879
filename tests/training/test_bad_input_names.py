"""Bad input named where it is: an out-of-range id read from a dataset names its step, feature, table, file, row
and byte offset; a dataset without rows names the dataset."""

import json
import re

import numpy as np
import pytest

import train
from tests.training.test_bad_input import ROWS, dataset_argv, write_dataset


def test_out_of_range_id_from_a_dataset_names_step_file_row_and_offset(tmp_path):
    write_dataset(tmp_path / "ds")
    path = tmp_path / "ds" / "sparse.bin"
    sparse = np.fromfile(path, dtype=np.int32).reshape(ROWS, 2)
    sparse[:, 1] = 7 + np.arange(ROWS)  # f1 has 7 rows: every id is out of range, and tells its row
    sparse.tofile(path)
    with pytest.raises(ValueError) as error:
        train.main(dataset_argv(tmp_path / "ds", tmp_path / "run", "--run.log_every", "2"))
    message = str(error.value)
    match = re.fullmatch(
        rf"step 1: feature 'f1' \(table 'f1', 7 rows\): sample 0, row (\d+) of {path} "
        r"\(byte offset (\d+)\), has id (\d+) outside \[0, 7\) \(out_of_range='error'; .*",
        message,
    )
    assert match, message
    row, offset, value = (int(g) for g in match.groups())
    assert value == 7 + row and offset == (row * 2 + 1) * 4


def test_a_dataset_without_rows_is_named(tmp_path, capsys):
    write_dataset(tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    meta["num_rows"] = 0
    for key in ("dense", "sparse", "labels"):
        (tmp_path / "ds" / f"{key}.bin").write_bytes(b"")
        meta["files"][key]["bytes"] = 0
    (tmp_path / "ds" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit) as exit_:
        train.main(dataset_argv(tmp_path / "ds", tmp_path / "run"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: dataset {tmp_path / 'ds'} has no rows (meta.json num_rows is 0)\n"
    # too few rows for one batch: the dataset and its train range are named
    write_dataset(tmp_path / "ds")
    with pytest.raises(SystemExit):
        train.main(
            dataset_argv(tmp_path / "ds", tmp_path / "run", "--train.global_batch_size", "64")
        )
    assert capsys.readouterr().err == (
        f"error: dataset {tmp_path / 'ds'}: train range [0, 56) has fewer rows than one global "
        "batch of 64\n"
    )
