"""Where the kernel tests run the Triton side: compiled on a GPU, or interpreted on the CPU."""

import pytest
import torch

from kernels.common_triton import INTERPRETED

HAS_CUDA = torch.cuda.is_available()
# where the Triton kernels run: compiled on a GPU, or interpreted on the CPU
DEVICE = torch.device("cpu") if INTERPRETED or not HAS_CUDA else torch.device("cuda")

needs_triton = pytest.mark.skipif(
    not INTERPRETED and not HAS_CUDA,
    reason="no GPU and the Triton kernels are compiled, not interpreted (TRITON_INTERPRET was not 1 when "
    "kernels.*_triton was first imported); run via tests/conftest.py or with TRITON_INTERPRET=1",
)
