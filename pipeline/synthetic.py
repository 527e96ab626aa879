"""Synthetic click data: Zipf-distributed multi-hot ids and labels from a hidden model.

Every random number is a counter-based hash of (seed, stream, global sample index, slot), so sample i is
the same whatever the batch size, world size or rank that draws it: rank r of W draws its contiguous slice
of each global batch, and runs at W = 1, 2, 4 can be compared exactly. Labels come from a hidden logistic
model (a fixed effect in [-1, 1] per (table, id), a fixed weight per dense feature): frequent ids are
learnable, rare ones are noise, as in real CTR data. ``hash_ids`` features emit splitmix64(id + table salt)
as 63-bit ids, as logs of a dynamic table would; labels still come from the Zipf ids.

Batches are made on ``device`` by the same torch ops on CPU and CUDA, all features in one pass over a
[B, sum of bag_max] matrix. On CPU they are bit-identical to the frozen host generator
(tests/support/synthetic_reference.py); what may differ on CUDA in the last ulp is in docs/data.md. Fixed
bag lengths (bag_min == bag_max everywhere) need no host sync per batch; variable bags need one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from kernels.hashing import GOLDEN, MIX1, MIX2, splitmix64, uniform
from pipeline.batch import Batch, KeyedJagged, rank_slice


def _uniform_(z: torch.Tensor) -> torch.Tensor:
    """kernels.hashing.uniform(z), bit for bit, hashing the int64 z in place.

    The same integer ops with one temporary instead of one per op: on CPU every fresh large
    tensor costs page faults, and this makes the hashing ~2.5x faster there.
    """
    t = torch.empty_like(z)
    z.add_(GOLDEN)
    for shift, mix in ((30, MIX1), (27, MIX2)):
        torch.bitwise_right_shift(z, shift, out=t).bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(t).mul_(mix)
    torch.bitwise_right_shift(z, 31, out=t).bitwise_and_((1 << 33) - 1)
    z.bitwise_xor_(t).bitwise_right_shift_(11).bitwise_and_((1 << 53) - 1)
    return z.double().mul_(2.0**-53)


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
    hash_ids: bool = False  # emit splitmix64(id + salt) as a 63-bit id instead of the Zipf id


_ID_MASK = (1 << 63) - 1  # hashed ids: the sign bit cleared, so they are non-negative int64
# slot layout inside one sample's counter space (sample index * _SLOTS + slot)
_SLOTS = 1 << 16
_SLOT_LABEL = 0
_SLOT_DENSE = 1  # + dense feature index (< 255)
_SLOT_LENGTH = 256  # + feature index (< 256)
_SLOT_IDS = 512  # + feature index * max_bag + position


class SyntheticData:
    """Deterministic synthetic samples; ``batch(start, count)`` returns samples start..start+count-1 on ``device``."""

    TRAIN, EVAL = 0, 1  # streams: disjoint sample sequences from the same hidden model

    def __init__(
        self,
        features: list[SyntheticFeature],
        num_dense: int,
        zipf_exponent: float = 1.05,
        signal: float = 1.0,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        if num_dense >= 255 or len(features) >= 256:
            raise ValueError("synthetic data supports < 255 dense and < 256 sparse features")
        self.features = features
        self.num_dense = num_dense
        self.zipf_exponent = zipf_exponent
        self.signal = signal
        self.seed = seed
        self.device = torch.device(device)
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
        self.fixed_bags = all(f.bag_min == f.bag_max for f in features)
        self._columns(device)

    def _columns(self, device) -> None:
        """Per-column constants of the [B, sum of bag_max] id matrix (columns in feature order), on the device."""
        feats = self.features
        widths = [f.bag_max for f in feats]
        col_feature = [f for f, w in enumerate(widths) for _ in range(w)]
        col_position = [j for w in widths for j in range(w)]
        exact_exp = abs(self.zipf_exponent - 1.0) < 1e-9
        p = 1.0 - self.zipf_exponent
        # the scalars zipf_ids computes per feature, as float64 columns (x * scalar == x * column, bit for bit)
        scale = [
            math.log(float(f.num_rows + 1)) if exact_exp else float(f.num_rows + 1) ** p - 1.0
            for f in feats
        ]

        def tensor(values, dtype):
            return torch.tensor(values, dtype=dtype).to(device)

        self._col_slot = tensor(
            [
                _SLOT_IDS + f * self.max_bag + j
                for f, j in zip(col_feature, col_position, strict=True)
            ],
            torch.int64,
        )
        self._col_scale = tensor([scale[f] for f in col_feature], torch.float64)
        self._col_max_id = tensor([feats[f].num_rows - 1 for f in col_feature], torch.int64)
        self._col_table = tensor(
            [(feats[f].table_index + 1) * (1 << 40) for f in col_feature], torch.int64
        )
        self._col_feature = tensor(col_feature, torch.int64)
        self._col_hash = tensor([feats[f].hash_ids for f in col_feature], torch.bool)
        self._any_hash = any(f.hash_ids for f in feats)
        self._col_position = tensor(col_position, torch.int64)
        self._length_slot = tensor([_SLOT_LENGTH + f for f in range(len(feats))], torch.int64)
        self._span = tensor([float(f.bag_max - f.bag_min + 1) for f in feats], torch.float64)
        self._span_max = tensor([f.bag_max - f.bag_min for f in feats], torch.int64)
        self._bag_min = tensor([f.bag_min for f in feats], torch.int64)
        self._dense_slots = (
            torch.arange(self.num_dense, dtype=torch.int64, device=device) + _SLOT_DENSE
        )
        self._dense_weights = self.dense_weights.to(device)
        # a device tensor, not a Python float: CUDA would multiply by the reciprocal of a host scalar
        self._norm = tensor(math.sqrt(1.0 + 0.25 * len(feats)), torch.float32)
        # runs of adjacent features with equal bag_max: (first column, features, bag_max)
        self._runs: list[tuple[int, int, int]] = []
        column = 0
        for w in widths:
            if self._runs and self._runs[-1][2] == w:
                c, n, _ = self._runs[-1]
                self._runs[-1] = (c, n + 1, w)
            else:
                self._runs.append((column, 1, w))
            column += w
        self._width = column
        # batches are made on another thread's stream, which must see these
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def id_effect(self, table_index: int, ids: torch.Tensor) -> torch.Tensor:
        """The hidden per-id effect in [-1, 1] (float64)."""
        counter = ids * 4099 + (table_index + 1) * (1 << 40)
        return 2.0 * uniform(counter ^ self._model_key) - 1.0

    def batch(self, start: int, count: int, stream: int = TRAIN) -> Batch:
        return self._generate(start, count, stream)[0]

    def local_batches(
        self,
        global_batch_size: int,
        rank: int,
        world_size: int,
        steps: int,
        stream: int = TRAIN,
        first_step: int = 0,
    ) -> Iterator[Batch]:
        """Rank r's slice of global batches first_step + 1 .. steps (pipeline.batch.rank_slice)."""
        first, local = rank_slice(global_batch_size, rank, world_size)
        for step in range(first_step, steps):
            yield self.batch(step * global_batch_size + first, local, stream)

    def true_logits(self, start: int, count: int, stream: int = TRAIN) -> torch.Tensor:
        """The hidden model's logit of each sample (tests: the best achievable ranking)."""
        return self._generate(start, count, stream)[1]

    def _generate(self, start: int, count: int, stream: int) -> tuple[Batch, torch.Tensor]:
        device, num_features = self.device, len(self.features)
        key = self._stream_keys[stream]
        # [B]
        base = (torch.arange(start, start + count, dtype=torch.int64, device=device) * _SLOTS) ^ key

        dense = _uniform_(base[:, None] + self._dense_slots[None, :]).float()  # [B, Dd] in [0, 1)
        logit = (dense - 0.5) @ self._dense_weights * 2.0

        if self.fixed_bags:  # the drawn length would be bag_min whatever the draw: skip it
            length = self._bag_min.expand(count, num_features)
        else:
            drawn = _uniform_(base[:, None] + self._length_slot[None, :]).mul_(self._span).long()
            length = self._bag_min + torch.minimum(drawn, self._span_max)  # [B, F]

        # [B, S]: every feature's bag_max slots
        x = _uniform_(base[:, None] + self._col_slot[None, :])
        if abs(self.zipf_exponent - 1.0) < 1e-9:
            x = x.mul_(self._col_scale).exp_()
        else:
            x = x.mul_(self._col_scale).add_(1.0).pow_(1.0 / (1.0 - self.zipf_exponent))
        # zipf_ids, column-wise
        ids = torch.minimum(x.floor_().long().sub_(1).clamp_(min=0), self._col_max_id)
        effect = (
            _uniform_((ids * 4099).add_(self._col_table).bitwise_xor_(self._model_key))
            .mul_(2.0)
            .sub_(1.0)
        )
        present = None
        if not self.fixed_bags:
            present = self._col_position[None, :] < length[:, self._col_feature]
            effect = effect * present
        # bag sums over [B, n, w] views: every bag is summed as one contiguous row, as .sum(1) did per feature
        sums = (
            torch.cat(
                [effect[:, c : c + n * w].view(count, n, w).sum(-1) for c, n, w in self._runs], 1
            )
            if num_features
            else effect.new_zeros(count, 0)
        )
        contribution = 1.5 * (sums / length.clamp(min=1)).float()  # [B, F]
        if self._any_hash:  # after the effects: they, and so the labels, come from the Zipf ids
            ids = torch.where(self._col_hash, splitmix64(ids + self._col_table) & _ID_MASK, ids)
        # float32 adds in feature order: the frozen host generator's order
        for f in range(num_features):
            logit = logit + contribution[:, f]
        logit = self.signal * logit / self._norm
        labels = (_uniform_(base + _SLOT_LABEL) < torch.sigmoid(logit.double())).float()

        offsets = torch.zeros(num_features * count + 1, dtype=torch.int64, device=device)
        if num_features:
            offsets[1:] = torch.cumsum(length.t().reshape(-1), 0)
        values = self._feature_major(ids, count)
        if present is not None:
            # the one host sync (variable bag lengths)
            values = values[self._feature_major(present, count)]
        sparse = KeyedJagged(values, offsets, [f.name for f in self.features])
        return Batch(dense=dense.contiguous(), labels=labels, sparse=sparse), logit

    def _feature_major(self, matrix: torch.Tensor, count: int) -> torch.Tensor:
        """[B, S] columns -> flat feature-major bags: feature f's [B, bag_max_f] block, row-major, then f + 1."""
        out = matrix.new_empty(count * self._width)
        for c, n, w in self._runs:
            out[c * count : (c + n * w) * count].view(n, count, w).copy_(
                matrix[:, c : c + n * w].view(count, n, w).transpose(0, 1)
            )
        return out
