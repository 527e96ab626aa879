"""bench/quality_compare.py: the per-model and per-budget tables over seeds (the runs themselves are train.py and
training.dim_search, tested elsewhere; here they are stand-ins with known values)."""

import statistics

from bench import quality_compare


def _summary(auc: float, logloss: float) -> dict:
    return {
        "evals": [
            {"step": 5, "auc": 0.5, "logloss": 0.7},
            {"step": 10, "auc": auc, "logloss": logloss},
        ],
        "steps": 10,
    }


def test_models_table_is_each_models_final_evaluation_over_seeds(tmp_path):
    calls = []

    def train(seed, out, args):
        calls.append((seed, out, args))
        auc = 0.7 + 0.01 * seed + (0.05 if "dcnmix" in args else 0.0)
        return _summary(auc, 0.5 - 0.01 * seed)

    rows, runs, table = quality_compare.compare_models(
        ["dlrm", "dcnmix"], [0, 1, 2], str(tmp_path), [], train
    )
    # dcnmix gets the rank it needs; every model runs every seed in its own directory
    assert [c[2] for c in calls if c[1].endswith("dcnmix")][0][-4:] == [
        "--model.name",
        "dcnmix",
        "--model.cross_low_rank",
        "8",
    ]
    assert len(calls) == 6 and len(runs["dlrm"]) == 3
    for row, bonus in zip(rows, (0.0, 0.05), strict=True):
        aucs = [0.7 + 0.01 * s + bonus for s in range(3)]
        assert row["auc_mean"] == statistics.fmean(aucs) and row["auc_std"] == statistics.stdev(
            aucs
        )
    assert (
        f"| `dcnmix` | --model.cross_low_rank 8 | 10 | {statistics.fmean([0.75, 0.76, 0.77]):.4f}"
        in "\n".join(table)
    )


def test_a_given_rank_is_not_overridden():
    assert quality_compare.model_args("dcnmix", ["--model.cross_low_rank", "2"]) == [
        "--model.name",
        "dcnmix",
    ]


def test_budget_curve_reuses_one_pretrain_per_seed(tmp_path, monkeypatch):
    calls = []

    def search(config, seed, keep, out, extra, pretrain, opts):
        calls.append((seed, keep, pretrain))
        stage = lambda auc: {"auc": auc, "logloss": 0.4}  # noqa: E731
        return {
            "stages": {
                "pretrain": stage(0.8 + seed / 100),
                "pruned": stage(0.7),
                "retrain": stage(keep),
            },
            "parameters": {"kept": int(100 * keep), "full": 100, "budget": int(100 * keep)},
            "tables": [{"name": "t", "dim": int(8 * keep)}],
        }

    monkeypatch.setattr(quality_compare, "_search", search)
    rows, _, table = quality_compare.search_curve(
        "c.toml", [1.0, 0.5], [0, 1], str(tmp_path), [], []
    )
    first = {s: str(tmp_path / f"seed_{s}" / "keep_1.0" / "pretrain") for s in (0, 1)}
    assert calls == [(0, 1.0, ""), (0, 0.5, first[0]), (1, 1.0, ""), (1, 0.5, first[1])]
    assert rows[1]["retrain_auc"] == (0.5, 0.0) and rows[0]["pretrain_auc"][0] == statistics.fmean(
        [0.8, 0.81]
    )
    assert "| 0.5 | 50 / 100 |" in "\n".join(table)
