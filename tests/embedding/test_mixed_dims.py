"""Tables of dims 4, 16 and 64 in one run (embedding.mixed): W = 1, 2 and 4 train the same, a checkpoint
written at W = 2 loads at W = 1 and 4 (resharded) and resumes, the tables export and warm-start a new run,
and the inference model scores as the trained one."""

import numpy as np
import pytest
import torch

from embedding import MixedDimCollection
from inference.model import InferenceModel
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
    out["split"] = _load_only(rank, world_size, group, toml, split_checkpoint)
    return out


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
