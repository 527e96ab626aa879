"""Synthetic click data: Zipf-distributed multi-hot ids and labels from a hidden model.

Every random number is a counter-based hash of (seed, stream, global sample index, slot),
so sample i is the same whatever the batch size, world size or rank that draws it: rank r
of W simply draws its contiguous slice of each global batch. That is what lets runs at
W=1, 2, 4 be compared exactly.

The labels come from a hidden logistic model: every (table, id) has a fixed effect in
[-1, 1] and every dense feature a fixed weight; a model that learns them reaches an AUC
well above 0.5 (frequent ids are learnable, rare ones are noise, as in real CTR data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.hashing import splitmix64, uniform
from pipeline.batch import Batch, KeyedJagged


def zipf_ids(u: torch.Tensor, num_rows: int, exponent: float) -> torch.Tensor:
    """Inverse CDF of a power law on [1, num_rows + 1): id 0 is the most frequent."""
    n = float(num_rows + 1)
    if abs(exponent - 1.0) < 1e-9:
        x = torch.exp(u * math.log(n))
    else:
        p = 1.0 - exponent
        x = ((n**p - 1.0) * u + 1.0) ** (1.0 / p)
    return (x.floor().long() - 1).clamp_(0, num_rows - 1)


@dataclass
class SyntheticFeature:
    name: str
    table_index: int  # which hidden effect table its ids index
    num_rows: int
    bag_min: int
    bag_max: int


# slot layout inside one sample's counter space (sample index * _SLOTS + slot)
_SLOTS = 1 << 16
_SLOT_LABEL = 0
_SLOT_DENSE = 1  # + dense feature index (< 255)
_SLOT_LENGTH = 256  # + feature index (< 256)
_SLOT_IDS = 512  # + feature index * max_bag + position


class SyntheticData:
    """Deterministic synthetic samples; ``batch(start, count)`` returns samples start..start+count-1."""

    TRAIN, EVAL = 0, 1  # streams: disjoint sample sequences from the same hidden model

    def __init__(self, features: list[SyntheticFeature], num_dense: int, zipf_exponent: float = 1.05,
                 signal: float = 1.0, seed: int = 0):
        if num_dense >= 255 or len(features) >= 256:
            raise ValueError("synthetic data supports < 255 dense and < 256 sparse features")
        self.features = features
        self.num_dense = num_dense
        self.zipf_exponent = zipf_exponent
        self.signal = signal
        self.seed = seed
        self.max_bag = max((f.bag_max for f in features), default=0)
        if _SLOT_IDS + len(features) * self.max_bag >= _SLOTS:
            raise ValueError("synthetic data: too many features x bag length for the counter layout")
        seed_t = torch.tensor([seed * 1_000_003 + 17], dtype=torch.int64)
        self._model_key = int(splitmix64(seed_t + 7_777_777)[0])
        g = uniform(self._model_key ^ torch.arange(num_dense, dtype=torch.int64) * 7919)
        self.dense_weights = (2.0 * g - 1.0).float()
        self._stream_keys = [int(splitmix64(seed_t + 1 + s)[0]) for s in range(2)]

    def id_effect(self, table_index: int, ids: torch.Tensor) -> torch.Tensor:
        """The hidden per-id effect in [-1, 1] (float64)."""
        counter = ids * 4099 + (table_index + 1) * (1 << 40)
        return 2.0 * uniform(counter ^ self._model_key) - 1.0

    def batch(self, start: int, count: int, stream: int = TRAIN) -> Batch:
        return self._generate(start, count, stream)[0]

    def true_logits(self, start: int, count: int, stream: int = TRAIN) -> torch.Tensor:
        """The hidden model's logit of each sample (tests: the best achievable ranking)."""
        return self._generate(start, count, stream)[1]

    def _generate(self, start: int, count: int, stream: int) -> tuple[Batch, torch.Tensor]:
        key = self._stream_keys[stream]
        base = (torch.arange(start, start + count, dtype=torch.int64) * _SLOTS) ^ key  # [B]

        dense_slots = torch.arange(self.num_dense, dtype=torch.int64) + _SLOT_DENSE
        dense = uniform(base[:, None] + dense_slots[None, :]).float()  # [B, Dd] in [0, 1)

        num_features = len(self.features)
        values, lengths, logit = [], [], (dense - 0.5) @ self.dense_weights * 2.0
        positions = torch.arange(self.max_bag, dtype=torch.int64)
        for f, feat in enumerate(self.features):
            span = feat.bag_max - feat.bag_min + 1
            length = feat.bag_min + (uniform(base + _SLOT_LENGTH + f) * span).long().clamp_(max=span - 1)
            u = uniform(base[:, None] + (_SLOT_IDS + f * self.max_bag) + positions[None, : feat.bag_max])
            ids = zipf_ids(u, feat.num_rows, self.zipf_exponent)  # [B, bag_max]
            present = positions[None, : feat.bag_max] < length[:, None]
            values.append(ids[present])
            lengths.append(length)
            effect = (self.id_effect(feat.table_index, ids) * present).sum(1) / length.clamp(min=1)
            logit = logit + 1.5 * effect.float()
        logit = self.signal * logit / math.sqrt(1.0 + 0.25 * num_features)
        labels = (uniform(base + _SLOT_LABEL) < torch.sigmoid(logit.double())).float()

        offsets = torch.zeros(num_features * count + 1, dtype=torch.int64)
        if num_features:
            offsets[1:] = torch.cumsum(torch.cat(lengths), 0)
        flat = torch.cat(values) if values else torch.zeros(0, dtype=torch.int64)
        sparse = KeyedJagged(flat, offsets, [f.name for f in self.features])
        return Batch(dense=dense.contiguous(), labels=labels, sparse=sparse), logit
