import json

import numpy as np
import pytest
import torch

from pipeline.criteo import PreprocessOptions, preprocess
from pipeline.dataset import BinaryDataset, DatasetError, default_ranges, parse_range
from tests.support.criteo_reference import make_lines, reference, write_tsv

ROWS = 301


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    lines = make_lines(ROWS, seed=5)
    preprocess(
        [write_tsv(tmp / "x.tsv", lines)],
        tmp / "out",
        PreprocessOptions(hash_rows=[97], progress=False),
    )
    return tmp / "out", reference(lines, hash_rows=97)


def _rows_of(batch):
    """Reconstruct the per-sample sparse rows [b, 26] from a feature-major single-hot KeyedJagged."""
    b = batch.batch_size
    return batch.sparse.values.view(len(batch.sparse.keys), b).T


def test_metadata(dataset_dir):
    ds = BinaryDataset(dataset_dir[0])
    assert ds.feature_names == [f"C{i}" for i in range(1, 27)]
    assert ds.table_rows == [97] * 26 and ds.num_dense == 13 and ds.num_rows == ROWS
    assert ds.default_train_range == (0, ROWS * 7 // 8) and ds.default_eval_range == (
        ROWS * 7 // 8,
        ROWS * 15 // 16,
    )


def test_batch_layout_and_values(dataset_dir):
    path, (dense, sparse, labels, _) = dataset_dir
    ds = BinaryDataset(path)
    batch = next(ds.eval_batches(16, row_range="10:50"))
    batch.sparse.validate()
    assert batch.dense.dtype == torch.float32 and batch.labels.dtype == torch.float32
    assert batch.sparse.keys == ds.feature_names and batch.sparse.lengths().eq(1).all()
    np.testing.assert_array_equal(batch.dense.numpy(), dense[10:26])
    np.testing.assert_array_equal(batch.labels.numpy(), labels[10:26])
    np.testing.assert_array_equal(_rows_of(batch).numpy(), sparse[10:26])


def _global_batches(ds, world_size, **kw):
    per_rank = [list(ds.train_batches(24, rank, world_size, **kw)) for rank in range(world_size)]
    assert len({len(p) for p in per_rank}) == 1
    return [torch.cat([_rows_of(p[s]) for p in per_rank]) for s in range(len(per_rank[0]))]


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_world_size_independent_order(dataset_dir, world_size):
    ds = BinaryDataset(dataset_dir[0])
    kw = dict(row_range="0:280", epochs=2, shuffle_seed=3, block_size=10)
    single = _global_batches(ds, 1, **kw)
    assert len(single) == 2 * (280 // 24)
    for a, b in zip(single, _global_batches(ds, world_size, **kw), strict=True):
        assert torch.equal(a, b)


def test_block_shuffle_is_deterministic_and_a_permutation(dataset_dir):
    path, (_, sparse, _, _) = dataset_dir
    ds = BinaryDataset(path)
    kw = dict(row_range="0:240", shuffle_seed=7, block_size=7)
    first = torch.cat(_global_batches(ds, 1, **kw))
    assert torch.equal(first, torch.cat(_global_batches(BinaryDataset(path), 1, **kw)))
    assert not torch.equal(first, torch.from_numpy(sparse[:240]))  # shuffled ...
    # ... but every row once
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, sparse[:240].tolist()))
    other_seed = torch.cat(_global_batches(ds, 1, row_range="0:240", shuffle_seed=8, block_size=7))
    assert not torch.equal(first, other_seed)
    epochs = _global_batches(ds, 1, row_range="0:240", shuffle_seed=7, block_size=7, epochs=2)
    # a fresh order per epoch
    assert not torch.equal(torch.cat(epochs[:10]), torch.cat(epochs[10:]))


def test_unshuffled_and_drop_last(dataset_dir):
    path, (_, sparse, _, _) = dataset_dir
    ds = BinaryDataset(path)
    batches = list(ds.train_batches(24, row_range="5:100", shuffle_seed=None))
    assert len(batches) == 3  # 95 rows -> 3 full batches, 23 rows dropped
    np.testing.assert_array_equal(torch.cat([_rows_of(b) for b in batches]).numpy(), sparse[5:77])


