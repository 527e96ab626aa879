"""kernels.replicated: the replicated rows' dense gradient buffer and merge_update's entries,
Triton (reading a received message's strided columns) against the torch reference, bit for bit."""

import pytest
import torch

from kernels.replicated import append_replicated_reference, scatter_replicated_reference
from tests.support.kernels import needs_triton, on

pytestmark = needs_triton


def _received(k: int, n: int, dim: int, gen: torch.Generator, strided: bool):
    """K received entries (each replicated row < n at most once, other rows above), as a message
    buffer: gradients [K, D] with the int32 count column beside them, or contiguous int64 counts."""
    rows = torch.randperm(n + 3 * k + 1, generator=gen)[:k]
    message = torch.randn(k, dim + 1, generator=gen)
    message[:, :dim][torch.rand(k, dim, generator=gen) < 0.1] = -0.0  # signed zeros keep their sign
    counts = torch.randint(1, 9, (k,), generator=gen, dtype=torch.int32)
    if strided:
        message.view(torch.int32)[:, dim] = counts
        return rows, message[:, :dim], message.view(torch.int32)[:, dim]
    return rows, message[:, :dim].contiguous(), counts.long()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


@pytest.mark.parametrize("strided", [True, False])
@pytest.mark.parametrize(
    "k,n,dim", [(0, 3, 4), (5, 0, 4), (1, 1, 16), (40, 7, 37), (300, 50, 128), (9, 9, 200)]
)
def test_triton_matches_reference(k, n, dim, strided):
    from kernels.replicated_triton import append_replicated_triton, scatter_replicated_triton

    gen = torch.Generator().manual_seed(k * 13 + n + dim)
    rows, grads, counts = _received(k, n, dim, gen, strided)
    expected = scatter_replicated_reference(rows, grads, counts, n)
    dense = scatter_replicated_triton(*on(rows, grads, counts), n)
    assert dense.is_contiguous() and torch.equal(_bits(dense.cpu()), _bits(expected))
    summed = expected * 3  # as if three ranks sent the same
    expected = append_replicated_reference(rows, grads, counts, summed)
    got = append_replicated_triton(*on(rows, grads, counts, summed))
    for want, have in zip(expected, got, strict=True):
        assert have.dtype == want.dtype and have.is_contiguous()
        assert torch.equal(_bits(have.cpu()), _bits(want))
    assert got[2][:k][rows < n].eq(0).all()  # the received entries of replicated rows add nothing


def test_bad_input_names_the_tensor():
    from kernels.replicated_triton import append_replicated_triton, scatter_replicated_triton

    rows, grads, counts = torch.zeros(2, dtype=torch.int64), torch.zeros(2, 4), torch.ones(2)
    with pytest.raises(ValueError, match="counts must be int32/int64"):
        scatter_replicated_triton(rows, grads, counts, 1)
    with pytest.raises(ValueError, match="dense must be contiguous float32"):
        append_replicated_triton(rows, grads, counts.int(), torch.zeros(1, 4))
