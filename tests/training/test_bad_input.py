"""Bad input: the per-table out-of-range id policy ("error" / "modulo"), and dataset batches checked like
synthetic ones (NaN/inf dense, labels outside [0, 1]) with the file, row and byte offset named."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import train
from pipeline.batch import Batch, KeyedJagged
from pipeline.checks import check_batch
from tests.support.dist_utils import run_distributed
from tests.support.training import dense_state, host_batches, load_parts, train_losses
from training.config import ConfigError, load_config

TOML = """
[data]
num_dense = 3
zipf_exponent = 1.3
bag_min = 0
bag_max = 3
[model]
bottom_mlp = [8, 4]
top_mlp = [8]
[embedding]
dim = 4
replicate_below_bytes = 300
[[embedding.tables]]
name = "big"
num_embeddings = 37
out_of_range = "modulo"
[[embedding.tables]]
name = "shared"
num_embeddings = 23
pooling = "mean"
features = ["shared_a", "shared_b"]
[[embedding.tables]]
name = "small"
num_embeddings = 5
[[embedding.tables]]
name = "pinned"
num_embeddings = 29
placement = "row"
[optimizer]
sparse = "adam"
sparse_lr = 0.1
dense_lr = 0.01
[train]
steps = 4
global_batch_size = 16
"""


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad_input") / "small.toml"
    path.write_text(TOML)
    return str(path)


def _parts(toml, extra=(), rank=0, world_size=1, group=None):
    return load_parts(["--config", toml, *extra], rank, world_size, group)


def _raw_ids(kjt: KeyedJagged, rows: dict[str, int], features: set[str], seed: int) -> KeyedJagged:
    """The same bags with every id of `features` moved up by k * rows (k in 0..3): id % rows is unchanged."""
    values = kjt.values.clone()
    n = kjt.batch_size
    gen = torch.Generator().manual_seed(seed)
    for f, key in enumerate(kjt.keys):
        lo, hi = int(kjt.offsets[f * n]), int(kjt.offsets[(f + 1) * n])
        if key in features:
            values[lo:hi] += rows[key] * torch.randint(0, 4, (hi - lo,), generator=gen)
    return KeyedJagged(values, kjt.offsets, kjt.keys)


# ---- out-of-range policy --------------------------------------------------------------------------------
def test_policy_resolution_and_validation(toml):
    _, parts = _parts(toml)
    assert {t.name: t.out_of_range for t in parts.tables} == {
        "big": "modulo",
        "shared": "error",
        "small": "error",
        "pinned": "error",
    }
    _, parts = _parts(toml, ["--embedding.out_of_range", "modulo"])
    # "big" sets its own, the others inherit
    assert {t.out_of_range for t in parts.tables} == {"modulo"}
    with pytest.raises(ConfigError, match=r"embedding.out_of_range.*'wrap'"):
        load_config(["--config", toml, "--embedding.out_of_range", "wrap"])


def test_error_names_table_feature_sample_and_id(toml):
    _, parts = _parts(toml)
    kjt = KeyedJagged.from_lists(
        {
            "big": [[1], [2], [3]],
            "shared_a": [[0], [], [4]],
            "shared_b": [[1], [2, 23], [0]],
            "small": [[0], [1], [2]],
            "pinned": [[0], [1], [2]],
        }
    )
    with pytest.raises(
        ValueError,
        match=r"^feature 'shared_b' \(table 'shared', 23 rows\): sample 1 has id 23 "
        r"outside \[0, 23\) \(out_of_range='error'",
    ):
        parts.embeddings.input_dist(kjt)
    kjt.values[kjt.values.tolist().index(23)] = 4  # fixed; now a negative id in the "modulo" table
    parts.embeddings.input_dist(kjt)
    kjt.values[2] = -3
    with pytest.raises(
        ValueError,
        match=r"^feature 'big' \(table 'big', 37 rows\): sample 2 has negative id -3 "
        r"\(an error under every out_of_range policy\)",
    ):
        parts.embeddings.input_dist(kjt)
    kjt.values[2] = 37 * 5 + 3  # modulo table: accepted as 3
    assert parts.embeddings.check_ids(kjt).values[2] == 3
    assert kjt.values[2] == 37 * 5 + 3  # the caller's batch is left as it was


def _modulo_case(rank, world_size, group, toml, steps):
    """Train `steps` steps on ids moved out of range under "modulo" and on the wrapped ids under "error";
    returns both runs' (losses, full state, dense state, eval pooled output)."""
    runs = []
    for extra, raw in ((["--embedding.out_of_range", "modulo"], True), ([], False)):
        cfg, parts = _parts(toml, extra, rank, world_size, group)
        rows = {f: t.num_embeddings for t in parts.tables for f in t.features}
        host = list(host_batches(cfg, rank, world_size, steps=steps + 1))
        if raw:
            host = [
                Batch(b.dense, b.labels, _raw_ids(b.sparse, rows, set(rows), seed=step * 16 + rank))
                for step, b in enumerate(host)
            ]
            assert any(bool((b.sparse.values >= 23).any()) for b in host)  # really out of range
        cfg.train.steps = steps
        losses = list(train_losses(cfg, parts, world_size, batches=host[:steps]).values())
        with torch.no_grad():  # eval goes through the same input path
            pooled = parts.embeddings(host[steps].sparse)
        runs.append((losses, parts.embeddings.full_state_dict(), dense_state(parts), pooled))
    return runs


