"""Single-shot embedding dimension search (Qu et al., "Single-shot Embedding Dimension Search in Recommender
System", SIGIR 2022): pretrain, score every dimension of every field, keep the best up to a parameter budget,
retrain with the searched per-table dims warm-started from the kept dimensions.

    python -m training.dim_search --config configs/tiny.toml --keep 0.5 --out runs/search
    python -m training.dim_search --config c.toml --keep 0.25 --out runs/s --world-size 2 -- --data.path DIR

Arguments after ``--`` (and any ``--section.key value`` not listed below) go to train.py for the pretrain:
the config as written is the pretrain, every table at embedding.dim (give it a generous dim, e.g. 64).
Writes into --out: pretrain/ (the run, its last checkpoint), dims.toml ([[embedding.tables]] with each table's
searched dim), warm_start/ (an export of the pretrained tables' kept columns, train.init_from reads it),
retrain.toml (the config with those tables and train.init_from), retrain/ (that run), report.md, report.json
and search.png. The export also holds the pretrained dense weights: the retrain loads those of the same name
and shape, so the dense layers that read the embeddings, whose shapes the new dims change (the per-table
projections; the first layers over the concatenation in dcnv2, dcnmix and wide_deep), start fresh.
docs/dim_search.md has the method and the measurements.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

from training.build import build
from training.cli import one_line_errors
from training.config import ConfigError, load_config
from training.dim_search import outputs, report, scoring
from training.distributed import setup_distributed, unwrap
from training.evaluate import evaluate
from training.warm_start import warm_start

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ONLY_LAST_STEP = 10**12  # train.checkpoint_every that saves only the run's last step


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The search's options and train.py's arguments (after ``--``, or any option not listed here)."""
    after = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="python -m training.dim_search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the pretrain's config TOML")
    parser.add_argument(
        "--keep", type=float, required=True, help="fraction of embedding parameters"
    )
    parser.add_argument("--out", required=True, help="directory for the runs, configs and report")
    parser.add_argument("--score-batches", type=int, default=50, help="training batches scored")
    parser.add_argument("--world-size", type=int, default=1, help="processes of each training run")
    parser.add_argument(
        "--pretrain",
        default="",
        help="reuse this run directory (an earlier search's OUT/pretrain of the same config) as the pretrain",
    )
    parser.add_argument(
        "--retrain", action=argparse.BooleanOptionalAction, default=True, help="run the retrain"
    )
    args, rest = parser.parse_known_args(own)
    if not 0 < args.keep <= 1:
        raise ConfigError(
            f"--keep {args.keep} is outside (0, 1]: the fraction of parameters to keep"
        )
    if args.score_batches < 1:
        raise ConfigError(f"--score-batches {args.score_batches} must be >= 1")
    if args.world_size < 1:
        raise ConfigError(f"--world-size {args.world_size} must be >= 1")
    return args, ["--config", args.config, *rest, *after]


def run_train(argv: list[str], world_size: int, what: str) -> dict:
    """train.py with argv in a new process (under torchrun when world_size > 1); returns its summary. A failed
    run stops the search with one line naming it (train.py has printed why)."""
    train_py = os.path.join(ROOT, "train.py")
    cmd = [sys.executable, train_py, *argv]
    if world_size > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}"]
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        print(
            f"error: the {what} failed (exit status {proc.returncode}): {' '.join(cmd)}",
            file=sys.stderr,
        )
        raise SystemExit(proc.returncode)
    run_dir = argv[argv.index("--run.dir") + 1] if "--run.dir" in argv else None
    if run_dir is None:  # the retrain config names its run.dir
        run_dir = load_config(argv).run.dir
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def pretrain(args, train_argv: list[str]) -> dict:
    cfg = load_config(train_argv)  # a config error stops here, before anything is written
    mixed = [t for t in cfg.embedding.tables if t.dim not in (0, cfg.embedding.dim)]
    if mixed:  # the gate scores every field at one dim
        raise ConfigError(
            f"table {mixed[0].name!r} has dim {mixed[0].dim}: the search pretrains every table at "
            f"embedding.dim ({cfg.embedding.dim}); remove the tables' dim keys"
        )
    if args.pretrain:
        return reused_pretrain(args.pretrain, cfg)
    extra = ["--run.dir", os.path.join(args.out, "pretrain")]
    if cfg.train.checkpoint_every == 0:  # the scoring pass reads the last step's checkpoint
        extra += ["--train.checkpoint_every", str(ONLY_LAST_STEP)]
    return run_train([*train_argv, *extra], args.world_size, "pretrain")


