"""The single-shot dimension search: the gate gradient, the budget, bad arguments and one search end to end."""

from __future__ import annotations

import json
import os
import tomllib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from models.objective import Objective
from tests.support.paths import ROOT
from tests.support.training import load_parts
from training.config import ConfigError
from training.dim_search import scoring
from training.dim_search.search import main
from training.export import Export
from training.warm_start import warm_start

TOML = """
[data]
num_dense = 4
signal = 2.0
[model]
bottom_mlp = [8, 8]
top_mlp = [8]
[embedding]
dim = 8
[[embedding.tables]]
name = "a"
num_embeddings = 50
[[embedding.tables]]
name = "b"
num_embeddings = 20
features = ["b1", "b2"]
[[embedding.tables]]
name = "c"
num_embeddings = 10
[optimizer]
dense_lr = 0.01
[train]
steps = 12
global_batch_size = 64
[eval]
samples = 512
batch_size = 256
"""


class Linear(nn.Module):
    """logit = <w, pooled> + <v, dense>: dL/d alpha has a closed form."""

    def __init__(self, w: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.w, self.v = nn.Parameter(w), nn.Parameter(v)

    def forward(self, dense, pooled):
        return (pooled * self.w).sum((1, 2)) + dense @ self.v


def test_gate_gradient_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    b, f, d = 6, 3, 4
    pooled, dense = torch.randn(b, f, d, generator=g), torch.randn(b, 2, generator=g)
    labels = (torch.rand(b, generator=g) > 0.5).float()
    w, v = torch.randn(f, d, generator=g), torch.randn(2, generator=g)
    batch = SimpleNamespace(dense=dense, labels=labels, weights=None)
    net = Linear(w, v)
    grad = scoring.gate_gradient(Objective(net), batch, pooled)
    # mean BCE: dL/dz_b = (sigmoid(z_b) - y_b) / B, dz_b/d alpha_fd = w_fd * pooled_bfd
    z = (pooled * w).sum((1, 2)) + dense @ v
    expected = ((torch.sigmoid(z) - labels) / b)[:, None, None] * w * pooled
    torch.testing.assert_close(grad, expected.sum(0))
    assert all(p.grad is None for p in net.parameters())  # scoring trains nothing


def test_table_scores_sum_a_tables_features():
    scores = torch.arange(12.0).reshape(4, 3)
    a, b, c = scoring.table_scores(scores, [1, 2, 1])
    torch.testing.assert_close(b, scores[1] + scores[2])
    torch.testing.assert_close(a, scores[0])
    torch.testing.assert_close(c, scores[3])


def test_budget_keeps_exactly_the_budget_and_the_best_dims():
    g = torch.Generator().manual_seed(1)
    scores = [torch.rand(8, generator=g) for _ in range(4)]
    kept = scoring.select_dims(scores, [10] * 4, 0.5)
    assert sum(10 * len(k) for k in kept) == 10 * 8 * 4 // 2
    # with equal rows, the kept dims are the 16 best of all once each table has its best
    best = {(t, int(torch.argmax(s))) for t, s in enumerate(scores)}
    rest = sorted(
        ((float(s[j]), t, j) for t, s in enumerate(scores) for j in range(8) if (t, j) not in best),
        reverse=True,
    )
    best |= {(t, j) for _, t, j in rest[: 16 - 4]}
    assert {(t, j) for t, k in enumerate(kept) for j in k} == best


def test_budget_with_unequal_rows_never_exceeds_and_leaves_nothing_that_fits():
    g = torch.Generator().manual_seed(2)
    rows = [1000, 37, 5, 200]
    scores = [torch.rand(8, generator=g) for _ in rows]
    for keep in (0.125, 0.3, 0.5, 1.0):
        kept = scoring.select_dims(scores, rows, keep)
        budget = int(keep * sum(rows) * 8)
        used = sum(r * len(k) for r, k in zip(rows, kept, strict=True))
        assert used <= budget and all(len(k) >= 1 for k in kept)
        left_out = [r for r, k in zip(rows, kept, strict=True) if len(k) < 8]
        assert all(used + r > budget for r in left_out)
    assert scoring.select_dims(scores, rows, 1.0) == [list(range(8))] * 4


def test_budget_below_one_dim_per_table_is_an_error():
    with pytest.raises(
        ConfigError, match=r"--keep 0.01 allows 6 of 640 .* raise --keep to at least 0.125"
    ):
        scoring.select_dims([torch.ones(8)] * 3, [50, 20, 10], 0.01)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--keep", "0"],
            "error: --keep 0.0 is outside (0, 1]: the fraction of parameters to keep",
        ),
        (["--keep", "1.5"], "error: --keep 1.5 is outside (0, 1]"),
        (["--keep", "0.5", "--score-batches", "0"], "error: --score-batches 0 must be >= 1"),
        (
            ["--keep", "0.5", "--embedding.dim", "x"],
            "error: config key 'embedding.dim' expects int",
        ),
        (
            ["--keep", "0.5", "--config", os.path.join(ROOT, "configs", "tiny_mixed.toml")],
            "error: table 'user' has dim 64: the search pretrains every table at embedding.dim (16)",
        ),
        (
            ["--keep", "0.5", "--pretrain", "/nonexistent"],
            "error: --pretrain /nonexistent: no summary.json there",
        ),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    config = tmp_path / "c.toml"
    config.write_text(TOML)
    with pytest.raises(SystemExit) as e:
        main(["--config", str(config), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith(message) and "\n" not in err
    assert not (tmp_path / "out" / "pretrain").exists()


def test_search_end_to_end(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(TOML)
    out = tmp_path / "out"
    result = main(
        ["--config", str(config), "--keep", "0.5", "--out", str(out), "--score-batches", "4"]
    )
    stages, p = result["stages"], result["parameters"]
    # the scoring pass reads the pretrained model: ungated, it evaluates as the pretrain did
    assert stages["pretrain_reloaded"] == stages["pretrain"]
    assert stages["pruned"]["auc"] != stages["pretrain"]["auc"]
    assert p["kept"] <= p["budget"] == (50 + 20 + 10) * 8 // 2
    assert np.isclose(np.sum(result["scores"]), 1.0)
    dims = [t["dim"] for t in result["tables"]]
    with open(out / "dims.toml", "rb") as f:
        fragment = tomllib.load(f)["embedding"]["tables"]
    assert [t["dim"] for t in fragment] == dims and fragment[1]["features"] == ["b1", "b2"]
    # the warm start holds the pretrained rows' kept columns
    _, parts = load_parts(["--config", str(config)])
    warm_start(str(out / "pretrain" / "checkpoints" / "step_12"), parts, 0)
    export = Export(str(out / "warm_start"))
    for t, table in enumerate(result["tables"]):
        keys, values, _, _ = parts.embeddings.export_rows(t, 1, 0)
        arrays = export.table(table["name"])
        order = torch.argsort(keys)
        assert np.array_equal(arrays["keys"], keys[order].numpy())
        assert np.array_equal(arrays["values"], values[order][:, table["kept"]].numpy())
    for name in ("report.md", "report.json", "search.png", "retrain.toml"):
        assert os.path.isfile(out / name)
    # the retrain ran at the searched dims from the kept columns; only the per-table projections (the
    # layers that read the embeddings) started fresh
    with open(out / "retrain" / "summary.json") as f:
        retrain = json.load(f)
    assert [t["dim"] for t in retrain["config"]["embedding"]["tables"]] == dims
    assert retrain["warm_start"]["tables"] == ["a", "b", "c"]
    projected = [t for t in result["tables"] if t["dim"] != 8]
    assert result["retrain_fresh_dense"] == [
        f"project.linears.{i}.weight" for i in range(len(projected))
    ]
    assert stages["retrain"]["auc"] == retrain["eval_auc"]