@pytest.mark.parametrize("world_size", [1, 2])
def test_modulo_trains_exactly_like_wrapped_ids(toml, world_size):
    (losses_m, full_m, dense_m, pooled_m), (losses_w, full_w, dense_w, pooled_w) = run_distributed(
        _modulo_case, world_size, toml, 4
    )
    assert losses_m == losses_w
    assert torch.equal(pooled_m, pooled_w)
    for name, state in full_w.items():
        for key, value in state.items():
            assert torch.equal(full_m[name][key], value), (name, key)
    for key, value in dense_w.items():
        assert torch.equal(dense_m[key], value), key


# ---- dataset batches ------------------------------------------------------------------------------------
ROWS, DENSE = 64, 3


def write_dataset(directory, dense=None, labels=None):
    """A small binary dataset (the layout pipeline.criteo writes): features f0 (11 rows) and f1 (7 rows); dense
    column 0 holds the row number, so a test can tell which file row a batch sample came from."""
    rng = np.random.default_rng(0)
    if dense is None:
        dense = rng.random((ROWS, DENSE), dtype=np.float32)
        dense[:, 0] = np.arange(ROWS)
    labels = (rng.random(ROWS) < 0.3).astype(np.float32) if labels is None else labels
    sparse = np.stack([rng.integers(0, 11, ROWS), rng.integers(0, 7, ROWS)], 1).astype(np.int32)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, array in (("dense", dense), ("sparse", sparse), ("labels", labels)):
        array.tofile(directory / f"{key}.bin")
        files[key] = {"name": f"{key}.bin", "dtype": array.dtype.name, "bytes": array.nbytes}
    meta = {
        "format": "recfuse-criteo-binary",
        "version": 1,
        "num_rows": ROWS,
        "num_dense": DENSE,
        "feature_names": ["f0", "f1"],
        "table_rows": [11, 7],
        "files": files,
    }
    (directory / "meta.json").write_text(json.dumps(meta))
    return dense, labels


def dataset_argv(path, run_dir, *extra) -> list[str]:
    """train.py's arguments for a small run on the dataset at path."""
    return [
        "--data.path",
        str(path),
        "--run.dir",
        str(run_dir),
        "--train.global_batch_size",
        "16",
        "--model.bottom_mlp",
        "8,4",
        "--model.top_mlp",
        "8",
        "--embedding.dim",
        "4",
        "--data.shuffle_block_rows",
        "5",
        "--eval.samples",
        "8",
        "--eval.batch_size",
        "8",
        *extra,
    ]


