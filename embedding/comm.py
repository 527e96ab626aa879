"""Collectives of the embedding exchange; with no process group (W=1) they are identities.

Rows and gradients can travel in 16 bits (embedding.exchange_dtype, as Persia and TorchRec's QComms do):
bf16 as is (fp32's exponent range), fp16 with one power-of-two scale per message (sender -> receiver chunk)
that brings its largest |gradient| to [2^14, 2^15), so small gradients do not flush to zero; the scales
travel in a [W] all-to-all beside the message. Scaling by a power of two adds no rounding of its own.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

EXCHANGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# a message's largest |value| is scaled into [2^14, 2^15): below fp16's max, 65504
_FP16_TOP_EXPONENT = 14


class GradientMessage(NamedTuple):
    """The backward's message to the owners: each unique key's gradient and lookup count, one row each.
    The pooling backward writes ``grads`` and ``lookups`` (views into ``buffer``) in place."""

    buffer: (
        torch.Tensor
    )  # [U, width] in the exchange dtype (fp16: float32, scaled and packed later)
    grads: torch.Tensor  # [U, D] view: the gradient of each unique key
    lookups: torch.Tensor  # [U] int32 view: the lookups of each unique key, bit-cast into buffer


class Exchange:
    """all-to-all with variable splits on one process group (None for a single process).

    ``input_group`` (default: group) carries the ids of input_dist: a communicator of its own, so
    the next batch's id exchange does not queue behind this batch's rows and gradients."""

    def __init__(self, group, rank: int, world_size: int, dtype: str = "fp32", input_group=None):
        if dtype not in EXCHANGE_DTYPES:
            raise ValueError(
                f"embedding.exchange_dtype is {dtype!r}; expected one of {tuple(EXCHANGE_DTYPES)}"
            )
        self.group = group
        self.input_group = input_group if input_group is not None else group
        self.rank = rank
        self.world_size = world_size
        self.dtype = EXCHANGE_DTYPES[dtype]

    @property
    def distributed(self) -> bool:
        return self.group is not None and self.world_size > 1

    def exchange_counts(self, send_counts: torch.Tensor, out=None) -> torch.Tensor:
        """Each rank tells every other how many items it will send: [W] -> [W] (into out, a
        contiguous [W] tensor, when given)."""
        if not self.distributed:
            return send_counts.clone() if out is None else out.copy_(send_counts)
        recv = torch.empty_like(send_counts) if out is None else out
        dist.all_to_all_single(recv, send_counts, group=self.input_group)
        return recv

    def start(
        self, tensor: torch.Tensor, send_splits: list[int], recv_splits: list[int], ids=False
    ):
        """Begin sending tensor's rows split by send_splits (on the input group when ids); returns
        (output, work or None)."""
        if not self.distributed:
            return tensor, None
        out = tensor.new_empty((sum(recv_splits), *tensor.shape[1:]))
        group = self.input_group if ids else self.group
        work = dist.all_to_all_single(
            out, tensor.contiguous(), recv_splits, send_splits, group=group, async_op=True
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

    def gradient_message(self, rows: int, dim: int, device) -> GradientMessage:
        """An empty message of ``rows`` gradients and lookup counts (GradientMessage): in the exchange
        dtype on the wire, float32 when nothing is sent or fp16 (scaled and packed by gradients())."""
        sent_as_is = self.distributed and self.dtype != torch.float16
        return _message(rows, dim, self.dtype if sent_as_is else torch.float32, device)

    def gradients(self, message: GradientMessage, sd) -> tuple[torch.Tensor, torch.Tensor]:
        """A GradientMessage to the owners (one all-to-all): (float32 [K, D] gradients, int32 [K]
        lookup counts) of the K keys this rank received (sd: the batch's SparseDist)."""
        fp16 = self.dtype == torch.float16 and self.distributed
        if fp16:
            message, scale = self._fp16_message(message, sd)
        received = _message_view(
            self.all_to_all(message.buffer, sd.send_splits, sd.recv_splits), message.grads.shape[1]
        )
        if fp16:
            # the scale each source used for this rank
            source_scale = self.all_to_all(scale, [1] * self.world_size, [1] * self.world_size)
            source = self._ranks(sd.recv_counts, received.buffer.shape[0])
            return received.grads.float() / source_scale[source, None], received.lookups
        return received.grads.float(), received.lookups

    def gradients_packed(self, messages: list[GradientMessage], sds: list) -> list:
        """Several groups' GradientMessages (each its own row width) to the owners in one all-to-all
        (fp16: their scales in one more): per group, gradients() of its message and SparseDist."""
        fp16 = self.dtype == torch.float16 and self.distributed
        if fp16:
            pairs = [self._fp16_message(m, sd) for m, sd in zip(messages, sds, strict=True)]
            messages, scales = [p[0] for p in pairs], [p[1] for p in pairs]
        buffers = self.all_to_all_groups(
            [m.buffer for m in messages],
            [sd.send_splits for sd in sds],
            [sd.recv_splits for sd in sds],
        )
        received = [
            _message_view(b, m.grads.shape[1]) for b, m in zip(buffers, messages, strict=True)
        ]
        if not fp16:
            return [(r.grads.float(), r.lookups) for r in received]
        ones = [[1] * self.world_size] * len(sds)
        # the scale each source used for this rank, per group
        sources = self.all_to_all_groups([s.view(-1, 1) for s in scales], ones, ones)
        out = []
        for r, sd, source_scale in zip(received, sds, sources, strict=True):
            source = self._ranks(sd.recv_counts, r.buffer.shape[0])
            out.append((r.grads.float() / source_scale.view(-1)[source, None], r.lookups))
        return out

    def all_to_all_groups(self, tensors: list, send_splits: list, recv_splits: list) -> list:
        """Several groups' 2-D tensors (one dtype, each its own width) in one all-to-all: to rank r,
        group 0's send_splits[0][r] rows flattened, then group 1's, ...; split sizes in elements, so
        no host read. Returns each group's rows received, grouped by sender."""
        if not self.distributed:
            return list(tensors)
        world, widths = self.world_size, [t.shape[1] for t in tensors]
        pieces, starts = [], [0] * len(tensors)
        for r in range(world):
            for g, t in enumerate(tensors):
                pieces.append(t[starts[g] : starts[g] + send_splits[g][r]].reshape(-1))
                starts[g] += send_splits[g][r]
        send = [
            sum(s[r] * w for s, w in zip(send_splits, widths, strict=True)) for r in range(world)
        ]
        recv = [
            sum(s[r] * w for s, w in zip(recv_splits, widths, strict=True)) for r in range(world)
        ]
        flat = self.all_to_all(torch.cat(pieces), send, recv)
        out, cursor = [[] for _ in tensors], 0
        for r in range(world):
            for g, w in enumerate(widths):
                n = recv_splits[g][r] * w
                out[g].append(flat[cursor : cursor + n].view(-1, w))
                cursor += n
        return [torch.cat(rows) for rows in out]

    def _ranks(self, counts: torch.Tensor, total: int) -> torch.Tensor:
        """The rank of each of ``total`` rows grouped by rank, counts[r] rows for rank r (no sync)."""
        ranks = torch.arange(self.world_size, device=counts.device)
        return torch.repeat_interleave(ranks, counts, output_size=total)

    def _fp16_message(self, message: GradientMessage, sd) -> tuple[GradientMessage, torch.Tensor]:
        """fp16 on the wire: one power-of-two scale per destination brings its largest |gradient| to
        [2^14, 2^15). Returns the fp16 message and the [W] scales."""
        grads, rows = message.grads, message.grads.shape[0]
        dest = self._ranks(sd.send_counts, rows)
        amax = torch.zeros(self.world_size, device=grads.device)
        amax.scatter_reduce_(0, dest, grads.abs().amax(1), "amax")
        exponent = torch.where(amax > 0, torch.floor(torch.log2(amax)), torch.zeros_like(amax))
        scale = torch.exp2(_FP16_TOP_EXPONENT - exponent)  # one per destination
        packed = _message(rows, grads.shape[1], torch.float16, grads.device)
        packed.grads.copy_(grads * scale[dest, None])
        packed.lookups.copy_(message.lookups)
        return packed, scale

    def element_size(self) -> int:
        """Bytes per exchanged row element."""
        return torch.empty(0, dtype=self.dtype).element_size()


def _message(rows: int, dim: int, dtype: torch.dtype, device) -> GradientMessage:
    """An empty GradientMessage of ``rows`` rows in ``dtype``."""
    size = torch.empty(0, dtype=dtype).element_size()
    count_col = -(-dim * size // 4)  # the int32 column after the gradient's bytes
    return _message_view(
        torch.empty(rows, (count_col + 1) * 4 // size, dtype=dtype, device=device), dim
    )


def _message_view(buffer: torch.Tensor, dim: int) -> GradientMessage:
    """The gradients and lookup counts in a message buffer (sent or received)."""
    count_col = -(-dim * buffer.element_size() // 4)
    return GradientMessage(buffer, buffer[:, :dim], buffer.view(torch.int32)[:, count_col])
