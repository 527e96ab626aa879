"""The single-process embedding collection against nn.EmbeddingBag + textbook optimizers."""

import pytest
import torch

from embedding import EmbeddingCollection, SparseOptimizer, Table
from pipeline.batch import KeyedJagged
from tests.support.small_tables import BATCHES, TABLES


def reference_bags(weights):
    bags = {}
    for t, w in zip(TABLES, weights, strict=True):
        bag = torch.nn.EmbeddingBag(t.num_embeddings, t.dim, mode=t.pooling)
        with torch.no_grad():
            bag.weight.copy_(w)
        bags[t.name] = bag
    return bags


def reference_pooled(bags, batch):
    out = []
    for t in TABLES:
        for f in t.features:
            flat = torch.tensor([i for bag in batch[f] for i in bag], dtype=torch.int64)
            offs = torch.tensor([0] + [len(b) for b in batch[f]][:-1]).cumsum(0)
            out.append(bags[t.name](flat, offs))
    return torch.stack(out, dim=1)


def textbook_step(name, w, g, touched, state, lr, eps=1e-8, b1=0.9, b2=0.999):
    """Update only touched rows, as the fused optimizer does; state per row."""
    for r in touched.nonzero().flatten().tolist():
        if name == "sgd":
            w[r] -= lr * g[r]
        elif name == "adagrad":  # row-wise: one accumulator per row, of the mean squared gradient
            state["acc"][r] += (g[r] ** 2).mean()
            w[r] -= lr * g[r] / (state["acc"][r].sqrt() + eps)
        else:  # lazy adam with a per-row step count
            state["t"][r] += 1
            t = state["t"][r]
            state["m"][r] = b1 * state["m"][r] + (1 - b1) * g[r]
            state["v"][r] = b2 * state["v"][r] + (1 - b2) * g[r] ** 2
            m_hat = state["m"][r] / (1 - b1**t)
            v_hat = state["v"][r] / (1 - b2**t)
            w[r] -= lr * m_hat / (v_hat.sqrt() + eps)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_matches_embedding_bag_and_textbook_optimizer(optimizer):
    lr = 0.1
    ec = EmbeddingCollection(TABLES, SparseOptimizer(optimizer, lr), seed=3)
    start = ec.full_state_dict()
    weights = [start[t.name]["weight"].clone().double() for t in TABLES]
    states = [
        {
            "acc": torch.zeros(t.num_embeddings, dtype=torch.float64),
            "m": torch.zeros(t.num_embeddings, t.dim, dtype=torch.float64),
            "v": torch.zeros(t.num_embeddings, t.dim, dtype=torch.float64),
            "t": torch.zeros(t.num_embeddings, dtype=torch.float64),
        }
        for t in TABLES
    ]
    torch.manual_seed(0)
    for batch in BATCHES:
        kjt = KeyedJagged.from_lists(batch)
        upstream = torch.randn(3, 4, 5)
        bags = reference_bags([w.float() for w in weights])
        ref = reference_pooled(bags, batch)
        (ref * upstream).sum().backward()

        pooled = ec(kjt)
        torch.testing.assert_close(pooled, ref, atol=1e-6, rtol=1e-5)
        (pooled * upstream).sum().backward()

        for t, w, st in zip(TABLES, weights, states, strict=True):
            g = bags[t.name].weight.grad.double()
            touched = torch.zeros(t.num_embeddings, dtype=torch.bool)
            for f in t.features:
                for bag in batch[f]:
                    touched[bag] = True
            textbook_step(optimizer, w, g, touched, st, lr)

    got = ec.full_state_dict()
    for t, w, st in zip(TABLES, weights, states, strict=True):
        torch.testing.assert_close(got[t.name]["weight"].double(), w, atol=2e-6, rtol=1e-5)
        if optimizer == "adagrad":
            torch.testing.assert_close(
                got[t.name]["momentum1"].double(), st["acc"], atol=1e-7, rtol=1e-5
            )
        if optimizer == "adam":
            torch.testing.assert_close(
                got[t.name]["momentum1"].double(), st["m"], atol=1e-7, rtol=1e-5
            )
            torch.testing.assert_close(
                got[t.name]["momentum2"].double(), st["v"], atol=1e-9, rtol=1e-5
            )
            assert torch.equal(got[t.name]["row_steps"].double(), st["t"])


def test_pooled_gradient_reaches_dense_inputs_only_through_update():
    ec = EmbeddingCollection(TABLES, SparseOptimizer("sgd", 1.0))
    before = ec.weight.clone()
    kjt = KeyedJagged.from_lists(BATCHES[0])
    ec(kjt).sum().backward()
    changed = (ec.weight != before).any(dim=1)
    assert 0 < int(changed.sum()) < ec.weight.shape[0]  # only touched rows move
    assert ec.weight.grad is None  # no dense table gradient exists


def test_bf16_storage_keeps_fp32_math_close():
    ec32 = EmbeddingCollection(TABLES, SparseOptimizer("adam", 0.05))
    ec16 = EmbeddingCollection(TABLES, SparseOptimizer("adam", 0.05), storage_dtype="bfloat16")
    for batch in BATCHES:
        kjt = KeyedJagged.from_lists(batch)
        ec32(kjt).sum().backward()
        ec16(kjt).sum().backward()
    torch.testing.assert_close(ec16.weight.float(), ec32.weight, atol=2e-2, rtol=2e-2)
    assert (
        ec16.weight.dtype == torch.bfloat16
        and ec16.storage.state["momentum1"].dtype == torch.float32
    )


def test_out_of_range_id_names_feature_sample_and_value():
    ec = EmbeddingCollection(TABLES, SparseOptimizer("sgd", 0.1))
    batch = {**BATCHES[0], "b2": [[6], [], [0, 7]]}
    with pytest.raises(ValueError, match=r"feature 'b2' \(table 'b', 7 rows\): sample 2 has id 7"):
        ec(KeyedJagged.from_lists(batch))
    with pytest.raises(ValueError, match=r"feature 'a' .* sample 0 has negative id -1"):
        ec(KeyedJagged.from_lists({**BATCHES[0], "a": [[-1], [], [1]]}))


def test_one_collection_holds_one_dim():
    # tables of several dims go to embedding.mixed (one collection per dim)
    with pytest.raises(
        ValueError, match=r"holds tables of one dim, got \[4, 8\]: .* groups them by dim"
    ):
        EmbeddingCollection(
            [Table("x", 3, 4, "sum", ("x",)), Table("y", 3, 8, "sum", ("y",))], SparseOptimizer()
        )


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_single_rank_path_equals_the_exchange_path(optimizer):
    """One rank pools straight from the table and fuses pooling backward with the optimizer; the general path
    (dedup, exchange, pool_backward, sparse_update) on one rank computes the same thing, to the bit on CPU."""
    results = []
    for single_rank in (True, False):
        ec = EmbeddingCollection(
            TABLES, SparseOptimizer(optimizer, 0.1), seed=2, always_exchange=not single_rank
        )
        pooled = []
        for batch in BATCHES * 2:
            out = ec(KeyedJagged.from_lists(batch))
            (out * torch.arange(out.numel()).view(out.shape).sin()).sum().backward()
            pooled.append(out.detach())
        results.append((pooled, {k: v.clone() for k, v in ec.storage.tracked().items()}))
    (pooled_a, state_a), (pooled_b, state_b) = results
    assert all(torch.equal(a, b) for a, b in zip(pooled_a, pooled_b, strict=True))
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
