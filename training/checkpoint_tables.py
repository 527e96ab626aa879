"""A rank's tables into and out of checkpoint shard files (training.checkpoint_shard) through
embedding.state's streaming helpers, at most train.checkpoint_buffer_bytes of rows at a time; shards of
the older format (torch.save, shard_<rank>.pt) are still read."""

from __future__ import annotations

import pickle
import zipfile

import torch

from embedding import state
from training.checkpoint_files import CheckpointError
from training.checkpoint_shard import Block, ShardReader

_DYNAMIC_KEYS = ("keys", "count", "seen", "pending_keys", "pending_count", "pending_seen")


def table_blocks(emb) -> tuple[dict, list[Block]]:
    """(the header's "tables", the blocks of this rank's part of every table), nothing copied yet."""
    sources = {}
    for group, _ in emb.table_groups():  # one per embedding dim
        sources.update(state.checkpoint_sources(group.layout, group.storage, group.dynamic))
    tables, blocks = {}, []
    for name in (t.name for t in emb.tables if t.name in sources):  # those with rows here
        description, tensors = sources[name]
        tables[name] = description
        for key, (shape, dtype, fetch) in tensors.items():
            blocks.append(Block(f"{name}/{key}", dtype, shape, fetch))
    return tables, blocks


def rng_blocks() -> list[Block]:
    """The RNG states, as they are now."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return [
        Block(f"rng/{k}", v.dtype, tuple(v.shape), lambda s, e, v=v: v[s:e]) for k, v in rng.items()
    ]


def torch_load(path: str, **kwargs):
    """torch.load; a file it cannot read (a checkpoint without checksums) is an error naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} cannot be read: {first}") from None


def read_shard(
    emb, path: str, wanted: dict[str, int], source: str, buffer_bytes: int, **kw
) -> dict:
    """Load the tables of the shard file named in `wanted` ({name: index}) into this rank's rows
    (resharding: the rows this rank holds under its plan); returns {"rank", "num_updates", "rng"}.
    kw: optional (tracked tensors that may be missing), skip (tracked tensors not to load)."""
    if path.endswith(".pt"):  # the older format: torch.save of shard_tables()
        shard = torch_load(path, mmap=True)
        for name, tensors in shard["tables"].items():
            if name in wanted:
                tensors = {k: v for k, v in tensors.items() if k not in kw.get("skip", ())}
                emb.load_table_state(wanted[name], tensors, source, kw.get("optional", ()))
        return {k: shard[k] for k in ("rank", "num_updates", "rng")}
    with ShardReader(path, buffer_bytes) as reader:
        for name, description in reader.header["tables"].items():
            if name in wanted:
                group, t = emb.locate_table(wanted[name])  # the collection of its dim
                _load_table(group, reader, t, name, description, source, **kw)
        rng = {b[4:]: reader.whole(b) for b in reader.blocks if b.startswith("rng/")}
        return {
            "rank": reader.header["rank"],
            "num_updates": reader.header["num_updates"],
            "rng": rng,
        }


def _load_table(
    emb, reader, t: int, name: str, description: dict, source: str, optional=(), skip=()
):
    present = {b.split("/", 1)[1] for b in reader.blocks if b.startswith(f"{name}/")} - set(skip)
    tracked = list(emb.storage.tracked())
    missing = [k for k in tracked if k not in present and k not in optional]
    if missing:
        raise KeyError(f"{source}: table {name!r} has no {missing}")
    values = [k for k in tracked if k in present]
    if description["kind"] == "dynamic":
        # keys and counters whole (24 bytes a key), then the rows of the keys this rank owns, chunked
        keys = {
            k: reader.whole(f"{name}/{k}") for k in _DYNAMIC_KEYS if f"{name}/{k}" in reader.blocks
        }
        emb.dynamic.load(t, keys)  # tracked values of the new rows: zero until set below
        live, live_rows = emb.dynamic.live(t)
        if not bool(state.dynamic_rows(live, live_rows, keys["keys"])[0].any()):
            return  # none of its keys are this rank's
        for k in values:
            buf = emb.storage.tracked()[k]
            for start, chunk in reader.chunks(f"{name}/{k}"):
                ids = keys["keys"][start : start + chunk.shape[0]]
                found, rows = state.dynamic_rows(live, live_rows, ids)
                buf[rows] = chunk[found.cpu()].to(buf.device, buf.dtype)
        return
    if emb.layout.count[t] == 0 or not state.holds_any(emb.layout, t, description["rows"]):
        return  # none of its rows are this rank's
    for k in values:
        for start, chunk in reader.chunks(f"{name}/{k}"):
            state.load_static_chunk(
                emb.layout, emb.storage, t, description["rows"], k, start, chunk
            )