def test_start_step_resumes_exactly(dataset_dir):
    ds = BinaryDataset(dataset_dir[0])
    kw = dict(row_range="0:200", epochs=3, shuffle_seed=1, block_size=9)
    full = list(ds.train_batches(16, 1, 2, **kw))
    resumed = list(ds.train_batches(16, 1, 2, start_step=17, **kw))
    assert len(resumed) == len(full) - 17
    for a, b in zip(full[17:], resumed, strict=True):
        assert torch.equal(a.sparse.values, b.sparse.values) and torch.equal(a.dense, b.dense)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_batches(dataset_dir, world_size):
    path, (_, sparse, labels, _) = dataset_dir
    ds = BinaryDataset(path)
    per_rank = [
        list(ds.eval_batches(12, r, world_size, row_range=(100, 150))) for r in range(world_size)
    ]
    assert len({len(p) for p in per_rank}) == 1
    rows = [torch.cat([_rows_of(p[s]) for p in per_rank]) for s in range(len(per_rank[0]))]
    # 4 full batches, then 2 rows split evenly (W=3: dropped)
    covered = 48 + (2 // world_size) * world_size
    np.testing.assert_array_equal(torch.cat(rows).numpy(), sparse[100 : 100 + covered])
    assert ds.eval_batches(12).__next__().labels.numel() == 12


def test_parse_range():
    assert parse_range("10:20", 100) == (10, 20)
    assert parse_range(":20", 100) == (0, 20) and parse_range("90:", 100) == (90, 100)
    assert parse_range("-10:", 100) == (90, 100)
    for bad in ["20:10", "0:101", "abc", "1:x", "5:5"]:
        with pytest.raises(ValueError):
            parse_range(bad, 100)


def test_default_ranges_with_days():
    assert default_ranges(100, [30, 30, 40]) == ((0, 60), (60, 80))
    assert default_ranges(1600) == ((0, 1400), (1400, 1500))
    with pytest.raises(DatasetError):
        default_ranges(100, [50, 40])


def test_bad_arguments(dataset_dir):
    ds = BinaryDataset(dataset_dir[0])
    with pytest.raises(ValueError, match="multiple of world size"):
        next(ds.train_batches(10, 0, 3))
    with pytest.raises(ValueError, match="fewer rows than one global batch"):
        next(ds.train_batches(64, row_range="0:50"))


def test_truncated_file_is_refused(dataset_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir[0], copy)
    data = (copy / "sparse.bin").read_bytes()
    (copy / "sparse.bin").write_bytes(data[:-100])
    with pytest.raises(
        DatasetError, match=rf"sparse\.bin has {len(data) - 100} bytes, expected {len(data)}"
    ):
        BinaryDataset(copy)
    (copy / "sparse.bin").write_bytes(data)
    (copy / "labels.bin").unlink()
    with pytest.raises(DatasetError, match=r"labels\.bin is missing"):
        BinaryDataset(copy)


def test_checksum_and_meta_errors(dataset_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir[0], copy)
    BinaryDataset(copy, verify_checksums=True)
    data = bytearray((copy / "dense.bin").read_bytes())
    data[0] ^= 1
    (copy / "dense.bin").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="sha256"):
        BinaryDataset(copy, verify_checksums=True)
    meta = json.loads((copy / "meta.json").read_text())
    meta["num_rows"] += 1
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="listed with"):
        BinaryDataset(copy)
    (copy / "meta.json").write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        BinaryDataset(copy)
    with pytest.raises(DatasetError, match="does not exist"):
        BinaryDataset(tmp_path / "nope")


def test_loaders_from_config(dataset_dir):
    from training.config import DataConfig
    from training.data import eval_loader, open_dataset, train_loader

    cfg = DataConfig(
        path=str(dataset_dir[0]),
        epochs=2,
        shuffle_block_rows=5,
        train_range="0:200",
        eval_range="100:",
    )
    ds = open_dataset(cfg)
    with train_loader(ds, cfg, 20, 1, 2, "cpu", seed=3, start_step=4) as loader:
        got = [b.sparse.values for b in loader]
    expected = [b.sparse.values for b in ds.train_batches(20, 1, 2, "0:200", 2, 3, 5, start_step=4)]
    assert len(got) == 2 * 10 - 4 and all(
        torch.equal(a, b) for a, b in zip(got, expected, strict=True)
    )
    # train.steps = 7
    with train_loader(ds, cfg, 20, 1, 2, "cpu", seed=3, start_step=4, last_step=7) as loader:
        got = [b.sparse.values for b in loader]
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, expected[:3], strict=False))
    # the dense features in bf16, cast on the host: the bits of a cast on the device
    dense = [b.dense for b in ds.train_batches(20, 1, 2, "0:200", 2, 3, 5, start_step=4)][:3]
    kwargs = dict(seed=3, start_step=4, last_step=7, dense_dtype=torch.bfloat16)
    with train_loader(ds, cfg, 20, 1, 2, "cpu", **kwargs) as loader:
        got = [b.dense for b in loader]
    assert all(a.dtype == torch.bfloat16 for a in got)
    assert all(torch.equal(a, b.to(torch.bfloat16)) for a, b in zip(got, dense, strict=True))
    with eval_loader(ds, cfg, 16, 0, 2, "cpu", max_samples=40) as loader:
        sizes = [b.batch_size for b in loader]
    assert sizes == [8, 8, 4]