def _train_on(path, run_dir, *extra):
    return train.main(dataset_argv(path, run_dir, *extra))


def test_dataset_nan_dense_and_bad_label_name_file_row_and_offset(tmp_path):
    dense, labels = write_dataset(tmp_path / "good")
    # 56 train rows: 3 steps, every batch checked
    _train_on(tmp_path / "good", tmp_path / "run_good")
    dense[41, 2] = np.nan
    write_dataset(tmp_path / "nan", dense=dense)
    path = tmp_path / "nan" / "dense.bin"
    with pytest.raises(
        ValueError,
        match=rf"^step \d: dense feature 2 of row 41 of {path} \(byte offset "
        rf"{(41 * DENSE + 2) * 4}\) is nan",
    ):
        _train_on(tmp_path / "nan", tmp_path / "run_nan")
    labels[17] = 2.0
    write_dataset(tmp_path / "label", labels=labels)
    path = tmp_path / "label" / "labels.bin"
    with pytest.raises(
        ValueError,
        match=rf"^step \d: label of row 17 of {path} \(byte offset {17 * 4}\) is 2.0, "
        r"expected a value in \[0, 1\]",
    ):
        _train_on(tmp_path / "label", tmp_path / "run_label")


@pytest.mark.parametrize("reader", ["memmap", "dali"])
def test_dataset_checks_name_the_right_row_at_every_rank_and_in_eval(tmp_path, reader):
    """where() maps every sample of shuffled, multi-segment, per-rank batches to its file row."""
    from pipeline.dali_reader import DALI_AVAILABLE
    from pipeline.dataset import BinaryDataset
    from training.config import DataConfig
    from training.data import eval_loader, train_loader

    if reader == "dali" and not DALI_AVAILABLE:
        pytest.skip("NVIDIA DALI is not installed (the [dali] extra)")
    dense, _ = write_dataset(tmp_path / "ds")
    cfg = DataConfig(
        path=str(tmp_path / "ds"),
        epochs=2,
        shuffle_block_rows=3,
        train_range="0:50",
        eval_range="50:",
        reader=reader,
    )
    ds = BinaryDataset(cfg.path)
    seen = []

    def record(batch, at, where):
        for b in range(batch.batch_size):
            row = int(where(b, "dense", 0).split()[1])
            assert where(b, "labels", 0).endswith(f"labels.bin (byte offset {4 * row})")
            seen.append((at, row, float(batch.dense[b, 0])))
        return batch

    for rank in range(2):
        with train_loader(
            ds, cfg, 16, rank, 2, "cpu", seed=3, start_step=1, check=record
        ) as loader:
            assert len(list(loader)) == 5
    with eval_loader(ds, cfg, 8, 0, 2, "cpu", check=record) as loader:
        list(loader)
    assert all(row == value for _, row, value in seen)  # dense column 0 is the row number
    assert {at for at, _, _ in seen} == {f"step {s}" for s in range(2, 7)} | {
        "eval batch 0",
        "eval batch 1",
    }
    # shuffled blocks: many distinct rows
    assert len({row for at, row, _ in seen if at.startswith("step")}) > 40
    dense[55, 1] = np.inf
    write_dataset(tmp_path / "bad_eval", dense=dense)
    bad = BinaryDataset(tmp_path / "bad_eval")

    with pytest.raises(
        ValueError,
        match=rf"^eval batch 0: dense feature 1 of row 55 of .*dense.bin \(byte offset "
        rf"{(55 * DENSE + 1) * 4}\) is inf",
    ):
        with eval_loader(bad, cfg, 16, 0, 1, "cpu", check=check_batch) as loader:
            list(loader)


