"""weights_digest: one hash of a run's weights, the same for the same weights at every world size and plan."""

from __future__ import annotations

import hashlib

from training.distributed import unwrap


def weights_digest(parts) -> str:
    """sha256 over the dense state_dict (sorted keys, float32 bytes of this rank's replica) and every table's
    64-bit digest (computed on the device shard by shard: no table is gathered).

    Collective; the same value on every rank, so resharded checkpoints compare equal."""
    table_digests = parts.embeddings.table_digests()
    h = hashlib.sha256()
    for key, value in sorted(unwrap(parts.model).state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    for table, digest in zip(parts.embeddings.tables, table_digests, strict=True):
        h.update(table.name.encode())
        h.update(digest.to_bytes(8, "little"))
    return h.hexdigest()
