"""Where the kernel tests run the Triton side (compiled on a GPU, or interpreted on the CPU), and the
helpers several kernel test files share."""

import pytest
import torch

from kernels.common_triton import INTERPRETED
from kernels.ownership import owner_of_reference
from kernels.unique_partition import unique_partition_reference

HAS_CUDA = torch.cuda.is_available()
# where the Triton kernels run: compiled on a GPU, or interpreted on the CPU
DEVICE = torch.device("cpu") if INTERPRETED or not HAS_CUDA else torch.device("cuda")

needs_triton = pytest.mark.skipif(
    not INTERPRETED and not HAS_CUDA,
    reason="no GPU and the Triton kernels are compiled, not interpreted (TRITON_INTERPRET was not 1 when "
    "kernels.*_triton was first imported); run via tests/conftest.py or with TRITON_INTERPRET=1",
)


def on(*tensors):
    """The tensors on DEVICE (the Triton side of a comparison)."""
    moved = tuple(t.to(DEVICE) for t in tensors)
    return moved[0] if len(moved) == 1 else moved


def check_unique_partition(keys, offsets, owners, world_size, result):
    """The kernel returns exactly the reference's tensors: first-occurrence order, grouped by owner."""
    unique, counts, inverse = (t.cpu() for t in result)
    keys, offsets, owners = keys.cpu(), offsets.cpu(), owners.cpu()
    ref_unique, ref_counts, ref_inverse = unique_partition_reference(
        keys, offsets, owners, world_size
    )
    assert unique.dtype == counts.dtype == inverse.dtype == torch.int64
    assert torch.equal(counts, ref_counts)
    assert torch.equal(unique, ref_unique)
    assert torch.equal(inverse, ref_inverse)
    assert torch.equal(unique[inverse], keys)
    # contiguous owner groups, rank 0 first
    owner = owner_of_reference(unique, offsets, owners, world_size) if unique.numel() else unique
    bounds = [0, *torch.cumsum(counts, 0).tolist()]
    for rank in range(world_size):
        assert torch.all(owner[bounds[rank] : bounds[rank + 1]] == rank)
