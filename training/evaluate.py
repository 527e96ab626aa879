"""Evaluation: AUC and logloss over held-out samples, predictions gathered from every rank.

With sample weights (an eval dataset with a weight column) both are weighted, as the training loss is: AUC
counts each (positive, negative) pair with the product of their weights, logloss is sum(w * BCE) / sum(w).
Without weights they are the plain ones (every weight 1 gives the same values)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from training.build import Parts, dense_autocast
from training.config import Config
from training.distributed import DistContext


@torch.no_grad()
def evaluate(cfg: Config, parts: Parts, env: DistContext) -> tuple[float, float]:
    """(AUC, logloss) over eval.samples held-out samples of parts.data, in global batches of eval.batch_size."""
    model = parts.model
    model.eval()
    batch_size = max(cfg.eval.batch_size // env.world_size * env.world_size, env.world_size)
    logits, labels, weights = [], [], []
    for batch in parts.data.eval_batches(batch_size, cfg.eval.samples):
        with dense_autocast(cfg, env.device):  # as in training: bf16 GEMMs, not fp32 ones
            logits.append(model(batch.dense, parts.embeddings(batch.sparse)).float())
        labels.append(batch.labels)
        if batch.weights is not None:
            weights.append(batch.weights.float())
    columns = [torch.cat(logits), torch.cat(labels)] + ([torch.cat(weights)] if weights else [])
    if env.world_size > 1:
        both = torch.stack(columns)
        # gloo all-gathers host tensors only (all-reduce and all-to-all take CUDA ones)
        if dist.get_backend() != "nccl":
            both = both.cpu()
        gathered = [torch.empty_like(both) for _ in range(env.world_size)]
        dist.all_gather(gathered, both)
        columns = [torch.cat([g[i] for g in gathered]) for i in range(len(columns))]
    model.train()
    logits, labels = columns[0].cpu(), columns[1].cpu()
    if weights:
        w = columns[2].cpu()
        return weighted_auc(logits, labels, w), weighted_logloss(logits, labels, w)
    return auc(logits, labels), logloss(logits, labels)


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC via the Mann-Whitney U statistic; tied scores get their average rank."""
    scores = scores.double().flatten()
    labels = labels.flatten() > 0.5
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    sorted_scores, order = torch.sort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    # average ranks over ties
    _, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(
        torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double())
    )


def weighted_auc(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    """ROC AUC with sample weights: sum over (positive i, negative j) pairs of w_i * w_j * ([s_i > s_j] + [s_i
    == s_j] / 2), over (sum of positive weights) * (sum of negative weights); NaN when either sum is 0."""
    scores, weights = scores.double().flatten(), weights.double().flatten()
    positive = labels.flatten() > 0.5
    sorted_scores, order = torch.sort(scores)
    _, group, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    w, pos = weights[order], positive[order]
    pos_w = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, group, w * pos)
    neg_w = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, group, w * ~pos)
    total_pos, total_neg = float(pos_w.sum()), float(neg_w.sum())
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    below = torch.cumsum(neg_w, 0) - neg_w  # negative weight of the strictly lower scores
    return float((pos_w * (below + neg_w / 2)).sum() / (total_pos * total_neg))


def weighted_logloss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    """sum(w * BCE) / sum(w); NaN when every weight is 0."""
    losses = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.double(), labels.double(), reduction="none"
    )
    return float((weights.double() * losses).sum() / weights.double().sum())