# ---- data.eval_path: evaluate on a second dataset ------------------------------------------------------------
@pytest.fixture(scope="module")
def train_and_eval_dirs(tmp_path_factory):
    """A train dataset with a vocabulary, a later "day" mapped through it (--vocab), and one hashed on its own."""
    tmp = tmp_path_factory.mktemp("eval_path")
    preprocess(
        [write_tsv(tmp / "train.tsv", make_lines(200, seed=11))],
        tmp / "train",
        PreprocessOptions(min_freq=2, progress=False),
    )
    preprocess(
        [write_tsv(tmp / "test.tsv", make_lines(90, seed=12))],
        tmp / "test",
        PreprocessOptions(vocab=str(tmp / "train"), progress=False),
    )
    preprocess(
        [tmp / "test.tsv"], tmp / "hashed", PreprocessOptions(hash_rows=[50], progress=False)
    )
    return tmp


def test_eval_path_trains_on_every_train_row_and_evaluates_the_other(train_and_eval_dirs):
    from training.config import DataConfig
    from training.data import eval_loader, open_dataset, open_eval_dataset

    tmp = train_and_eval_dirs
    data = DataConfig(path=str(tmp / "train"), eval_path=str(tmp / "test"))
    train_ds = open_dataset(data)
    eval_ds = open_eval_dataset(data, train_ds)
    assert train_ds.default_train_range == (0, 200) and train_ds.steps_per_epoch(20) == 10
    assert eval_ds.default_eval_range == (0, 90) and eval_ds.table_rows == train_ds.table_rows
    for eval_range, rows in [("", (0, 90)), ("10:40", (10, 40))]:
        data.eval_range = eval_range
        with eval_loader(eval_ds, data, 16, 0, 1, "cpu") as loader:
            got = torch.cat([_rows_of(b) for b in loader])
        np.testing.assert_array_equal(got.numpy(), eval_ds.sparse[rows[0] : rows[1]])
    # without: 7/8
    assert open_dataset(DataConfig(path=str(tmp / "train"))).default_train_range == (0, 175)


def test_eval_path_in_the_trainer(train_and_eval_dirs):
    from tests.support.training import build_parts, context
    from training.config import load_config
    from training.evaluate import evaluate

    tmp = train_and_eval_dirs
    base = [
        "--embedding.dim",
        "4",
        "--model.bottom_mlp",
        "8,4",
        "--model.top_mlp",
        "8",
        "--train.global_batch_size",
        "20",
        "--eval.samples",
        "90",
        "--eval.batch_size",
        "30",
    ]
    cfg = load_config(
        [*base, "--data.path", str(tmp / "train"), "--data.eval_path", str(tmp / "test")]
    )
    parts = build_parts(cfg)
    assert (
        cfg.train.steps == 10
        and parts.data.eval_dataset.path == tmp / "test"
        and parts.data.dataset.path == tmp / "train"
    )
    # the same (seeded, untrained) model on the test dataset read as data.path with an explicit eval range
    same = load_config([*base, "--data.path", str(tmp / "test"), "--data.eval_range", "0:90"])
    other = build_parts(same)
    assert evaluate(cfg, parts, context()) == evaluate(same, other, context())


def test_eval_path_mismatch_names_both_datasets_and_the_table(train_and_eval_dirs, tmp_path):
    import shutil

    from training.config import ConfigError, DataConfig, load_config
    from training.data import open_dataset, open_eval_dataset

    tmp = train_and_eval_dirs
    train_ds = open_dataset(DataConfig(path=str(tmp / "train"), eval_path=str(tmp / "hashed")))
    first = train_ds.feature_names[0]
    with pytest.raises(
        DatasetError,
        match=rf"eval dataset {tmp / 'hashed'} does not match train dataset {tmp / 'train'}: "
        rf"table {first} has {train_ds.table_rows[0]} rows in {tmp / 'train'} and 50 rows "
        rf"in {tmp / 'hashed'}",
    ):
        open_eval_dataset(
            DataConfig(path=str(tmp / "train"), eval_path=str(tmp / "hashed")), train_ds
        )
    renamed = tmp_path / "renamed"
    shutil.copytree(tmp / "test", renamed)
    meta = json.loads((renamed / "meta.json").read_text())
    meta["feature_names"][3] = "D4"
    (renamed / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        DatasetError, match=r"its categorical feature 3 is 'D4', the train dataset's is 'C4'"
    ):
        open_eval_dataset(DataConfig(path=str(tmp / "train"), eval_path=str(renamed)), train_ds)
    with pytest.raises(ConfigError, match=r"'data.eval_path' needs data.path"):
        load_config(["--data.eval_path", str(tmp / "test")])
