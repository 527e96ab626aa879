"""Sample weights (a dataset's weights.bin) in the loss and in evaluation: the weighted mean BCE by hand,
rows of weight 0 change nothing, W=1 and W=2 train alike, weighted AUC and logloss."""

import math

import numpy as np
import pytest
import torch

from pipeline.dataset import BinaryDataset
from pipeline.dataset_format import write_dataset
from tests.support.dist_utils import run_distributed
from tests.support.training import build_parts, context, dense_state, train_losses
from training.config import load_config
from training.evaluate import auc, evaluate, logloss, weighted_auc, weighted_logloss

ROWS, BATCH = 240, 24
TABLES = [50, 30, 20]


def _arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(ROWS, 3)).astype(np.float32)
    sparse = np.stack([rng.integers(0, n, ROWS) for n in TABLES], axis=1).astype(np.int64)
    labels = (rng.random(ROWS) < 0.3).astype(np.float32)
    weights = rng.uniform(0, 3, ROWS).astype(np.float32)
    weights[rng.random(ROWS) < 0.25] = 0.0
    return dense, sparse, labels, weights


def _write(path, dense, sparse, labels, weights=None):
    write_dataset(path, dense, sparse, labels, ["a", "b", "c"], TABLES, weights=weights)
    return str(path)


def _config(path: str, *extra: str):
    return load_config(
        [
            "--embedding.dim",
            "4",
            "--model.bottom_mlp",
            "8,4",
            "--model.top_mlp",
            "8",
            "--train.global_batch_size",
            str(BATCH),
            "--data.path",
            path,
            "--data.train_range",
            "0:192",
            "--data.eval_range",
            "192:240",
            "--eval.samples",
            "48",
            "--eval.batch_size",
            "24",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def weighted(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("weighted") / "ds", *_arrays())


def test_the_reader_returns_the_stored_weights(weighted):
    ds = BinaryDataset(weighted)
    batch = next(ds.eval_batches(16, row_range="10:40"))
    np.testing.assert_array_equal(batch.weights.numpy(), _arrays()[3][10:26])
    assert batch.weights.dtype == torch.float32


def test_loss_is_the_weighted_mean_bce_of_the_batch(weighted):
    cfg = _config(weighted, "--data.shuffle", "false")
    parts = build_parts(cfg)
    with parts.data.train_batches() as loader:
        batch = next(loader)  # rows 0 .. 23 (no shuffling)
    with torch.no_grad():
        logits = parts.model(batch.dense, parts.embeddings(batch.sparse)).double().tolist()
        loss = float(
            parts.step_loss(
                batch.dense, parts.embeddings(batch.sparse), batch.labels, batch.weights
            )
        )
    _, _, labels, weights = _arrays()
    by_hand = [
        w * (math.log1p(math.exp(-x)) if y == 1 else math.log1p(math.exp(x)))
        for x, y, w in zip(logits, labels[:BATCH], weights[:BATCH], strict=True)
    ]
    assert loss == pytest.approx(sum(by_hand) / float(weights[:BATCH].sum()), rel=1e-5)
    unweighted = sum(
        math.log1p(math.exp(-x if y == 1 else x))
        for x, y in zip(logits, labels[:BATCH], strict=True)
    )
    assert loss != pytest.approx(unweighted / BATCH, rel=1e-3)


def _run(path: str):
    cfg = _config(path)
    parts = build_parts(cfg)
    losses = train_losses(cfg, parts)
    return losses, dense_state(parts), parts.embeddings.full_state_dict()


def test_rows_of_weight_zero_change_nothing(tmp_path):
    dense, sparse, labels, weights = _arrays()
    zero = weights == 0
    other_dense, other_labels = dense.copy(), labels.copy()
    other_dense[zero] = 7.0  # other features and labels on the rows that weigh nothing
    other_labels[zero] = 1.0 - labels[zero]
    ref = _run(_write(tmp_path / "ref", dense, sparse, labels, weights))
    same = _run(_write(tmp_path / "other", other_dense, sparse, other_labels, weights))
    assert ref[0] == same[0]
    for name, value in ref[1].items():
        torch.testing.assert_close(same[1][name], value, rtol=0, atol=0, msg=name)
    for name, state in ref[2].items():
        torch.testing.assert_close(same[2][name]["weight"], state["weight"], rtol=0, atol=0)
    # the same change on rows that weigh 1 does change the run
    ones = np.ones_like(weights)
    changed = _run(_write(tmp_path / "ones", other_dense, sparse, other_labels, ones))
    assert changed[0] != _run(_write(tmp_path / "ones_ref", dense, sparse, labels, ones))[0]


def _train(rank, world_size, group, path):
    cfg = _config(path)
    parts = build_parts(cfg, rank, world_size, group)
    losses = list(train_losses(cfg, parts, world_size).values())
    evaluation = evaluate(cfg, parts, context(rank, world_size, group))
    return losses, evaluation, parts.embeddings.full_state_dict()


@pytest.mark.slow
def test_world_sizes_one_and_two_agree(weighted, tmp_path):
    ref_losses, ref_eval, ref_tables = run_distributed(_train, 1, weighted)
    losses, evaluation, tables = run_distributed(_train, 2, weighted)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor(evaluation), torch.tensor(ref_eval), rtol=1e-5, atol=1e-6
    )
    for name, state in ref_tables.items():
        torch.testing.assert_close(tables[name]["weight"], state["weight"], rtol=1e-5, atol=1e-5)
    # and the weights count: the same rows without them train otherwise
    dense, sparse, labels, _ = _arrays()
    plain = run_distributed(_train, 1, _write(tmp_path / "plain", dense, sparse, labels))
    assert plain[0] != pytest.approx(ref_losses, rel=1e-4)


def test_weighted_metrics():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4, 0.2])
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    ones = torch.ones(6)
    assert weighted_auc(scores, labels, ones) == pytest.approx(auc(scores, labels))
    assert weighted_logloss(scores, labels, ones) == pytest.approx(logloss(scores, labels))
    # an integer weight counts as that many copies of the row
    counts = torch.tensor([2, 1, 3, 1, 2, 0])
    copies = torch.repeat_interleave(torch.arange(6), counts)
    w = counts.float()
    assert weighted_auc(scores, labels, w) == pytest.approx(auc(scores[copies], labels[copies]))
    assert weighted_logloss(scores, labels, w) == pytest.approx(
        logloss(scores[copies], labels[copies])
    )


def test_a_bad_weight_names_the_step_and_the_row(tmp_path):
    path = _write(tmp_path / "ds", *_arrays())
    weights = np.memmap(tmp_path / "ds" / "weights.bin", np.float32, "r+", shape=(ROWS,))
    weights[5] = -1.0
    weights.flush()
    cfg = _config(path, "--data.shuffle", "false")
    with pytest.raises(ValueError) as raised, build_parts(cfg).data.train_batches() as loader:
        list(loader)
    assert str(raised.value) == (
        f"step 1: weight of row 5 of {tmp_path / 'ds' / 'weights.bin'} (byte offset 20) is -1.0, "
        "expected a finite value >= 0"
    )


def test_dali_reader_refuses_weights(weighted):
    from training.config import ConfigError, DataConfig
    from training.data import _batches

    with pytest.raises(
        ConfigError, match=r"'dali', which does not read sample weights; dataset .*ds has"
    ):
        _batches(BinaryDataset(weighted), DataConfig(reader="dali"), iter([]))
