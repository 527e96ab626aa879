"""A checkpoint's files and directories on disk: checksums taken while the bytes are written and checked
when they are read, and directory moves that never leave a half-written or half-deleted directory under a
checkpoint's name.

- Every file's xxh3_64 and size go into manifest.json ("files"); the manifest holds the xxh3_64 of its own
  content ("manifest_xxh3_64", over the canonical JSON of everything else).
- step_<N>/ appears only by renaming a complete .tmp_step_<N>/ (manifest written last), and disappears
  only by first renaming it to debris (.del_step_<N>), so an interrupted delete leaves debris, never a
  directory that looks like a checkpoint. Replacing an existing step_<N> moves the old one aside only once
  the new one is complete; a crash between the two renames leaves the complete .tmp_step_<N>/, which
  recover() puts in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable

import xxhash

# 1: sizes only, no checksums; 2: torch.save shards (shard_<rank>.pt); 3: streamed shards
# (shard_<rank>.bin, training.checkpoint_shard). All are read.
FORMAT = 3
MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_DIR = re.compile(r"^\.tmp_step_(\d+)$")
DEBRIS_PREFIX = ".del_"
_CHUNK = 1 << 22


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupt; the message names the file."""


class _HashingFile:
    """A binary file that hashes the bytes as they are written (torch.save only writes, in order)."""

    def __init__(self, f):
        self.f, self.hash, self.size = f, xxhash.xxh3_64(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        n = self.f.write(data)
        self.size += n
        return n

    def flush(self) -> None:
        self.f.flush()


def write_hashed(path: str, write: Callable) -> dict:
    """write(file) into path, flushed to the disk; returns the manifest entry (size, xxh3_64) of the bytes
    as they were written: the manifest must not point at bytes still in the page cache when the power goes."""
    with open(path, "wb") as f:
        out = _HashingFile(f)
        write(out)
        f.flush()
        os.fsync(f.fileno())
    return {"size": out.size, "xxh3_64": out.hash.hexdigest()}


def check_file(directory: str, name: str, entry) -> None:
    """Raise CheckpointError naming the file unless it has the manifest's size and checksum."""
    path = os.path.join(directory, name)
    size, expected = (entry, None) if isinstance(entry, int) else (entry["size"], entry["xxh3_64"])
    try:
        actual_size = os.path.getsize(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing (the manifest lists {size} bytes)") from None
    if actual_size != size:
        what = "truncated" if actual_size < size else "too long"
        raise CheckpointError(f"{path} is {what}: {actual_size} bytes, the manifest says {size}")
    if expected is None:
        return
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    if h.hexdigest() != expected:
        raise CheckpointError(
            f"{path} is corrupt: xxh3_64 {h.hexdigest()}, the manifest says {expected}"
        )


def _canonical(manifest: dict) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def write_manifest(directory: str, manifest: dict) -> None:
    body = {**manifest, "format": FORMAT}
    body["manifest_xxh3_64"] = xxhash.xxh3_64_hexdigest(_canonical(body))
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(body, f, indent=1, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(directory: str) -> dict:
    """The manifest of a checkpoint directory; CheckpointError naming the file if it is missing, not
    JSON (truncated) or its content does not match its checksum."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{path} is missing: not a complete checkpoint") from None
    try:
        manifest = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{path} is not valid JSON ({len(raw)} bytes, truncated or corrupt): {e}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") not in (1, 2, FORMAT):
        raise CheckpointError(f"{path} is corrupt: no known checkpoint format")
    expected = manifest.pop("manifest_xxh3_64", None)
    if manifest["format"] >= 2:
        actual = xxhash.xxh3_64_hexdigest(_canonical(manifest))
        if actual != expected:
            raise CheckpointError(
                f"{path} is corrupt: its content has xxh3_64 {actual}, it records {expected}"
            )
    if not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{path} is corrupt: it lists no files")
    return manifest


# ---- directories -------------------------------------------------------------------------------------------
def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def has_manifest(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST))


def move_aside(root: str, name: str) -> str:
    """Rename root/name to its debris name (durably) and return the new path: from now on an
    interruption leaves debris, not something that looks like a checkpoint."""
    aside = os.path.join(root, DEBRIS_PREFIX + name)
    shutil.rmtree(aside, ignore_errors=True)  # debris of an earlier interruption
    os.replace(os.path.join(root, name), aside)
    fsync_dir(root)
    return aside


def remove(root: str, name: str, before_delete: Callable[[], None] = lambda: None) -> None:
    """Delete the directory root/name: rename it to debris first, then delete the debris."""
    aside = move_aside(root, name)
    before_delete()
    shutil.rmtree(aside, ignore_errors=True)


def put_in_place(root: str, tmp: str, final: str, before_rename: Callable[[], None]) -> None:
    """Rename the complete tmp to final; an existing final is moved aside first and deleted last, so at
    every moment either final or the complete tmp holds the step."""
    aside = move_aside(root, os.path.basename(final)) if os.path.isdir(final) else None
    before_rename()
    os.replace(tmp, final)
    fsync_dir(root)  # the rename itself survives a power loss
    if aside:
        shutil.rmtree(aside, ignore_errors=True)


def recover(root: str) -> None:
    """Put in place a complete .tmp_step_<N>/ whose step_<N>/ was moved aside by an interrupted
    replacement (it is verified when resumed from, like any checkpoint)."""
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        m = TMP_DIR.match(name)
        final = os.path.join(root, f"step_{m.group(1)}") if m else ""
        if m and has_manifest(os.path.join(root, name)) and not os.path.exists(final):
            os.replace(os.path.join(root, name), final)
            fsync_dir(root)


def clean(root: str) -> None:
    """Before a save: recover(), then delete what interrupted saves and deletes left: debris,
    temporary directories and step_<N>/ directories without a manifest."""
    recover(root)
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(DEBRIS_PREFIX) or TMP_DIR.match(name):
            shutil.rmtree(path, ignore_errors=True)
        elif STEP_DIR.match(name) and not has_manifest(path):
            remove(root, name)
