"""A rank's shard file (shard_<rank>.bin): its part of every table streamed to disk in bounded chunks.

Layout: the magic b"RFSHARD1", the header's length (uint64 little-endian), the header (UTF-8 JSON), then
the raw little-endian bytes of every block, in the header's order, back to back. The header holds the
step, rank, world size, embedding update counter, and:
    blocks   [{"name", "dtype", "shape"}]: "rng/<name>" (RNG states) and "<table>/<tensor>"
    tables   {table: {"kind": "static", "rows": [first, step, count]} | {"kind": "dynamic"}}
A static table's block row i is global row first + i * step (no per-row index); a dynamic table's blocks
are its live keys ("keys", "seen", "count"), the tracked values of those keys in the same order, and its
pending keys ("pending_keys", "pending_count", "pending_seen").

Writing copies at most train.checkpoint_buffer_bytes of rows at a time from the device into one host
buffer (pinned on CUDA) and on into the file, hashed as it goes (checkpoint_files.write_hashed); rows
already on the host are written from where they are. Reading fills one such buffer at a time.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from training import checkpoint_files as files
from training.checkpoint_files import CheckpointError

MAGIC = b"RFSHARD1"
SUFFIX = ".bin"
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64)
    + (torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
}


def shard_name(rank: int) -> str:
    return f"shard_{rank:05d}{SUFFIX}"


@dataclass
class Block:
    """One tensor of the shard: rows of shape `shape[1:]`; fetch(start, stop) gives rows [start, stop)
    (on the device, or the host)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    fetch: Callable[[int, int], torch.Tensor]

    @property
    def row_bytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape[1:]:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes if self.shape else self.dtype.itemsize

    def spec(self) -> dict:
        return {
            "name": self.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "shape": list(self.shape),
        }


def rows_per_chunk(block: Block, buffer_bytes: int) -> int:
    """Rows of `block` that fit the buffer (at least one)."""
    return max(1, buffer_bytes // max(block.row_bytes, 1))


def snapshot(blocks: list[Block], buffer_bytes: int) -> list[Block]:
    """Host copies of the blocks, taken chunk by chunk (asynchronous saves write these while training
    goes on): host memory of this rank's whole shard. On CUDA the copies go into pinned memory and this
    returns once they are done (the training stream waits for them)."""
    out = []
    for b in blocks:
        pinned = torch.cuda.is_available() and b.nbytes > 0
        host = torch.empty(b.shape, dtype=b.dtype, pin_memory=pinned)
        step = rows_per_chunk(b, buffer_bytes)
        for start in range(0, b.shape[0], step):
            stop = min(start + step, b.shape[0])
            host[start:stop].copy_(b.fetch(start, stop), non_blocking=pinned)
        out.append(Block(b.name, b.dtype, b.shape, lambda s, e, h=host: h[s:e]))
    if torch.cuda.is_available():
        torch.cuda.current_stream().synchronize()
    return out


class _Buffer:
    """One host buffer of at most buffer_bytes (or one row), reused chunk after chunk."""

    def __init__(self, buffer_bytes: int, pinned: bool):
        self.size, self.pinned, self.data = buffer_bytes, pinned, None

    def bytes(self, n: int) -> torch.Tensor:
        if self.data is None or self.data.numel() < n:
            self.data = torch.empty(max(n, 0), dtype=torch.uint8, pin_memory=self.pinned)
        return self.data[:n]


def _raw(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a host tensor as a flat uint8 tensor (a view where it is contiguous)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def _check_byte_order() -> None:
    if sys.byteorder != "little":
        raise CheckpointError("checkpoint shards are little-endian; this host is big-endian")


def write_shard(
    path: str, meta: dict, tables: dict, blocks: list[Block], buffer_bytes: int
) -> dict:
    """Write the shard file; returns its manifest entry (size, xxh3_64 of the bytes as written)."""
    _check_byte_order()
    header = json.dumps(
        {**meta, "tables": tables, "blocks": [b.spec() for b in blocks]}, sort_keys=True
    ).encode()
    buf = _Buffer(buffer_bytes, pinned=torch.cuda.is_available())  # only rows on the device use it

    def write(f) -> None:
        f.write(MAGIC + struct.pack("<Q", len(header)) + header)
        for b in blocks:
            step = rows_per_chunk(b, buffer_bytes)
            for start in range(0, b.shape[0], step):
                chunk = b.fetch(start, min(start + step, b.shape[0]))
                if chunk.device.type == "cpu":
                    f.write(_raw(chunk).numpy())
                    continue
                host = buf.bytes(chunk.numel() * chunk.element_size())
                host.view(chunk.dtype).view(chunk.shape).copy_(chunk)
                f.write(host.numpy())

    return files.write_hashed(path, write)


class ShardReader:
    """A shard file's header, and its blocks read in chunks of at most buffer_bytes."""

    def __init__(self, path: str, buffer_bytes: int):
        _check_byte_order()
        self.path, self.buffer_bytes = path, buffer_bytes
        self.f = open(path, "rb")  # noqa: SIM115 (closed by close() / the with block)
        head = self.f.read(len(MAGIC) + 8)
        if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
            self.close()
            raise CheckpointError(
                f"{path} is not a RecFuse shard file (no {MAGIC.decode()} header)"
            )
        (length,) = struct.unpack("<Q", head[len(MAGIC) :])
        self.blocks, offset = {}, len(MAGIC) + 8 + length
        try:
            self.header = json.loads(self.f.read(length).decode())
            for spec in self.header["blocks"]:
                dtype, shape = _DTYPES[spec["dtype"]], tuple(int(n) for n in spec["shape"])
                self.blocks[spec["name"]] = (Block(spec["name"], dtype, shape, _no_fetch), offset)
                offset += self.blocks[spec["name"]][0].nbytes
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            self.close()
            raise CheckpointError(f"{path} is corrupt: its header cannot be read ({e!r})") from None
        size = os.fstat(self.f.fileno()).st_size
        if offset != size:
            self.close()
            raise CheckpointError(f"{path} is corrupt: {size} bytes, its header describes {offset}")
        self.buf = _Buffer(buffer_bytes, pinned=False)

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.f.close()

    def _read_into(self, out: torch.Tensor, offset: int) -> None:
        self.f.seek(offset)
        view = memoryview(_raw(out).numpy())
        got = self.f.readinto(view) if len(view) else 0
        if got != len(view):
            raise CheckpointError(
                f"{self.path} is truncated: its header lists {len(view) - got} more bytes at {offset}"
            )

    def whole(self, name: str) -> torch.Tensor:
        """A block as one new tensor (small blocks: RNG states, a dynamic table's keys and counters)."""
        block, offset = self.blocks[name]
        out = torch.empty(block.shape, dtype=block.dtype)
        self._read_into(out, offset)
        return out

    def chunks(self, name: str) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows) of a block, buffer_bytes at a time; the rows are valid until the next."""
        block, offset = self.blocks[name]
        step = rows_per_chunk(block, self.buffer_bytes)
        for start in range(0, block.shape[0], step):
            rows = min(step, block.shape[0] - start)
            out = (
                self.buf.bytes(rows * block.row_bytes)
                .view(block.dtype)
                .view(rows, *block.shape[1:])
            )
            self._read_into(out, offset + start * block.row_bytes)
            yield start, out


def _no_fetch(start: int, stop: int) -> torch.Tensor:
    raise AssertionError("a block read from a file is read through ShardReader")
