"""Evaluation: AUC and logloss over held-out samples, predictions gathered from every rank."""

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
    logits, labels = [], []
    for batch in parts.data.eval_batches(batch_size, cfg.eval.samples):
        with dense_autocast(cfg, env.device):  # as in training: bf16 GEMMs, not fp32 ones
            logits.append(model(batch.dense, parts.embeddings(batch.sparse)).float())
        labels.append(batch.labels)
    logits, labels = torch.cat(logits), torch.cat(labels)
    if env.world_size > 1:
        both = torch.stack([logits, labels])
        # gloo all-gathers host tensors only (all-reduce and all-to-all take CUDA ones)
        if dist.get_backend() != "nccl":
            both = both.cpu()
        gathered = [torch.empty_like(both) for _ in range(env.world_size)]
        dist.all_gather(gathered, both)
        logits, labels = torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered])
    model.train()
    return auc(logits.cpu(), labels.cpu()), logloss(logits.cpu(), labels.cpu())


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
