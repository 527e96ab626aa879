"""Evaluation metrics, per-stage step timing and the run's metrics files."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

import torch


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
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double()))


def write_json_atomic(path: str, obj) -> None:
    """Write to a temporary name then rename, so a crash never leaves a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class StageTimer:
    """Milliseconds per named stage of a step: CUDA events on GPU (no sync in the step), wall clock on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._events: list[tuple[str, object, object]] = []
        self._totals: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._totals[name] = self._totals.get(name, 0.0) + (time.perf_counter() - t0) * 1e3

    def add(self, name: str, ms: float) -> None:
        self._totals[name] = self._totals.get(name, 0.0) + ms

    def collect(self) -> dict[str, float]:
        """Totals since the last collect (synchronizes CUDA events), then reset."""
        for name, start, end in self._events:
            end.synchronize()
            self._totals[name] = self._totals.get(name, 0.0) + start.elapsed_time(end)
        totals, self._events, self._totals = self._totals, [], {}
        return totals
