"""Which implementation a kernels/ function runs: its Triton kernel or its torch reference.

Each public function passes its first tensor to ``by_device``, which picks by the tensor's
device and these environment variables, read at every call:

- ``RECFUSE_DISABLE_TRITON=1``: CUDA tensors run the torch reference (on the GPU) instead of Triton.
- ``RECFUSE_FORCE_TRITON=1``: CPU tensors run Triton instead of the torch reference, which on a
  CPU tensor works under the interpreter only (``TRITON_INTERPRET=1``: how the tests run kernels).
- ``TRITON_INTERPRET=1``: read by Triton when a ``kernels/*_triton.py`` module is first imported;
  its kernels then run in the Triton interpreter instead of being compiled. tests/conftest.py sets
  it on machines without a GPU; kernels.compile_check needs it unset.

Without triton installed, every call runs the reference.
"""

import functools
import importlib
import os
from collections.abc import Callable

import torch


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(tensor: torch.Tensor) -> bool:
    """Triton on CUDA tensors unless disabled; on CPU only when forced (interpreter tests)."""
    if not triton_available():
        return False
    if tensor.is_cuda:
        return os.environ.get("RECFUSE_DISABLE_TRITON", "0") != "1"
    return os.environ.get("RECFUSE_FORCE_TRITON", "0") == "1"


def by_device(tensor: torch.Tensor, reference: Callable, triton: str) -> Callable:
    """``triton`` ("module.function" in kernels/) when use_triton(tensor), else ``reference``.

    The Triton module is imported on first use, so that runs on the reference never import Triton.
    """
    if not use_triton(tensor):
        return reference
    module, _, function = triton.rpartition(".")
    return getattr(importlib.import_module(f"kernels.{module}"), function)
