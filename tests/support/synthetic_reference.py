"""FROZEN copy of pipeline/synthetic.py's generator as of commit 201bb5d (before device generation).

The test oracle of tests/pipeline/test_synthetic.py: the device generator must give the same ids, offsets,
dense values and labels on CPU. Do not edit (or "fix") this file: it is what "today's stream" means.
"""

from __future__ import annotations

import math

import torch

from pipeline.batch import Batch, KeyedJagged

# kernels/hashing.py as of 201bb5d, frozen with the generator
_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    z = x + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def uniform(x: torch.Tensor) -> torch.Tensor:
    return _shr(splitmix64(x), 11).double() * (2.0**-53)


def zipf_ids(u: torch.Tensor, num_rows: int, exponent: float) -> torch.Tensor:
    """Inverse CDF of a power law on [1, num_rows + 1): id 0 is the most frequent."""
    n = float(num_rows + 1)
    if abs(exponent - 1.0) < 1e-9:
        x = torch.exp(u * math.log(n))
    else:
        p = 1.0 - exponent
        x = ((n**p - 1.0) * u + 1.0) ** (1.0 / p)
    return (x.floor().long() - 1).clamp_(0, num_rows - 1)


# slot layout inside one sample's counter space (sample index * _SLOTS + slot)
_SLOTS = 1 << 16
_SLOT_LABEL = 0
_SLOT_DENSE = 1  # + dense feature index (< 255)
_SLOT_LENGTH = 256  # + feature index (< 256)
_SLOT_IDS = 512  # + feature index * max_bag + position


class ReferenceSyntheticData:
    """Deterministic synthetic samples; ``batch(start, count)`` returns samples start..start+count-1."""

    TRAIN, EVAL = 0, 1  # streams: disjoint sample sequences from the same hidden model

    # features: SyntheticFeature
    def __init__(
        self,
        features: list,
        num_dense: int,
        zipf_exponent: float = 1.05,
        signal: float = 1.0,
        seed: int = 0,
    ):
        if num_dense >= 255 or len(features) >= 256:
            raise ValueError("synthetic data supports < 255 dense and < 256 sparse features")
        self.features = features
        self.num_dense = num_dense
        self.zipf_exponent = zipf_exponent
        self.signal = signal
        self.seed = seed
        self.max_bag = max((f.bag_max for f in features), default=0)
        if _SLOT_IDS + len(features) * self.max_bag >= _SLOTS:
            raise ValueError(
                "synthetic data: too many features x bag length for the counter layout"
            )
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
            length = feat.bag_min + (uniform(base + _SLOT_LENGTH + f) * span).long().clamp_(
                max=span - 1
            )
            u = uniform(
                base[:, None] + (_SLOT_IDS + f * self.max_bag) + positions[None, : feat.bag_max]
            )
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
