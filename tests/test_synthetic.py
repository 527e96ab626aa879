"""Synthetic data: deterministic per global sample, independent of batch and world size."""

import torch

import train
from config import load_config
from pipeline.metrics import auc
from pipeline.synthetic import SyntheticData, SyntheticFeature, zipf_ids

FEATURES = [SyntheticFeature("a", 0, 100, 1, 1), SyntheticFeature("b", 1, 1000, 0, 4), SyntheticFeature("c", 1, 1000, 2, 2)]


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
    assert unpack(SyntheticData(FEATURES, num_dense=3, seed=6).batch(0, 40)) != whole  # the seed matters


def test_world_size_split_equals_single_rank():
    data = SyntheticData(FEATURES, num_dense=3, seed=1)
    single = [unpack(b) for b in train.local_batches(data, 24, 0, 1, 3, SyntheticData.TRAIN)]
    for world in (2, 4):
        per_rank = [list(train.local_batches(data, 24, r, world, 3, SyntheticData.TRAIN)) for r in range(world)]
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


def test_hidden_model_gives_learnable_signal():
    cfg = load_config(["--config", "configs/tiny.toml"])
    tables = train.resolve_tables(cfg.embedding)
    data = train.synthetic_source(cfg, tables)
    batch = data.batch(0, 20000, SyntheticData.EVAL)
    best = auc(data.true_logits(0, 20000, SyntheticData.EVAL), batch.labels)
    assert best > 0.85  # a model that learns the hidden effects can beat the 0.70 bar
    assert 0.2 < float(batch.labels.mean()) < 0.8
