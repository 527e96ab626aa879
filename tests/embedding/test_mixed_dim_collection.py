"""Tables of dims 4, 16 and 64 in one run (embedding.mixed): W = 1, 2 and 4 train the same, a checkpoint
written at W = 2 loads at W = 1 and 4 (resharded) and resumes, the tables export and warm-start a new run,
and the inference model scores as the trained one."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from embedding import MixedDimCollection, SparseOptimizer, Table, make_collection, plan_sharding
from embedding.comm import Exchange
from embedding.tables import row_bytes
from inference.model import InferenceModel
from pipeline.batch import KeyedJagged
from tests.support.configs import MIXED_DIMS_TOML
from tests.support.dist_utils import run_distributed
from tests.support.training import (
    context,
    dense_state,
    host_batches,
    load_parts,
    train_with_checkpoints,
)
from training import checkpoint
from training.config import load_config
from training.digest import weights_digest
from training.export import export_embeddings, load_export
from training.model_export import export_model
from training.warm_start import resume_or_warm_start

STEPS, SPLIT = 6, 3


def _load_only(rank, world_size, group, toml, path):
    _, parts = load_parts(["--config", toml], rank, world_size, group)
    step = checkpoint.load(path, parts, context(rank, world_size, group))
    return step, parts.embeddings.full_state_dict(), dense_state(parts)


def _case(rank, world_size, group, toml, base, split_checkpoint):
    """Train STEPS steps (a checkpoint at SPLIT), export at W = 2, load split_checkpoint (the W = 2 run's)."""
    extra = ["--train.checkpoint_every", str(SPLIT)]
    losses, parts = train_with_checkpoints(
        rank, world_size, group, toml, f"{base}/w{world_size}", STEPS, extra
    )
    assert isinstance(parts.embeddings, MixedDimCollection)
    out = {
        "losses": [losses[s] for s in sorted(losses)],
        "tables": parts.embeddings.full_state_dict(),
        "dense": dense_state(parts),
        "digest": weights_digest(parts),
        "plan": {n: p.placement for n, p in parts.plan.placements.items()},
    }
    if world_size == 2:
        export_embeddings(parts.embeddings, f"{base}/export", 1, rank)
    if world_size > 1:
        out["collectives"] = _step_collectives(parts, toml, rank, world_size)
        out["packed_same"] = _packed_matches_separate(rank, world_size, group)
    out["split"] = _load_only(rank, world_size, group, toml, split_checkpoint)
    return out


def _step_collectives(parts, toml, rank, world_size):
    """The exchange calls of one batch's input_dist, then of its forward and backward, over all groups."""
    calls = []
    for group in parts.embeddings.groups:
        for name in ("exchange_counts", "start", "all_reduce_"):
            original = getattr(group.exchange, name)

            def counted(*args, _original=original, _name=name, **kwargs):
                calls.append(_name)
                return _original(*args, **kwargs)

            setattr(group.exchange, name, counted)
    batch = next(iter(host_batches(load_config(["--config", toml]), rank, world_size, steps=1)))
    md = parts.embeddings.input_dist(batch.sparse).wait()
    at_input_dist = list(calls)
    parts.embeddings(md).sum().backward()
    replicated = sum(bool(g.layout.num_replicated_rows) for g in parts.embeddings.groups)
    return at_input_dist, calls[len(at_input_dist) :], replicated


def _packed_matches_separate(rank, world_size, group):
    """Exchange.all_to_all_groups and gradients_packed against one all-to-all per group, for each
    exchange dtype: the same bits (fp16: each group keeps its own scale per destination)."""
    gen, dims, same = torch.Generator().manual_seed(rank), (64, 4, 16), {}
    for dtype in ("fp32", "bf16", "fp16"):
        ex, sds, messages, rows = Exchange(group, rank, world_size, dtype), [], [], []
        for g, dim in enumerate(dims):
            send = torch.tensor([(rank + g + r) % 3 for r in range(world_size)])
            recv = ex.all_to_all(send, [1] * world_size, [1] * world_size)
            sds.append(
                SimpleNamespace(
                    send_splits=send.tolist(),
                    recv_splits=recv.tolist(),
                    send_counts=send,
                    recv_counts=recv,
                )
            )
            n = int(send.sum())
            message = ex.gradient_message(n, dim, "cpu")
            message.grads.copy_(torch.randn(n, dim, generator=gen) * 10.0 ** -(g + rank))
            message.lookups.copy_(torch.arange(n) + 100 * rank)
            messages.append(message)
            rows.append(torch.randn(n, dim, generator=gen).to(ex.dtype))
        packed = ex.gradients_packed(messages, sds)
        moved = ex.all_to_all_groups(
            rows, [s.send_splits for s in sds], [s.recv_splits for s in sds]
        )
        same[dtype] = all(
            torch.equal(p[0], want[0]) and torch.equal(p[1], want[1])
            for p, want in zip(
                packed,
                [ex.gradients(m, sd) for m, sd in zip(messages, sds, strict=True)],
                strict=True,
            )
        ) and all(
            torch.equal(m, ex.all_to_all(r, sd.send_splits, sd.recv_splits))
            for m, r, sd in zip(moved, rows, sds, strict=True)
        )
    return same


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "mixed.toml"
    path.write_text(MIXED_DIMS_TOML)
    return str(path)


@pytest.fixture(scope="module")
def runs(toml, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("runs"))
    split = f"{base}/w2/checkpoints/step_{SPLIT}"
    out = {
        w: run_distributed(_case, w, toml, base, split) for w in (2, 4, 1)
    }  # W = 2 writes it first
    out["base"] = base
    return out


def _assert_close_state(got, want, exact=False):
    for name, state in want.items():
        for key, value in state.items():
            if exact:
                assert torch.equal(got[name][key], value), f"{name} {key}"
            else:
                torch.testing.assert_close(
                    got[name][key], value, rtol=1e-5, atol=1e-5, msg=f"{name} {key}"
                )


@pytest.mark.parametrize("world_size", [2, 4])
def test_same_losses_and_weights_at_every_world_size(runs, world_size):
    ref, got = runs[1], runs[world_size]
    torch.testing.assert_close(
        torch.tensor(got["losses"]), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-6
    )
    _assert_close_state(got["tables"], ref["tables"])
    _assert_close_state({"dense": got["dense"]}, {"dense": ref["dense"]})
    assert ref["losses"][0] != ref["losses"][-1]
    dims = {name: state["weight"].shape[1] for name, state in ref["tables"].items()}
    assert dims == {"big": 64, "shared": 4, "small": 16, "pinned": 4, "odd": 64}


@pytest.mark.parametrize("world_size", [2, 4])
def test_the_groups_share_each_exchange(runs, world_size):
    # 3 groups (dims 64, 4, 16): one all-to-all of their counts (one split read), one of their keys,
    # one of their rows, one of their gradients and one all-reduce of their replicated tables
    at_input_dist, step, replicated = runs[world_size]["collectives"]
    assert at_input_dist == ["exchange_counts", "start"]
    assert replicated >= 2  # so that the one all-reduce below packs several groups'
    assert step == ["start", "start", "all_reduce_"]


@pytest.mark.parametrize("world_size", [2, 4])
def test_packed_exchanges_move_the_same_bits_in_every_dtype(runs, world_size):
    assert runs[world_size]["packed_same"] == {"fp32": True, "bf16": True, "fp16": True}


@pytest.mark.parametrize("world_size", [1, 4])
def test_checkpoint_of_w2_loads_resharded(runs, world_size):
    step, tables, dense = runs[world_size]["split"]
    ref_step, ref_tables, ref_dense = runs[2]["split"]
    assert step == ref_step == SPLIT
    # big is split row-wise over 2 ranks there: at W = 4 its rows have other owners, at W = 1 one
    assert runs[2]["plan"]["big"] == "row" and runs[4]["plan"]["big"] == "row"
    _assert_close_state(tables, ref_tables, exact=True)
    for key, value in ref_dense.items():
        assert torch.equal(dense[key], value), key


def test_w2_checkpoint_resumes_at_w1(runs, toml):
    base = runs["base"]
    resume = ["--train.resume", f"{base}/w2/checkpoints/step_{SPLIT}"]
    losses, parts = train_with_checkpoints(0, 1, None, toml, f"{base}/resumed", STEPS, resume)
    assert sorted(losses) == list(range(SPLIT + 1, STEPS + 1))
    torch.testing.assert_close(
        torch.tensor([losses[s] for s in sorted(losses)]),
        torch.tensor(runs[2]["losses"][SPLIT:]),
        rtol=1e-5,
        atol=1e-6,
    )
    _assert_close_state(parts.embeddings.full_state_dict(), runs[2]["tables"])


def test_export_warm_starts_a_new_run(runs, toml):
    base = runs["base"]
    cfg, parts = load_parts(["--config", toml, "--train.init_from", f"{base}/export"])
    resume_or_warm_start(cfg, parts, context(), checkpoint.Checkpointer(cfg, parts, context()))
    full = parts.embeddings.full_state_dict()
    for name, state in runs[2]["tables"].items():
        exported = load_export(f"{base}/export", name)
        rows = exported["keys"]
        assert exported["values"].shape[1] == state["weight"].shape[1]
        np.testing.assert_array_equal(exported["values"], state["weight"][rows].numpy())
        assert torch.equal(full[name]["weight"][rows], state["weight"][rows]), name


def test_inference_model_scores_as_training(toml, tmp_path):
    cfg, parts = load_parts(["--config", toml, "--run.dir", str(tmp_path), "--train.steps", "2"])
    info = export_model(cfg, parts, context())
    model = InferenceModel(info["dir"])
    batch = next(iter(host_batches(cfg, steps=1)))
    kjt = batch.sparse
    with torch.no_grad():
        pooled = parts.embeddings(kjt)
        want = parts.model(batch.dense, pooled)
    assert pooled.shape == (kjt.batch_size, 64 + 4 + 4 + 16 + 4 + 64)
    sparse = InferenceModel.jagged(kjt.values, kjt.offsets, kjt.keys)
    torch.testing.assert_close(model.logits(batch.dense, sparse), want, rtol=1e-5, atol=1e-5)


def _collection(always_exchange=False):
    tables = [
        Table("a", 11, 8, "sum", ("a",)),
        Table("b", 7, 2, "mean", ("b", "b2"), out_of_range="modulo"),
        Table("c", 3, 8, "sum", ("c",)),
    ]
    plan = plan_sharding(tables, 1, optimizer="adagrad", default_placement="table")
    optimizer = SparseOptimizer("adagrad", 0.1)
    return make_collection(tables, plan, optimizer, always_exchange=always_exchange)


BAGS = {
    "a": [[1, 1, 4], [], [10]],
    "b": [[2], [2, 9], []],
    "b2": [[6], [], [0, 2]],
    "c": [[0], [2], []],
}


def test_exchange_path_matches_the_one_rank_path_and_ids_are_checked():
    """W = 1 both ways: straight from storage, and through the packed exchange (always_exchange)."""
    kjt = KeyedJagged.from_lists(BAGS)
    direct, exchanged = _collection(), _collection(always_exchange=True)
    assert isinstance(direct, MixedDimCollection)
    # the planner sizes each table at its own dim
    for name, rows, dim in (("a", 11, 8), ("b", 7, 2)):
        want = rows * row_bytes(dim, "float32", "adagrad")
        assert direct.plan.placements[name].bytes_per_rank == [want]
    for _ in range(2):
        pooled = [c(kjt) for c in (direct, exchanged)]
        assert pooled[0].shape == (3, 8 + 2 + 2 + 8)
        torch.testing.assert_close(pooled[0], pooled[1])
        for p in pooled:
            (p * torch.arange(p.numel()).view_as(p)).sum().backward()
    torch.testing.assert_close(direct.full_state_dict(), exchanged.full_state_dict())
    # feature a's columns come first, b's 2 after them, as the feature order says
    a_rows = direct.full_state_dict()["a"]["weight"]
    with torch.no_grad():
        torch.testing.assert_close(direct(kjt)[2, :8], a_rows[10])
    # table b's modulo policy applies in its group: id 9 of 7 rows reads row 2
    assert direct.check_ids(kjt).values.tolist()[4] == 2
    bad = KeyedJagged.from_lists({**BAGS, "c": [[0], [3], []]})
    with pytest.raises(ValueError, match=r"feature 'c' \(table 'c', 3 rows\): sample 1 has id 3"):
        direct(bad)


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton on CPU tensors runs under the interpreter only",
)
def test_triton_kernels_match_the_reference_with_mixed_dims(monkeypatch):
    """Each group's gradient is a strided slice of the concatenation's: the Triton kernels read it in place."""
    pytest.importorskip("triton")
    kjt = KeyedJagged.from_lists(BAGS)
    states = []
    for force in ("0", "1"):
        monkeypatch.setenv("RECFUSE_FORCE_TRITON", force)
        for collection in (_collection(), _collection(always_exchange=True)):
            pooled = collection(kjt)
            (pooled * torch.arange(pooled.numel()).view_as(pooled)).sum().backward()
            states.append(collection.full_state_dict())
    for state in states[1:]:
        torch.testing.assert_close(state, states[0], rtol=1e-6, atol=1e-6)
