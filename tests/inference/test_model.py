"""The inference model (--export.model): it loads without RecFuse's training packages, scores as predict does
from the checkpoint, stores rows in fp16/bf16 on request, names a corrupt file, and base + delta equals the
full model at the later step."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import xxhash

import train
from inference.model import InferenceModel, ModelError
from tests.support.configs import CHECKPOINT_TOML, DYNAMIC_TOML
from training import predict
from training.predict_output import read_predictions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# dynamic tables without eviction: every key stays (and a small capacity: the tables grow)
NO_EVICTION_TOML = (
    DYNAMIC_TOML.replace("evict_after_steps = 3", "evict_after_steps = 0")
    .replace("evict_when_full = true", "evict_when_full = false")
    .replace("capacity = 48 ", "capacity = 8 ")
)


def _run(tmp_path_factory, toml_text, name, *args):
    run_dir = tmp_path_factory.mktemp(name)
    (run_dir / "c.toml").write_text(toml_text)
    argv = ["--config", str(run_dir / "c.toml"), "--run.dir", str(run_dir / "run")]
    summary = train.main(
        [*argv, "--train.checkpoint_every", "100", "--export.model", "true", *args]
    )
    return run_dir / "run", summary


@pytest.fixture(scope="module", params=["static", "dynamic"])
def run(request, tmp_path_factory):
    toml = CHECKPOINT_TOML if request.param == "static" else DYNAMIC_TOML
    return _run(tmp_path_factory, toml, request.param)


def _predict(source, out):
    predict.main(["--from", str(source), "--out", str(out)])
    return read_predictions(str(out))


def test_the_model_scores_as_predict_from_the_checkpoint(run, tmp_path):
    run_dir, summary = run
    assert summary["model"]["dense"] == "torch.export"
    model_dir = run_dir / "export" / "model"
    from_model = _predict(model_dir, tmp_path / "m.csv")
    from_ckpt = _predict(summary["checkpoint"], tmp_path / "c.csv")
    np.testing.assert_array_equal(from_model["row"], from_ckpt["row"])
    np.testing.assert_allclose(
        from_model["probability"], from_ckpt["probability"], rtol=0, atol=1e-6
    )


LOADER_ONLY = """
import sys, json, torch
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("training", "embedding", "kernels", "pipeline", "models", "train"):
            raise ImportError(f"{name} must not be imported by the inference model")
