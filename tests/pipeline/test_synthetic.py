"""Synthetic data: deterministic per global sample, independent of batch and world size."""

import pytest
import torch

from pipeline.synthetic import SyntheticData, SyntheticFeature, zipf_ids
from tests.support.synthetic_reference import ReferenceSyntheticData
from training.config import load_config
from training.data import SyntheticSource
from training.distributed import DistContext
from training.evaluate import auc

FEATURES = [
    SyntheticFeature("a", 0, 100, 1, 1),
    SyntheticFeature("b", 1, 1000, 0, 4),
    SyntheticFeature("c", 1, 1000, 2, 2),
]


def unpack(batch):
    """Per sample: (dense, label, {feature: ids})."""
    kjt = batch.sparse
    b = batch.batch_size
    out = []
    for i in range(b):
        bags = {}
        for f, name in enumerate(kjt.keys):
            lo, hi = int(kjt.offsets[f * b + i]), int(kjt.offsets[f * b + i + 1])
            bags[name] = kjt.values[lo:hi].tolist()
        out.append((batch.dense[i].tolist(), float(batch.labels[i]), bags))
    return out


def test_samples_depend_only_on_global_index():
    data = SyntheticData(FEATURES, num_dense=3, seed=5)
    whole = unpack(data.batch(0, 40))
    pieces = unpack(data.batch(0, 13)) + unpack(data.batch(13, 27))
    assert whole == pieces
    # the seed matters
    assert unpack(SyntheticData(FEATURES, num_dense=3, seed=6).batch(0, 40)) != whole


def test_world_size_split_equals_single_rank():
    data = SyntheticData(FEATURES, num_dense=3, seed=1)
    single = [unpack(b) for b in data.local_batches(24, 0, 1, 3, SyntheticData.TRAIN)]
    for world in (2, 4):
        per_rank = [
            list(data.local_batches(24, r, world, 3, SyntheticData.TRAIN)) for r in range(world)
        ]
        for step in range(3):
            assert sum((unpack(per_rank[r][step]) for r in range(world)), []) == single[step]


def test_bags_and_ids_in_range_with_empty_bags():
    batch = SyntheticData(FEATURES, num_dense=2).batch(0, 500)
    batch.sparse.validate()
    lengths = batch.sparse.lengths().view(3, 500)
    assert lengths[0].eq(1).all() and lengths[2].eq(2).all()
    assert lengths[1].min() == 0 and lengths[1].max() == 4
    assert batch.sparse.values.min() >= 0 and batch.sparse.values.max() < 1000


def test_zipf_is_skewed_and_bounded():
    ids = zipf_ids(torch.rand(100_000, dtype=torch.float64), 1000, 1.2)
    counts = torch.bincount(ids, minlength=1000)
    assert ids.min() >= 0 and ids.max() < 1000
    assert counts[0] > 10 * counts[100] > 0


def test_train_batches_in_the_dense_dtype_asked_for():
    cfg = load_config(["--config", "configs/tiny.toml", "--train.steps", "2"])
    source = SyntheticSource(cfg, DistContext())
    with source.train_batches() as plain, source.train_batches(0, torch.bfloat16) as cast:
        pairs = list(zip(plain, cast, strict=True))
    assert len(pairs) == 2 and all(a.dense.dtype == torch.float32 for a, _ in pairs)
    for a, b in pairs:
        assert torch.equal(b.dense, a.dense.to(torch.bfloat16)) and torch.equal(a.labels, b.labels)


def test_hidden_model_gives_learnable_signal():
    cfg = load_config(["--config", "configs/tiny.toml"])
    data = SyntheticSource(cfg, DistContext()).generator
    batch = data.batch(0, 20000, SyntheticData.EVAL)
    best = auc(data.true_logits(0, 20000, SyntheticData.EVAL), batch.labels)
    assert best > 0.85  # a model that learns the hidden effects can beat the 0.70 bar
    assert 0.2 < float(batch.labels.mean()) < 0.8


