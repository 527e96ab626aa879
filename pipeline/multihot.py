"""Multi-hot expansion of one-hot datasets, as the MLPerf DLRM-DCNv2 reference does it.

MLPerf trains DLRM-DCNv2 on Criteo 1TB made multi-hot (mlcommons/training,
recommendation_v2/torchrec_dlrm: multi_hot.py's Multihot, materialized once by
scripts/materialize_synthetic_multihot_dataset.py with sizes 3,2,1,2,6,1,1,1,1,7,3,8,1,6,9,5,
1,1,1,12,100,27,10,3,1,1). For every table t of rows_t rows and size s_t it draws, from one seed,
a lookup table [rows_t, s_t] whose row x is ``[x, r_1, ..., r_{s_t - 1}]``; a sample's one-hot id x
becomes that bag: the original id first, then s_t - 1 ids that depend only on (table, x), so a
frequent id always brings the same companions. The companions are
- "uniform": ``randint(0, rows_t)``;
- "pareto": ``int32(pareto(a=0.25)) % rows_t`` (numpy's Lomax draw, (1 - U)^-4 - 1: mostly small
  ids, i.e. the hot rows of a frequency-ordered vocabulary; on x86 a draw >= 2^31 casts to
  INT32_MIN, and so does it here, which puts ~0.46% of the companions on row INT32_MIN % rows_t).

Here the lookup table is never materialized (C21's would be 40M x 100 ids): r_j is a
counter-based hash of (run.seed, table index, x, j) (kernels/hashing.py), computed on the
device the batch is on, with integer ops and IEEE + - * / only, so every rank at every world
size, on CPU or CUDA, makes the same bags. The draws are not numpy's (a different generator),
the distribution and the id -> bag structure are the reference's.
"""

from __future__ import annotations

import torch

from kernels.hashing import splitmix64, uniform
from pipeline.batch import Batch, KeyedJagged

DISTRIBUTIONS = ("uniform", "pareto")
_INT32_MIN = -(2**31)


def table_key(seed: int, table_index: int) -> int:
    """The hash key of one table's companions (a Python int in int64 range)."""
    return int(
        splitmix64(
            torch.tensor([seed * 1_000_003 + 5_555_555 + table_index * 7_919], dtype=torch.int64)
        )[0]
    )


class MultiHot:
    """``batch -> batch``: each feature's one-hot ids become bags of its table's size (feature-major KeyedJagged).

    sizes, rows and tables are per feature, in the batch's key order; tables[f] is the index of
    feature f's table (features sharing a table share its companions).
    """

    def __init__(
        self,
        keys: list[str],
        sizes: list[int],
        rows: list[int],
        tables: list[int],
        distribution: str = "uniform",
        seed: int = 0,
    ):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"multi-hot distribution {distribution!r} is not one of {DISTRIBUTIONS}"
            )
        if not len(keys) == len(sizes) == len(rows) == len(tables):
            raise ValueError(
                f"{len(keys)} features but {len(sizes)} sizes, {len(rows)} row counts, {len(tables)} tables"
            )
        bad = [(k, s) for k, s in zip(keys, sizes, strict=True) if s < 1]
        if bad:
            raise ValueError(f"multi-hot sizes must be >= 1, got {bad}")
        self.keys, self.sizes, self.rows, self.tables = (
            list(keys),
            list(sizes),
            list(rows),
            list(tables),
        )
        self.distribution, self.seed = distribution, seed
        self.width = sum(sizes)  # ids per sample after expansion
        self._keys = [table_key(seed, t) for t in tables]
        self._constants: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._constants:
            first = [0]
            for s in self.sizes[:-1]:
                first.append(first[-1] + s)
            self._constants[device] = tuple(
                torch.tensor(v, dtype=dtype, device=device)
                for v, dtype in (
                    (self.sizes, torch.int64),
                    (first, torch.int64),
                    (self._keys, torch.int64),
                    ([float(r) for r in self.rows], torch.float64),
                    (self.rows, torch.int64),
                )
            )
        return self._constants[device]

    def __call__(self, batch: Batch) -> Batch:
        kjt = batch.sparse
        if list(kjt.keys) != self.keys:
            raise ValueError(
                f"multi-hot expansion set up for features {self.keys}, got a batch of {list(kjt.keys)}"
            )
        count, num_features = batch.batch_size, len(self.keys)
        if kjt.values.numel() != num_features * count:  # sizes are host metadata: no sync
            raise ValueError(
                f"multi-hot expansion needs one id per bag; got {kjt.values.numel()} ids for "
                f"{num_features} features x {count} samples"
            )
        values = self.expand(kjt.values.view(num_features, count))
        sizes = self._on(kjt.values.device)[0]
        offsets = torch.zeros(num_features * count + 1, dtype=torch.int64, device=kjt.values.device)
        offsets[1:] = torch.cumsum(
            sizes.repeat_interleave(count, output_size=num_features * count), 0
        )
        return Batch(batch.dense, batch.labels, KeyedJagged(values, offsets, list(kjt.keys)))

    def expand(self, ids: torch.Tensor) -> torch.Tensor:
        """[F, B] one-hot ids -> the flat feature-major bags: feature f's [B, size_f] block, row-major, then f + 1."""
        num_features, count = ids.shape
        device = ids.device
        sizes, first, keys, rows_f, rows_i = self._on(device)
        total = count * self.width
        element = torch.arange(total, dtype=torch.int64, device=device)
        feature = torch.arange(num_features, device=device).repeat_interleave(
            sizes * count, output_size=total
        )
        local = element - first[feature] * count  # position inside the feature's [B, size] block
        size = sizes[feature]
        sample = local // size
        position = local - sample * size
        original = ids.reshape(-1)[feature * count + sample]
        u = uniform(splitmix64(original ^ keys[feature]) + position)
        if self.distribution == "uniform":
            drawn = torch.minimum((u * rows_f[feature]).long(), rows_i[feature] - 1)
        else:
            v = 1.0 - u  # in (0, 1]: numpy's 1 - U
            v = v * v
            # (1 - U)^-4 - 1 with IEEE * and / only: the same on every device
            lomax = 1.0 / (v * v) - 1.0
            drawn = torch.where(lomax >= 2.0**31, _INT32_MIN, lomax.clamp(max=2.0**31).long())
            drawn = torch.remainder(drawn, rows_i[feature])
        return torch.where(position == 0, original, drawn)
