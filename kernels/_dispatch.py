"""Decides whether a call runs the Triton kernel or the torch reference."""

import functools
import os

import torch


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(tensor: torch.Tensor) -> bool:
    """Triton on CUDA tensors; on CPU only when forced (interpreter tests)."""
    if not triton_available():
        return False
    if tensor.is_cuda:
        return os.environ.get("RECFUSE_DISABLE_TRITON", "0") != "1"
    return os.environ.get("RECFUSE_FORCE_TRITON", "0") == "1"