def reused_pretrain(run_dir: str, cfg) -> dict:
    """The summary of an earlier pretrain run, checked to be this config's at its full dims."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        raise ConfigError(
            f"--pretrain {run_dir}: no summary.json there (not a finished train.py run)"
        )
    with open(path) as f:
        summary = json.load(f)
    if not summary.get("checkpoint"):
        raise ConfigError(f"--pretrain {run_dir}: the run saved no checkpoint ({path} names none)")
    theirs = summary["config"]["embedding"]["tables"]
    names = [t["name"] for t in theirs]
    if names != [t.name for t in cfg.embedding.tables] and cfg.embedding.tables:
        raise ConfigError(f"--pretrain {run_dir}: its tables {names} are not this config's")
    return summary


def _stage(summary: dict | None) -> dict | None:
    if summary is None:
        return None
    return {"auc": summary["eval_auc"], "logloss": summary["eval_logloss"]}


def score_and_prune(args, train_argv: list[str], checkpoint: str) -> dict:
    """The scoring pass in this process (W = 1): the pretrained model from its checkpoint, the scores, the
    budget, the pruned model's evaluation, the warm-start export and the retrain config."""
    cfg = load_config([*train_argv, "--run.dir", os.path.join(args.out, "score")])
    listed = list(cfg.embedding.tables)  # before a dataset fills them in
    env = setup_distributed(cfg)
    parts = build(cfg, env)
    warm_start(checkpoint, parts, env.rank, cfg.train.checkpoint_buffer_bytes)
    emb = parts.embeddings
    features = [len(t.features) for t in emb.tables]
    rows = [t.num_embeddings for t in emb.tables]
    scores = scoring.gate_scores(parts, args.score_batches)
    by_table = scoring.table_scores(scores, features)
    kept = scoring.select_dims(by_table, rows, args.keep)
    dim = cfg.embedding.dim
    every = [list(range(dim))] * len(rows)  # the gate at 1: the pretrained model as loaded
    reloaded = evaluate(
        cfg, scoring.pruned_parts(parts, scoring.gate_of(every, features, dim)), env
    )
    pruned = evaluate(cfg, scoring.pruned_parts(parts, scoring.gate_of(kept, features, dim)), env)
    dense = unwrap(parts.model).state_dict()
    export = outputs.warm_start_export(emb, kept, os.path.join(args.out, "warm_start"), dense)
    retrain_toml = write_configs(args, train_argv, listed or cfg.embedding.tables, kept)
    tables = [
        {"name": t.name, "features": list(t.features), "rows": r, "dim": len(k), "kept": k}
        for t, r, k in zip(emb.tables, rows, kept, strict=True)
    ]
    return {
        "scores": scores.tolist(),
        "table_scores": [s.tolist() for s in by_table],
        "tables": tables,
        "full_dim": dim,
        "parameters": {
            "full": sum(rows) * dim,
            "budget": int(args.keep * sum(rows) * dim),
            "kept": sum(r * len(k) for r, k in zip(rows, kept, strict=True)),
        },
        "reloaded": {"auc": reloaded[0], "logloss": reloaded[1]},
        "pruned": {"auc": pruned[0], "logloss": pruned[1]},
        "device": str(env.device),
        "warm_start": export,
        "retrain_config": retrain_toml,
    }


def write_configs(args, train_argv: list[str], tables: list, kept: list[list[int]]) -> str:
    """dims.toml (the tables with their searched dims) and retrain.toml (the given config with those tables,
    warm-started from the search's export; absolute paths, so it runs from any directory); returns the latter."""
    entries = outputs.table_entries(tables, [len(k) for k in kept])
    out = os.path.abspath(args.out)
    settings = {
        "run": {"dir": os.path.join(out, "retrain")},
        "train": {"init_from": os.path.join(out, "warm_start")},
    }
    outputs.write_text(os.path.join(args.out, "dims.toml"), outputs.tables_toml(entries))
    retrain_toml = os.path.join(args.out, "retrain.toml")
    outputs.write_text(
        retrain_toml, outputs.config_toml(load_config(train_argv), entries, settings)
    )
    return retrain_toml


def search(args, train_argv: list[str], command: str) -> dict:
    os.makedirs(args.out, exist_ok=True)
    pre = pretrain(args, train_argv)
    found = score_and_prune(args, train_argv, pre["checkpoint"])
    retrained = None
    if args.retrain:
        retrained = run_train(["--config", found["retrain_config"]], args.world_size, "retrain")
    result = {
        "command": command,
        "config": args.config,
        "keep": args.keep,
        "score_batches": args.score_batches,
        "world_size": args.world_size,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **{k: v for k, v in found.items() if k not in ("pruned", "reloaded")},
        "stages": {
            "pretrain": _stage(pre),
            "pretrain_reloaded": found["reloaded"],
            "pruned": found["pruned"],
            "retrain": _stage(retrained),
        },
        # the retrain's dense parameters that did not come from the pretrain
        "retrain_fresh_dense": None
        if retrained is None
        else retrained["warm_start"]["fresh_dense"],
    }
    report.write(result, args.out)
    print(report.markdown(result).split("| table |")[0], flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m training.dim_search", *argv])
    with one_line_errors():
        args, train_argv = parse_args(argv)
        return search(args, train_argv, command)


if __name__ == "__main__":
    main()