sys.meta_path.insert(0, Refuse())
from inference.model import InferenceModel
model = InferenceModel(sys.argv[1])
sparse = {f: (torch.tensor([1, 2, 3]), torch.tensor([0, 1, 1, 3])) for f in model.features}
out = model.predict(torch.ones(3, model.meta["num_dense"]), sparse)
ours = ("training", "embedding", "kernels", "pipeline", "models")
print(json.dumps({"p": out.tolist(), "modules": sorted(m for m in sys.modules if m.split(".")[0] in ours)}))
"""


def test_the_loader_imports_nothing_of_training(run):
    run_dir, _ = run
    model_dir = str(run_dir / "export" / "model")
    proc = subprocess.run(
        [sys.executable, "-c", LOADER_ONLY, model_dir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["modules"] == []
    model = InferenceModel(model_dir)
    sparse = {f: (torch.tensor([1, 2, 3]), torch.tensor([0, 1, 1, 3])) for f in model.features}
    want = model.predict(torch.ones(3, model.meta["num_dense"]), sparse)
    assert got["p"] == want.tolist()


def test_a_corrupt_file_is_named(run, tmp_path):
    copy = shutil.copytree(run[0] / "export" / "model", tmp_path / "model")
    rows = copy / "tables" / "small" / "rows.npy"
    data = bytearray(rows.read_bytes())
    data[-1] ^= 1
    rows.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"file tables/small/rows.npy is corrupt: its xxh3_64 is"):
        InferenceModel(str(copy))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_rows(dtype, run, tmp_path_factory, tmp_path):
    run_dir, _ = run
    half_dir, _ = _run(
        tmp_path_factory, CHECKPOINT_TOML, dtype, "--export.model_dtype", dtype,
        "--export.model_dtype_tables", "big,pinned",
    )  # fmt: skip
    if "users" in InferenceModel(str(run_dir / "export" / "model")).tables:
        pytest.skip("the half-row model is the static config's")
    full, half = (InferenceModel(str(d / "export" / "model")) for d in (run_dir, half_dir))
    assert half.tables["big"].rows.dtype == getattr(torch, dtype)
    assert half.tables["small"].rows.dtype == torch.float32  # not listed: float32
    size = os.path.getsize(half_dir / "export" / "model" / "tables" / "big" / "rows.npy")
    assert size < 0.6 * os.path.getsize(
        run_dir / "export" / "model" / "tables" / "big" / "rows.npy"
    )
    a = _predict(run_dir / "export" / "model", tmp_path / "a.csv")
    b = _predict(half_dir / "export" / "model", tmp_path / "b.csv")
    np.testing.assert_allclose(a["probability"], b["probability"], atol=2e-2)
    assert full.meta["tables"]["big"]["dtype"] == "float32"


def test_an_unknown_model_dtype_table_is_named(tmp_path_factory, capsys):
    with pytest.raises(SystemExit):
        _run(tmp_path_factory, CHECKPOINT_TOML, "bad", "--export.model_dtype_tables", "nope")
    assert (
        "error: config key 'export.model_dtype_tables' lists ['nope'], which are not tables of this "
        "run (big, shared, small, pinned)" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "toml",
    [CHECKPOINT_TOML, NO_EVICTION_TOML, DYNAMIC_TOML],
    ids=["static", "dynamic", "dynamic-evicting"],
)
def test_base_plus_delta_is_the_full_model(toml, tmp_path_factory, tmp_path):
    run_dir, _ = _run(tmp_path_factory, toml, "delta", "--train.steps", "4")
    base = shutil.copytree(run_dir / "export" / "model", tmp_path / "base")
    train.main(
        [
            "--config",
            str(run_dir.parent / "c.toml"),
            "--run.dir",
            str(run_dir),
            "--train.steps",
            "8",
        ]
        + ["--train.resume", "auto", "--export.model", "true", "--export.enabled", "true"]
        + ["--export.since_step", "4"]
    )
    model, full = InferenceModel(str(base)), InferenceModel(str(run_dir / "export" / "model"))
    report = model.apply_delta(str(run_dir / "export"))
    assert report["step"] == model.step == full.step == 8
    dynamic = [n for n, t in full.tables.items() if t.dynamic]
    assert report["not_recorded"] == []  # every dynamic table lists its live keys
    assert sum(t["updated"] for t in report["tables"].values()) > 0
    if dynamic:
        assert sum(report["tables"][n]["added"] for n in dynamic) > 0
    if toml is DYNAMIC_TOML:  # keys evicted between the base and the delta are dropped
        assert sum(report["tables"][n]["removed"] for n in dynamic) > 0
    for name, table in full.tables.items():
        torch.testing.assert_close(model.tables[name].rows, table.rows, rtol=0, atol=0, msg=name)
        if table.dynamic:
            torch.testing.assert_close(model.tables[name].keys, table.keys, rtol=0, atol=0)


def test_a_delta_from_a_later_step_is_refused(run, tmp_path):
    model = InferenceModel(str(run[0] / "export" / "model"))
    model.step = 2  # as if the model were older than the delta's since_step
    fake = tmp_path / "delta"
    fake.mkdir()
    meta = json.dumps({"step": 9, "since_step": 5, "tables": {}}).encode()
    (fake / "meta.json").write_bytes(meta)
    entry = {"bytes": len(meta), "xxh3_64": xxhash.xxh3_64_hexdigest(meta)}
    (fake / "manifest.json").write_text(json.dumps({"files": {"meta.json": entry}}))
    with pytest.raises(ModelError, match=r"updated in steps 3..5 would be missing"):
        model.apply_delta(str(fake))