# ---- the device generator against the frozen host generator (tests/support/synthetic_reference.py) -------------------
ORACLE_FEATURES = {
    # one id per bag, two features on one hidden table
    "one-hot": [
        SyntheticFeature("a", 0, 100, 1, 1),
        SyntheticFeature("b", 1, 7, 1, 1),
        SyntheticFeature("c", 1, 7, 1, 1),
    ],
    # fixed multi-hot bags in runs of equal and unequal lengths: no host sync
    "fixed": [
        SyntheticFeature("a", 0, 1000, 3, 3),
        SyntheticFeature("b", 1, 50, 3, 3),
        SyntheticFeature("c", 2, 9, 1, 1),
        SyntheticFeature("d", 3, 40_000_000, 5, 5),
        SyntheticFeature("e", 4, 3, 2, 2),
    ],
    # variable bags with empty ones, a never-filled feature and one table behind two features
    "variable": [
        SyntheticFeature("a", 0, 100, 1, 1),
        SyntheticFeature("b", 1, 1000, 0, 4),
        SyntheticFeature("c", 1, 1000, 2, 2),
        SyntheticFeature("d", 2, 30, 0, 0),
        SyntheticFeature("e", 3, 500, 0, 7),
    ],
    # the MLPerf DCN-v2 bag sizes, 100 ids in one bag
    "mlperf": [
        SyntheticFeature(f"C{i + 1}", i, rows, k, k)
        for i, (rows, k) in enumerate(
            zip(
                [
                    40_000_000,
                    39060,
                    17295,
                    7424,
                    20265,
                    3,
                    7122,
                    1543,
                    63,
                    40_000_000,
                    3067956,
                    405282,
                    10,
                    2209,
                    11938,
                    155,
                    4,
                    976,
                    14,
                    40_000_000,
                    40_000_000,
                    40_000_000,
                    590152,
                    12973,
                    108,
                    36,
                ],
                [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1],
                strict=True,
            )
        )
    ],
}


def assert_same_batch(got, ref):
    assert got.sparse.keys == ref.sparse.keys
    for name in ("values", "offsets"):
        a, b = getattr(got.sparse, name), getattr(ref.sparse, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert got.dense.dtype == ref.dense.dtype and torch.equal(got.dense, ref.dense)
    assert got.labels.dtype == ref.labels.dtype and torch.equal(got.labels, ref.labels)


@pytest.mark.parametrize("stream", [SyntheticData.TRAIN, SyntheticData.EVAL])
@pytest.mark.parametrize("start, count", [(0, 1), (0, 97), (5_000_003, 64), (2**41 + 7, 13)])
# 1.0: the exp branch
@pytest.mark.parametrize("exponent, num_dense", [(1.05, 13), (1.0, 4), (1.6, 0)])
@pytest.mark.parametrize("shape", list(ORACLE_FEATURES))
def test_bit_identical_to_the_host_generator(shape, exponent, num_dense, start, count, stream):
    args = (ORACLE_FEATURES[shape], num_dense, exponent, 1.7, 11)
    new, ref = SyntheticData(*args, device="cpu"), ReferenceSyntheticData(*args)
    got, want = new._generate(start, count, stream), ref._generate(start, count, stream)
    assert_same_batch(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)  # the logits too, on CPU


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("shape", ["variable", "mlperf"])
def test_world_size_slices_match_the_host_generator(shape, world_size):
    args = (ORACLE_FEATURES[shape], 13, 1.05, 1.0, 2)
    new, ref = SyntheticData(*args), ReferenceSyntheticData(*args)
    for rank in range(world_size):
        got = list(new.local_batches(16, rank, world_size, 3, SyntheticData.TRAIN, first_step=1))
        want = list(
            SyntheticData.local_batches(
                ref, 16, rank, world_size, 3, SyntheticData.TRAIN, first_step=1
            )
        )
        assert len(got) == len(want) == 2
        for a, b in zip(got, want, strict=True):
            assert_same_batch(a, b)


def test_in_place_hash_is_the_shared_hash():
    from kernels.hashing import uniform
    from pipeline.synthetic import _uniform_

    x = torch.cat(
        [
            torch.arange(-300, 300),
            torch.tensor([2**63 - 1, -(2**63), 2**40 + 5]),
            torch.randint(-(2**62), 2**62, (1000,), generator=torch.Generator().manual_seed(0)),
        ]
    )
    assert torch.equal(_uniform_(x.clone()), uniform(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", list(ORACLE_FEATURES))
def test_cuda_generator_matches_cpu(shape):
    args = (ORACLE_FEATURES[shape], 13, 1.05, 1.0, 3)
    cpu, cuda = SyntheticData(*args), SyntheticData(*args, device="cuda")
    for start, count in [(0, 4096), (10**9, 333)]:
        want, got = cpu.batch(start, count), cuda.batch(start, count)
        assert got.dense.is_cuda and got.sparse.values.is_cuda
        # exact: hashing; ids only move if pow's last ulp crosses an integer, labels if the logit's ulp flips one
        assert torch.equal(got.dense.cpu(), want.dense) and torch.equal(
            got.sparse.offsets.cpu(), want.sparse.offsets
        )
        assert torch.equal(got.sparse.values.cpu(), want.sparse.values)
        assert int((got.labels.cpu() != want.labels).sum()) <= 1
        torch.testing.assert_close(
            cuda.true_logits(start, count).cpu(), cpu.true_logits(start, count)
        )
