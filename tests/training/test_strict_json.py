"""Strict JSON: what the run writes parses under a reader that refuses NaN/Infinity; a missing or non-finite
figure is null. The re-run of a finished run (resume auto, nothing left to train) writes such a summary."""

import json
import math

import numpy as np
import pytest
import torch

import train
from training import jsonio

TOML = """
[data]
num_dense = 3
[model]
bottom_mlp = [8, 4]
top_mlp = [8]
[embedding]
dim = 4
[[embedding.tables]]
name = "a"
num_embeddings = 37
[[embedding.tables]]
name = "b"
num_embeddings = 11
[train]
steps = 4
global_batch_size = 16
warmup_steps = 1
[eval]
samples = 32
batch_size = 16
[run]
log_every = 2
"""


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_figures_become_null_at_any_depth():
    obj = {
        "a": float("nan"),
        "b": [float("inf"), 1.5, (2, -float("inf"))],
        "c": np.float32("nan"),
        "d": torch.tensor(float("inf")),
        "e": np.int64(3),
    }
    assert _strict(jsonio.dumps(obj)) == {
        "a": None,
        "b": [None, 1.5, [2, None]],
        "c": None,
        "d": None,
        "e": 3,
    }


def test_rerun_of_a_finished_run_writes_a_valid_summary(tmp_path):
    config = tmp_path / "small.toml"
    config.write_text(TOML)
    argv = ["--config", str(config), "--run.dir", str(tmp_path / "run"), "--train.resume", "auto"]
    first = train.main(argv)
    assert math.isfinite(first["final_loss"])
    again = train.main(argv)  # resumes at the last step: no step left to train
    assert math.isnan(again["samples_per_sec"])
    summary = _strict((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["eval_auc"] == pytest.approx(first["eval_auc"])
    assert summary["final_loss"] is None and summary["samples_per_sec"] is None
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [_strict(line)["step"] for line in lines] == [2, 4]
    manifest = tmp_path / "run" / "checkpoints" / "step_4" / "manifest.json"
    assert _strict(manifest.read_text())["step"] == 4
