"""Collectives of the embedding exchange; with no process group (W=1) they are identities.

Rows and gradients can travel in 16 bits (embedding.exchange_dtype, as Persia and TorchRec's QComms do):
bf16 as is (fp32's exponent range), fp16 with one power-of-two scale per message (sender -> receiver chunk)
that brings its largest |gradient| to [2^14, 2^15), so small gradients do not flush to zero; the scales
travel in a [W] all-to-all beside the message. Scaling by a power of two adds no rounding of its own.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

EXCHANGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# a message's largest |value| is scaled into [2^14, 2^15): below fp16's max, 65504
_FP16_TOP_EXPONENT = 14


class Exchange:
    """all-to-all with variable splits on one process group (None for a single process)."""

    def __init__(self, group, rank: int, world_size: int, dtype: str = "fp32"):
        if dtype not in EXCHANGE_DTYPES:
            raise ValueError(
                f"embedding.exchange_dtype is {dtype!r}; expected one of {tuple(EXCHANGE_DTYPES)}"
            )
        self.group = group
        self.rank = rank
        self.world_size = world_size
        self.dtype = EXCHANGE_DTYPES[dtype]

    @property
    def distributed(self) -> bool:
        return self.group is not None and self.world_size > 1

    def exchange_counts(self, send_counts: torch.Tensor) -> torch.Tensor:
        """Each rank tells every other how many items it will send: [W] -> [W]."""
        if not self.distributed:
            return send_counts.clone()
        recv = torch.empty_like(send_counts)
        dist.all_to_all_single(recv, send_counts, group=self.group)
        return recv

    def start(self, tensor: torch.Tensor, send_splits: list[int], recv_splits: list[int]):
        """Begin sending tensor's rows split by send_splits; returns (output, work or None)."""
        if not self.distributed:
            return tensor, None
        out = tensor.new_empty((sum(recv_splits), *tensor.shape[1:]))
        work = dist.all_to_all_single(
            out, tensor.contiguous(), recv_splits, send_splits, group=self.group, async_op=True
        )
        return out, work

    def all_to_all(
        self, tensor: torch.Tensor, send_splits: list[int], recv_splits: list[int]
    ) -> torch.Tensor:
        out, work = self.start(tensor, send_splits, recv_splits)
        if work is not None:
            work.wait()
        return out

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def gather_objects(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def rows(
        self, rows: torch.Tensor, send_splits: list[int], recv_splits: list[int]
    ) -> torch.Tensor:
        """Served rows back to their requesters, in the exchange dtype (the pooling reads any float dtype)."""
        if not self.distributed:
            return rows
        return self.all_to_all(rows.to(self.dtype), send_splits, recv_splits)

    def gradients(
        self, grads: torch.Tensor, send_splits: list[int], recv_splits: list[int]
    ) -> torch.Tensor:
        """float32 gradients [U, D] to the owners: float32 [sum(recv_splits), D], compressed on the wire."""
        if not self.distributed or self.dtype == torch.float32:
            return self.all_to_all(grads, send_splits, recv_splits)
        if self.dtype == torch.bfloat16:
            return self.all_to_all(grads.to(torch.bfloat16), send_splits, recv_splits).float()
        device, w = grads.device, self.world_size
        dest = torch.repeat_interleave(
            torch.arange(w, device=device),
            torch.tensor(send_splits, device=device),
            output_size=grads.shape[0],
        )
        amax = torch.zeros(w, device=device).scatter_reduce_(0, dest, grads.abs().amax(1), "amax")
        exponent = torch.where(amax > 0, torch.floor(torch.log2(amax)), torch.zeros_like(amax))
        scale = torch.exp2(_FP16_TOP_EXPONENT - exponent)  # one per destination
        received = self.all_to_all((grads * scale[dest, None]).half(), send_splits, recv_splits)
        # the scale each source used for this rank
        source_scale = self.all_to_all(scale, [1] * w, [1] * w)
        source = torch.repeat_interleave(
            torch.arange(w, device=device),
            torch.tensor(recv_splits, device=device),
            output_size=received.shape[0],
        )
        return received.float() / source_scale[source, None]

    def element_size(self) -> int:
        """Bytes per exchanged row element."""
        return torch.empty(0, dtype=self.dtype).element_size()
