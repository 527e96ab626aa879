"""docs/data.md's own-data example end to end: Parquet with a string id, a list and a dense column -> the
converter (train, then eval through --vocab) -> train.py at W = 1 (and W = 2 under torchrun, the same run)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import train
from pipeline.ingest.cli import main as ingest_main
from tests.support.paths import ROOT


def _blocks(kind: str) -> list[str]:
    text = (Path(ROOT) / "docs" / "data.md").read_text()
    section = text[text.index("### Example end to end") :]
    return re.findall(rf"```{kind}\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("events")
    (python,) = _blocks("python")
    exec(
        compile(
            python.replace('f"{name}.parquet"', f'f"{tmp}/{{name}}.parquet"'), "data.md", "exec"
        ),
        {},
    )
    (tmp / "events.toml").write_text(_blocks("toml")[0])
    (tmp / "model.toml").write_text(
        "[model]\nbottom_mlp = [16, 8]\ntop_mlp = [16]\n[embedding]\ndim = 8\n"
    )
    schema = ["--schema", str(tmp / "events.toml")]
    assert (
        ingest_main(
            [*schema, "--out", str(tmp / "train"), "--workers", "2", str(tmp / "train.parquet")]
        )
        == 0
    )
    eval_args = [
        "--out",
        str(tmp / "eval"),
        "--vocab",
        str(tmp / "train"),
        str(tmp / "eval.parquet"),
    ]
    assert ingest_main([*schema, *eval_args]) == 0
    return tmp


def _args(tmp, run_dir):
    return [
        "--config", str(tmp / "model.toml"), "--run.dir", str(run_dir),
        "--data.path", str(tmp / "train"), "--data.eval_path", str(tmp / "eval"),
        "--data.epochs", "3", "--train.global_batch_size", "256", "--run.log_every", "1",
        "--embedding.replicate_below_bytes", "0",
    ]  # fmt: skip


def test_example_trains_and_evaluates_on_the_eval_dataset(events):
    meta = json.loads((events / "eval" / "meta.json").read_text())
    train_meta = json.loads((events / "train" / "meta.json").read_text())
    assert meta["table_rows"] == train_meta["table_rows"] and list(meta["jagged"]) == [
        "clicked_items"
    ]
    summary = train.main(_args(events, events / "run1"))
    assert summary["steps"] == 3 * (6000 // 256)
    config = summary["config"]["embedding"]["tables"]
    assert [(t["name"], t["pooling"]) for t in config] == [
        ("user_id", "sum"),
        ("clicked_items", "mean"),
    ]
    assert config[0]["num_embeddings"] == train_meta["table_rows"][0]
    assert summary["eval_auc"] > 0.6  # the label depends on the user and the items


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_several_ranks_train_the_same_function(events, world_size):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world_size}",
        "train.py",
    ]
    run = events / f"run_w{world_size}"
    proc = subprocess.run(
        [*cmd, *_args(events, run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = events / "run1"
    if not (one / "summary.json").exists():
        train.main(_args(events, one))
    losses = [[json.loads(line)["loss"] for line in open(r / "metrics.jsonl")] for r in (one, run)]
    assert len(losses[0]) == 3 * (6000 // 256)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    auc = [json.load(open(r / "summary.json"))["eval_auc"] for r in (one, run)]
    assert auc[1] == pytest.approx(auc[0], abs=1e-4)
