"""A self-contained inference model (what train.py's --export.model writes): load, verify, score a batch, and
apply an incremental embedding export (--export.since_step) in place. Plain torch, numpy and xxhash: nothing of
training/, embedding/, kernels/ or pipeline/ is imported, so a serving process needs none of them.

    <dir>/manifest.json            kind "inference_model", format, step, every file's bytes and xxh3_64
    <dir>/meta.json                features (order, table, pooling), tables, num_dense, the dense program, config
    <dir>/dense.pt2 | dense.ts     the dense network: torch.export program, or TorchScript where export failed
    <dir>/tables/<table>/rows.npy  static: [num_embeddings, dim]; dynamic: [keys, dim], keys.npy's order
    <dir>/tables/<table>/keys.npy  dynamic tables only: sorted int64 keys

    model = InferenceModel("runs/tiny/export/model")
    probabilities = model.predict(dense, {"user": (values, offsets), ...})   # offsets [B + 1] per feature
"""

from __future__ import annotations

import os

import numpy as np
import torch

from inference.delta import apply_delta
from inference.files import (
    DTYPES,
    FORMAT,
    KIND,
    MANIFEST,
    META,
    ModelError,
    is_inference_model,
    read_json,
    verify_file,
)

__all__ = ["DTYPES", "FORMAT", "KIND", "InferenceModel", "ModelError", "is_inference_model"]


def rows_from_numpy(array: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored rows as a tensor of their dtype (bfloat16 rows are stored as their uint16 bits)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


class EmbeddingTable:
    """One table's rows (a zero row appended: unknown dynamic keys read it) and, if dynamic, its keys."""

    def __init__(self, name: str, spec: dict, rows: torch.Tensor, keys: torch.Tensor | None):
        self.name, self.spec = name, spec
        self.dynamic = spec["kind"] == "dynamic"
        self.set_rows(rows, keys)

    def set_rows(self, rows: torch.Tensor, keys: torch.Tensor | None) -> None:
        self.keys = keys
        self.rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])

    def lookup(self, ids: torch.Tensor, feature: str) -> torch.Tensor:
        """Row index of every id (the zero row for a dynamic key the model does not hold)."""
        if ids.numel() and int(ids.min()) < 0:
            raise ModelError(
                f"feature {feature!r} (table {self.name!r}) has negative id {int(ids.min())}"
            )
        if self.dynamic:
            n = self.keys.numel()
            at = torch.searchsorted(self.keys, ids)
            found = (
                self.keys[at.clamp(max=max(n - 1, 0))] == ids
                if n
                else torch.zeros_like(ids, dtype=bool)
            )
            return torch.where(found & (at < n), at, n)
        n = self.spec["num_embeddings"]
        if ids.numel() and int(ids.max()) >= n:
            if self.spec["out_of_range"] == "modulo":
                return ids % n
            raise ModelError(
                f"feature {feature!r} (table {self.name!r}, {n} rows) has id {int(ids.max())} outside "
                f"[0, {n}) (the table's out_of_range is 'error')"
            )
        return ids


class InferenceModel:
    """A verified inference model directory (module docstring): logits / predict of a batch."""

    def __init__(self, path: str):
        self.path, what = path, f"inference model {path}"
        self.manifest = read_json(os.path.join(path, MANIFEST), what)
        if self.manifest.get("kind") != KIND or self.manifest.get("format") != FORMAT:
            raise ModelError(f"{what}: manifest.json is not an inference model of format {FORMAT}")
        for name in self.manifest["files"]:
            verify_file(path, name, self.manifest, what)
        self.meta = read_json(os.path.join(path, META), what)
        self.step = int(self.meta["step"])
        self.features = [f["name"] for f in self.meta["features"]]
        self.tables = {
            name: self._load_table(name, spec) for name, spec in self.meta["tables"].items()
        }
        self.dense = self._load_dense(self.meta["dense"])

    def _load_table(self, name: str, spec: dict) -> EmbeddingTable:
        folder = os.path.join(self.path, "tables", name)
        rows = rows_from_numpy(np.load(os.path.join(folder, "rows.npy")), spec["dtype"])
        keys = None
        if spec["kind"] == "dynamic":
            keys = torch.from_numpy(np.load(os.path.join(folder, "keys.npy")))
        return EmbeddingTable(name, spec, rows, keys)

    def _load_dense(self, spec: dict):
        full = os.path.join(self.path, spec["file"])
        if spec["format"] == "torch.export":
            return torch.export.load(full).module()
        return torch.jit.load(full)

    def check_features(self, features: list[str], num_dense: int) -> None:
        """ModelError unless a data source's features and dense width are the model's."""
        if list(features) != self.features or num_dense != self.meta["num_dense"]:
            raise ModelError(
                f"inference model {self.path} scores features {self.features} with "
                f"{self.meta['num_dense']} dense values; the data has {list(features)} with {num_dense}"
            )

    @staticmethod
    def jagged(values: torch.Tensor, offsets: torch.Tensor, keys: list[str]) -> dict:
        """{feature: (values, offsets [B + 1])} of feature-major ids (bag f * B + b: feature f, sample b)."""
        batch = (offsets.numel() - 1) // max(len(keys), 1)
        out = {}
        for f, key in enumerate(keys):
            bounds = offsets[f * batch : (f + 1) * batch + 1]
            out[key] = (values[bounds[0] : bounds[-1]], bounds - bounds[0])
        return out

    def pooled(self, sparse: dict, batch: int) -> torch.Tensor:
        """[B, F, D] float32: each feature's bag of rows, summed or averaged (an empty bag: zeros); tables of
        several dims: [B, sum of the features' dims], as training's embedding.mixed pools them."""
        out = []
        for spec in self.meta["features"]:
            name, table = spec["name"], self.tables[spec["table"]]
            if name not in sparse:
                raise ModelError(
                    f"the batch has no ids for feature {name!r} (the model needs {self.features})"
                )
            values, offsets = (torch.as_tensor(x, dtype=torch.int64) for x in sparse[name])
            if offsets.numel() != batch + 1:
                raise ModelError(
                    f"feature {name!r}: offsets has {offsets.numel()} entries, not B + 1 = {batch + 1}"
                )
            rows = table.rows[table.lookup(values, name)].float()
            lengths = offsets[1:] - offsets[:-1]
            bag = torch.repeat_interleave(torch.arange(batch), lengths)
            sums = torch.zeros(batch, rows.shape[1]).index_add_(0, bag, rows)
            if spec["pooling"] == "mean":
                sums *= (1.0 / lengths.clamp(min=1).float())[:, None]  # as training pools
            out.append(sums)
        if len({o.shape[1] for o in out}) > 1:
            return torch.cat(out, dim=1)
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def logits(self, dense: torch.Tensor, sparse: dict) -> torch.Tensor:
        dense = torch.as_tensor(dense, dtype=torch.float32)
        return self.dense(dense, self.pooled(sparse, dense.shape[0])).float()

    def predict(self, dense: torch.Tensor, sparse: dict) -> torch.Tensor:
        """Probabilities [B] of dense [B, num_dense] and {feature: (values, offsets)}."""
        return torch.sigmoid(self.logits(dense, sparse))

    def apply_delta(self, export: str) -> dict:

        return apply_delta(self, export)
