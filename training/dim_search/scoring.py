"""The single-shot search's scores and budget (Qu et al., SIGIR 2022): a gate alpha [F, D] = 1 multiplies the
pooled embeddings [B, F, D]; each dimension's score is |dL/d alpha| summed over batches of training data,
normalized over all fields; the highest-scoring dimensions are kept up to a parameter budget."""

from __future__ import annotations

import itertools
from dataclasses import replace

import torch
from torch import nn
from tqdm import tqdm

from models.objective import Objective
from training.config import ConfigError
from training.distributed import unwrap


class Gated(nn.Module):
    """network(dense, pooled * gate): the pretrained network with dimensions switched off (a 0/1 gate), as
    evaluate() calls a model."""

    def __init__(self, network: nn.Module, gate: torch.Tensor):
        super().__init__()
        self.network = network
        self.register_buffer("gate", gate)

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.network(dense, pooled * self.gate)


def gate_gradient(objective: nn.Module, batch, pooled: torch.Tensor) -> torch.Tensor:
    """dL/d alpha [F, D] at alpha = 1 for one batch. pooled is detached: the embeddings' backward (which
    updates the tables in place) never runs, and no dense parameter gets a gradient."""
    alpha = torch.ones(pooled.shape[1:], device=pooled.device, requires_grad=True)
    loss = objective(batch.dense, pooled.detach() * alpha, batch.labels, batch.weights)
    (grad,) = torch.autograd.grad(loss, alpha)
    return grad


def gate_scores(parts, num_batches: int, progress: bool = True) -> torch.Tensor:
    """Scores [F, D] (float64, summing to 1): |dL/d alpha| of each of the first num_batches training batches,
    summed, then divided by the sum over all fields and dims. One process (W = 1): the whole global batch."""
    objective = Objective(unwrap(parts.model))
    emb, total, seen = parts.embeddings, None, 0
    batches = parts.data.train_batches(0)
    try:
        bar = tqdm(
            itertools.islice(batches, num_batches),
            total=num_batches,
            desc="dim scores",
            unit="batch",
            disable=not progress,
        )
        for batch in bar:
            with torch.no_grad():
                pooled = emb(batch.sparse)
            with parts.autocast:
                grad = gate_gradient(objective, batch, pooled).abs().double().cpu()
            total = grad if total is None else total + grad
            seen += 1
    finally:
        batches.close()
    if seen < num_batches:
        raise ConfigError(
            f"--score-batches {num_batches}: the training data has only {seen} batches "
            f"(train.steps {parts.data.cfg.train.steps}); lower --score-batches"
        )
    norm = total.sum()
    return total / norm if norm > 0 else total


def table_scores(scores: torch.Tensor, features_per_table: list[int]) -> list[torch.Tensor]:
    """Each table's score per dim [D]: the sum of its features' rows of scores (a table shared by several
    features keeps one set of dims for all of them)."""
    if sum(features_per_table) != scores.shape[0]:
        raise ValueError(
            f"scores have {scores.shape[0]} fields but the tables have {sum(features_per_table)} features"
        )
    out, start = [], 0
    for n in features_per_table:
        out.append(scores[start : start + n].sum(0))
        start += n
    return out


def select_dims(scores: list[torch.Tensor], rows: list[int], keep: float) -> list[list[int]]:
    """Kept dimensions (sorted indices) of each table under the budget floor(keep * sum(rows) * D) parameters,
    a table's dim costing its rows. Each table first keeps its best dim; then dims are taken in descending
    score (ties: table, then dim order) while they fit, so the kept parameters never exceed the budget and no
    dim left out would still fit."""
    dim = int(scores[0].numel())
    full = sum(rows) * dim
    budget = int(keep * full)
    if sum(rows) > budget:
        raise ConfigError(
            f"--keep {keep} allows {budget} of {full} embedding parameters, but one dim per table "
            f"needs {sum(rows)}; raise --keep to at least {sum(rows) / full:.4g}"
        )
    kept = [{int(torch.argmax(s))} for s in scores]
    left = budget - sum(rows)
    candidates = sorted(
        (
            (-float(s[j]), t, j)
            for t, s in enumerate(scores)
            for j in range(dim)
            if j not in kept[t]
        ),
    )
    for _, t, j in candidates:
        if rows[t] <= left:
            kept[t].add(j)
            left -= rows[t]
    return [sorted(k) for k in kept]


def pruned_parts(parts, gate: torch.Tensor):
    """parts whose model is the pretrained network with the gate applied (evaluate(cfg, pruned_parts(...)))."""
    network = unwrap(parts.model)
    return replace(parts, model=Gated(network, gate.to(next(network.parameters()).device)))


def gate_of(kept: list[list[int]], features_per_table: list[int], dim: int) -> torch.Tensor:
    """The 0/1 gate [F, D] that keeps each table's kept dims in every one of its features."""
    rows = []
    for dims, n in zip(kept, features_per_table, strict=True):
        row = torch.zeros(dim)
        row[dims] = 1.0
        rows += [row] * n
    return torch.stack(rows)