def test_truncated_file_and_bad_metadata_name_the_file(tmp_path):
    from pipeline.dataset import BinaryDataset, DatasetError

    write_dataset(tmp_path / "ds")
    data = (tmp_path / "ds" / "dense.bin").read_bytes()
    # 64 rows of 12 bytes, 20 short: row 62 is cut
    (tmp_path / "ds" / "dense.bin").write_bytes(data[:-20])
    with pytest.raises(
        DatasetError,
        match=rf"dense\.bin has {len(data) - 20} bytes, expected {len(data)} from meta\.json "
        rf"\(truncated or overwritten\?\); row 62 \(byte offset {62 * 12}\) is the first",
    ):
        BinaryDataset(tmp_path / "ds")
    write_dataset(tmp_path / "ds")
    meta_path = tmp_path / "ds" / "meta.json"
    good = json.loads(meta_path.read_text())
    cases = [
        ({"num_rows": "64"}, r"'num_rows' is '64', expected a JSON int"),
        ({"num_rows": None}, r"'num_rows' is None, expected a JSON int"),
        ({"format": "parquet"}, r"format is 'parquet', expected 'recfuse-criteo-binary'"),
        ({"table_rows": [11]}, r"table_rows \[11\] must be one positive row count per feature"),
        ({"table_rows": [11, 0]}, r"table_rows \[11, 0\] must be one positive"),
        (
            {"files": {"dense": good["files"]["dense"], "sparse": good["files"]["sparse"]}},
            r"files\.labels is None",
        ),
        (
            {"files": {**good["files"], "sparse": {**good["files"]["sparse"], "dtype": "int33"}}},
            r"files\.sparse\.dtype 'int33' is not a numpy dtype",
        ),
        (
            {"num_rows": 65},
            r"dense\.bin is listed with 768 bytes, but shape \[65, 3\] of float32 needs 780",
        ),
    ]
    for change, message in cases:
        meta_path.write_text(json.dumps({**good, **change}))
        with pytest.raises(DatasetError, match=rf"^{meta_path}: {message}"):
            BinaryDataset(tmp_path / "ds")
    del good["num_dense"]
    meta_path.write_text(json.dumps(good))
    with pytest.raises(DatasetError, match=rf"^{meta_path}: 'num_dense' is 'missing'"):
        BinaryDataset(tmp_path / "ds")
    meta_path.write_text('{"format": "recfuse-criteo-binary", "num_rows": 6')
    with pytest.raises(DatasetError, match=rf"^{meta_path}: not valid JSON \(.*char 49\)"):
        BinaryDataset(tmp_path / "ds")
    meta_path.write_bytes(b'{"format": "\xff"}')
    with pytest.raises(DatasetError, match=rf"^{meta_path}: not UTF-8 text \(byte offset 12\)"):
        BinaryDataset(tmp_path / "ds")


def test_training_reads_the_id_check_at_log_steps_and_names_the_step(toml):
    """In training the range check costs no host sync: the first bad id is kept on the device and raised at the
    next log step, naming the step it came in, its feature, table, sample and id."""
    cfg, parts = load_parts(["--config", toml, "--train.steps", "6", "--run.log_every", "4"])
    batches = list(host_batches(cfg))
    sparse = batches[2].sparse  # step 3
    f = sparse.keys.index("shared_b")
    lengths = sparse.lengths()[f * sparse.batch_size : (f + 1) * sparse.batch_size]
    sample = int(lengths.nonzero()[1])  # the second sample with a value
    values = sparse.values.clone()
    values[int(sparse.offsets[f * sparse.batch_size + sample])] = 23
    batches[2] = Batch(
        batches[2].dense, batches[2].labels, dataclasses.replace(sparse, values=values)
    )
    steps = []
    with pytest.raises(
        ValueError,
        match=rf"^step 3: feature 'shared_b' \(table 'shared', 23 rows\): sample {sample} has id 23 outside",
    ):
        train_losses(cfg, parts, batches=batches, after_step=lambda r: steps.append(r.step))
    assert steps == [1, 2, 3]  # raised in step 4, a log step, before it was handed out
    # outside training the check is immediate
    with pytest.raises(ValueError, match=r"^feature 'shared_b'"):
        parts.embeddings.input_dist(batches[2].sparse)
