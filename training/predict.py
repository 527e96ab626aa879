"""Score a dataset with a trained model: one prediction per row, AUC and logloss when labels are present.

    python -m training.predict --from runs/tiny/checkpoints/step_300 --out preds.csv
    python -m training.predict --from runs/tiny --out preds.npy --data.eval_path data/day24 --eval.samples 0
    torchrun --standalone --nproc_per_node=2 -m training.predict --from runs/tiny/export/model --out p.csv

--from: a checkpoint directory (written at any world size: it loads as resharding does), a run directory (its
newest complete checkpoint), or an inference model (--export.model, inference/model.py). The config is the one
the checkpoint or model was trained with; any key can be overridden as train.py takes them (--section.key
value). The rows scored are the run's own evaluation rows: eval.samples of them (0 = every row of a dataset's
eval range) from data.eval_path, data.path's eval range, or the synthetic eval stream. --out: .csv or .npy
(training/predict_output.py), written to a temporary name and renamed once complete. Under torchrun each rank
scores its slice of every batch and rank 0 writes them in row order.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from inference.model import InferenceModel, ModelError, is_inference_model
from training import checkpoint
from training.build import Parts, build, dense_autocast
from training.checkpoint_files import CheckpointError
from training.cli import USER_ERRORS, print_help_if_asked
from training.config import Config, ConfigError, load_config
from training.data import DatasetSource, open_source
from training.distributed import DistContext, setup_distributed, shutdown
from training.evaluate import auc, logloss
from training.predict_output import OutputError, PredictionWriter, check_output_path

# what predict never does, whatever the trained config said: resume, warm-start, checkpoint, export, faults
_OFF = {
    "train": {
        "resume": "",
        "init_from": "",
        "checkpoint_every": 0,
        "fail_at_step": 0,
        "fail_at": "",
        "hang_at_step": 0,
        "inject_nan_loss_step": 0,
    },
    "export": {"enabled": False},
}
PREDICT_ERRORS = (*USER_ERRORS, CheckpointError, ModelError, OutputError)


class PredictError(ValueError):
    """A model that does not fit the config or data it is asked to score; the message names both."""


def split_args(argv: list[str]) -> tuple[str, str, list[str]]:
    """(--from, --out, the config overrides)."""
    found, rest, i = {"from": None, "out": None}, [], 0
    while i < len(argv):
        name, eq, value = argv[i][2:].partition("=") if argv[i].startswith("--") else ("", "", "")
        if name in found:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"option '--{name}' needs a value")
                i, value = i + 1, argv[i + 1]
            found[name] = value
        elif name == "config":
            raise ConfigError(
                "predict takes its config from --from (the trained run's); override keys with "
                "--section.key value"
            )
        else:
            rest.append(argv[i])
        i += 1
    if not found["from"]:
        raise ConfigError(
            "predict needs --from DIR: a checkpoint, a run directory or an inference model"
        )
    if not found["out"]:
        raise ConfigError("predict needs --out FILE (.csv or .npy)")
    return found["from"], found["out"], rest


def resolve_source(path: str) -> tuple[str, str]:
    """("model" | "checkpoint", directory) that --from names: a run directory means its newest checkpoint."""
    if not os.path.isdir(path):
        raise ConfigError(f"--from {path!r} does not exist or is not a directory")
    if is_inference_model(path):
        return "model", path
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        found = checkpoint.complete_checkpoints(path)
        if not found:
            raise ConfigError(
                f"--from {path!r} is neither a checkpoint (manifest.json), a run directory with "
                "checkpoints/step_<N>, nor an inference model"
            )
        return "checkpoint", found[-1][1]
    return "checkpoint", path


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a JSON string is a TOML basic string


def to_toml(tree: dict) -> str:
    """A config tree (to_dict's) as TOML: sections, and lists of tables as [[section.key]]."""
    lines = []
    for section, values in tree.items():
        lines.append(f"[{section}]")
        arrays = {
            k: v for k, v in values.items() if isinstance(v, list) and v and isinstance(v[0], dict)
        }
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if k not in arrays]
        for key, items in arrays.items():
            for item in items:
                lines.append(f"[[{section}.{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def predict_config(trained: dict, overrides: list[str]) -> Config:
    """The trained config (a checkpoint's or model's manifest), what predict never does turned off, then
    the command line's overrides (loaded, checked and validated as train.py's)."""
    tree = copy.deepcopy(trained)
    for section, values in _OFF.items():
        tree.setdefault(section, {}).update(values)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trained.toml")
        with open(path, "w") as f:
            f.write(to_toml(tree))
        return load_config(["--config", path, *overrides])


# ---- scoring --------------------------------------------------------------------------------------------
def first_row(data) -> int:
    """The row id of the first eval sample: a dataset's eval range start (file row), 0 for synthetic data."""
    if isinstance(data, DatasetSource):
        ds, spec = data.eval_dataset, data.cfg.data.eval_range or None
        return ds.resolve_range(spec, ds.default_eval_range)[0]
    return 0


def expected_rows(data, batch_size: int, samples: int) -> int | None:
    if isinstance(data, DatasetSource):
        ds, spec = data.eval_dataset, data.cfg.data.eval_range or None
        start, end = ds.resolve_range(spec, ds.default_eval_range)
        return (min(end, start + samples) if samples > 0 else end) - start
    return max(samples // batch_size, 1) * batch_size


def _gather(env: DistContext, both: torch.Tensor) -> torch.Tensor:
    """[2, b] (logits, labels) of every rank, concatenated in rank order: the rows in order (collective)."""
    if env.world_size == 1:
        return both
    if dist.get_backend() != "nccl":  # gloo all-gathers host tensors only
        both = both.cpu()
    gathered = [torch.empty_like(both) for _ in range(env.world_size)]
    dist.all_gather(gathered, both)
    return torch.cat(gathered, dim=1)


def score(cfg: Config, data, logits_of, env: DistContext, out: str) -> dict:
    """Collective: logits_of(batch) over the eval batches; rank 0 writes `out` and returns the metrics."""
    batch_size = max(cfg.eval.batch_size // env.world_size * env.world_size, env.world_size)
    total = expected_rows(data, batch_size, cfg.eval.samples)
    row = first_row(data)
    all_logits, all_labels = [], []
    writer = PredictionWriter(out) if env.rank == 0 else None
    bar = tqdm(total=total, unit="rows", desc="predict", disable=env.rank != 0, file=sys.stderr)
    with writer if writer is not None else contextlib.nullcontext(), bar:
        for batch in data.eval_batches(batch_size, cfg.eval.samples):
            both = torch.stack([logits_of(batch).float(), batch.labels.float()])
            both = _gather(env, both).cpu()
            if env.rank == 0:
                logits, labels = both[0], both[1]
                rows = np.arange(row, row + logits.numel(), dtype=np.int64)
                writer.write(rows, torch.sigmoid(logits.double()).numpy(), labels.numpy())
                all_logits.append(logits)
                all_labels.append(labels)
            row += both.shape[1]
            bar.update(both.shape[1])
    if env.rank != 0:
        return {}
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    return {"rows": logits.numel(), "auc": auc(logits, labels), "logloss": logloss(logits, labels)}


def checkpoint_scorer(parts: Parts, cfg: Config, env: DistContext):
    """What evaluate() computes for a batch: the dense network over the sharded embeddings' pooling."""
    parts.model.eval()

    def logits_of(batch):
        with dense_autocast(cfg, env.device):
            return parts.model(batch.dense, parts.embeddings(batch.sparse)).float()

    return logits_of


def model_scorer(model: InferenceModel):
    """The inference model's logits of a batch (on the CPU)."""

    def logits_of(batch):
        kjt = batch.sparse
        sparse = model.jagged(kjt.values.cpu(), kjt.offsets.cpu(), kjt.keys)
        return model.logits(batch.dense.cpu(), sparse)

    return logits_of


# ---- the command ----------------------------------------------------------------------------------------
def _load(kind: str, path: str, overrides: list[str]):
    """(config, model or None): the config from the checkpoint's or model's manifest."""
    if kind == "model":
        model = InferenceModel(path)
        return predict_config(model.meta["config"], overrides), model
    return predict_config(checkpoint.read_manifest(path)["config"], overrides), None


def predict(source: str, out: str, overrides: list[str]) -> dict:
    check_output_path(out)
    kind, path = resolve_source(source)
    cfg, model = _load(kind, path, overrides)
    env = setup_distributed(cfg)
    torch.manual_seed(cfg.run.seed)
    with torch.no_grad():
        if model is not None:
            data = open_source(cfg, env)
            model.check_features(data_features(cfg), cfg.data.num_dense)
            logits_of = model_scorer(model)
        else:
            parts = build(cfg, env)
            try:
                checkpoint.load(path, parts, env)
            except (KeyError, ValueError) as e:
                if isinstance(e, PREDICT_ERRORS):
                    raise
                raise PredictError(f"--from {path}: {e}") from None
            data, logits_of = parts.data, checkpoint_scorer(parts, cfg, env)
        result = score(cfg, data, logits_of, env, out)
    if env.rank == 0:
        said = f"predict: {result['rows']} rows from {path} -> {out}"
        print(f"{said} | auc {result['auc']:.6f} | logloss {result['logloss']:.6f}", flush=True)
    shutdown(env)
    return {**result, "from": path, "out": out}


def data_features(cfg: Config) -> list[str]:
    return [f for t in cfg.embedding.tables for f in (t.features or [t.name])]


@contextlib.contextmanager
def _one_line_errors():
    """A bad argument, config, dataset, checkpoint or model: `error: ...` (rank 0) and exit status 2."""
    try:
        yield
    except (*PREDICT_ERRORS, PredictError) as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    print_help_if_asked(argv, __doc__)
    with _one_line_errors():
        source, out, overrides = split_args(argv)
        return predict(source, out, overrides)


if __name__ == "__main__":
    main()
