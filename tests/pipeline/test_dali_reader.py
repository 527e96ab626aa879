import pytest
import torch

from pipeline.criteo import PreprocessOptions, preprocess
from pipeline.dali_reader import DALI_AVAILABLE, DaliBatchReader
from pipeline.dataset import BinaryDataset
from tests.support.criteo_reference import make_lines, write_tsv

pytestmark = pytest.mark.skipif(
    not DALI_AVAILABLE, reason="NVIDIA DALI is not installed (the [dali] extra)"
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dali")
    preprocess(
        [write_tsv(tmp / "x.tsv", make_lines(200, seed=9))],
        tmp / "out",
        PreprocessOptions(min_freq=2, label_dtype="uint8", progress=False),
    )
    return BinaryDataset(tmp / "out")


def _same(a, b):
    assert torch.equal(a.dense, b.dense) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.sparse.values, b.sparse.values) and torch.equal(
        a.sparse.offsets, b.sparse.offsets
    )
    assert (
        a.sparse.keys == b.sparse.keys
        and a.labels.dtype == torch.float32
        and a.sparse.values.dtype == torch.int64
    )


@pytest.mark.parametrize("rank", [0, 1])
def test_train_batches_identical(dataset, rank):
    kw = dict(
        global_batch_size=32,
        rank=rank,
        world_size=2,
        row_range="0:180",
        epochs=2,
        shuffle_seed=4,
        block_size=5,
    )
    expected = list(dataset.train_batches(**kw))
    got = list(DaliBatchReader(dataset, dataset.train_segments(**kw), device="cpu"))
    assert len(got) == len(expected) == 2 * (180 // 32)
    for a, b in zip(got, expected, strict=True):
        _same(a, b)


def test_eval_batches_identical_with_smaller_last_batch(dataset):
    expected = list(dataset.eval_batches(48, row_range="10:150"))
    assert expected[-1].batch_size == 140 - 2 * 48
    got = list(DaliBatchReader(dataset, dataset.eval_segments(48, row_range="10:150")))
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        _same(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_outputs(dataset):
    expected = list(dataset.eval_batches(64))
    got = list(DaliBatchReader(dataset, dataset.eval_segments(64), device="cuda"))
    for a, b in zip(got, expected, strict=True):
        assert a.dense.is_cuda
        _same(type(a)(a.dense.cpu(), a.labels.cpu(), a.sparse.to("cpu")), b)
