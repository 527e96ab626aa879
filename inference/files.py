"""The inference model's files: checksums (xxh3_64, as in every manifest RecFuse writes), JSON, errors."""

from __future__ import annotations

import json
import os

import torch
import xxhash

KIND, FORMAT, MANIFEST, META = "inference_model", 1, "manifest.json", "meta.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_CHUNK = 1 << 24


class ModelError(ValueError):
    """A model or delta that cannot be used as written, or a batch it cannot score; the message names
    the file, table, feature or id."""


def read_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelError(f"{what}: {os.path.basename(path)} is missing") from None
    except ValueError as e:
        raise ModelError(f"{what}: {os.path.basename(path)} is not JSON ({e})") from None


def is_inference_model(path: str) -> bool:
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            return json.load(f).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def verify_file(path: str, name: str, manifest: dict, what: str) -> str:
    """The full path of `name` once its xxh3_64 matches the manifest; ModelError naming it otherwise."""
    full = os.path.join(path, name)
    if not os.path.isfile(full):
        raise ModelError(f"{what}: file {name} is missing (manifest.json lists it)")
    digest = xxhash.xxh3_64()
    with open(full, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    want = manifest["files"][name]["xxh3_64"]
    if digest.hexdigest() != want:
        raise ModelError(
            f"{what}: file {name} is corrupt: its xxh3_64 is {digest.hexdigest()}, manifest.json says {want}"
        )
    return full
