"""The base of the dense networks: forward(dense, pooled) -> logits, with their nn.Linear parameters in one
flat buffer so that bf16 autocast casts them in one kernel, not one per tensor.

Under autocast every nn.Linear casts its weight and bias to bf16 on every call: a DLRM launches 14 such cast
kernels forward and 8 more in backward (the weight gradients cast back to float32), a third of its compiled
step. Here each nn.Linear parameter stays a Parameter of its module (state_dict, optimizers, DDP and
checkpoints see nothing new), but its storage is a slice of one float32 buffer (flatten_linears_, which
build_model calls). Under autocast, forward casts the buffer once and runs the network with the bf16 slices in
place of the parameters. Autocast leaves a tensor already in its dtype alone, so every op computes what it
computes with per-parameter casts: the same bits (tests/models/test_network.py). Backward casts the gradient of
the bf16 buffer to float32 once and gives each parameter its slice.
"""

from __future__ import annotations

import torch
from torch import nn


class _CastFlat(torch.autograd.Function):
    """flat.to(dtype), whose gradient goes to the parameters that are slices of flat."""

    @staticmethod
    def forward(ctx, flat, dtype, layout, *params):
        ctx.layout = layout  # (offset, shape) of each parameter in flat
        return flat.to(dtype)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.float()
        slices = [grad[o : o + shape.numel()].view(shape) for o, shape in ctx.layout]
        return (None, None, None, *slices)


class Network(nn.Module):
    """A dense network: forward(dense [B, Dd], pooled [B, F, D]) -> logits [B]; subclasses define logits().

    ``project`` (models.projection.FieldProjection, set by build_model when the tables differ in dim) turns
    the pooled input into [B, F, D] before logits() sees it."""

    def __init__(self):
        super().__init__()
        self.project = None

    def logits(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, dense: torch.Tensor, pooled: torch.Tensor, cast_flat: bool = True
    ) -> torch.Tensor:
        kind = dense.device.type
        names = getattr(self, "_flat_names", ())
        if not (cast_flat and names and torch.is_autocast_enabled(kind)):
            return self.logits(dense, pooled if self.project is None else self.project(pooled))
        if not torch.compiler.is_compiling():
            self._check_flat()
        params = dict(self.named_parameters())
        layout = self._flat_layout
        flat = _CastFlat.apply(
            self._flat_linears, torch.get_autocast_dtype(kind), layout, *(params[n] for n in names)
        )
        views = {
            name: flat[o : o + shape.numel()].view(shape)
            for name, (o, shape) in zip(names, layout, strict=True)
        }
        return torch.func.functional_call(self, views, (dense, pooled), {"cast_flat": False})

    def _check_flat(self) -> None:
        flat = self._flat_linears.untyped_storage().data_ptr()
        for name in self._flat_names:
            if self.get_parameter(name).untyped_storage().data_ptr() != flat:
                raise RuntimeError(
                    f"{type(self).__name__}: parameter {name} no longer lives in the flat Linear buffer "
                    "(its storage was replaced); call models.network.flatten_linears_ again"
                )

    def __setstate__(self, state):
        # deepcopy and pickle give each parameter its own storage
        super().__setstate__(state)
        if getattr(self, "_flat_names", ()):
            flatten_linears_(self)

    def _apply(self, fn, recurse=True):
        # .to(), .cuda(), .double() give each parameter its own storage: put them back into one buffer
        out = super()._apply(fn, recurse)
        if getattr(self, "_flat_names", ()):
            flatten_linears_(self)
        return out


@torch.no_grad()
def flatten_linears_(net: Network) -> Network:
    """Move the weights and biases of net's nn.Linear modules into one float32 buffer (values unchanged);
    networks whose Linear parameters differ in dtype or device are left as they are."""
    params = [
        (name, p)
        for name, p in net.named_parameters()
        if isinstance(net.get_submodule(name.rpartition(".")[0]), nn.Linear)
    ]
    kinds = {(p.dtype, p.device) for _, p in params}
    if len(kinds) != 1:
        return net
    dtype, device = kinds.pop()
    flat = torch.empty(sum(p.numel() for _, p in params), dtype=dtype, device=device)
    layout, offset = [], 0
    for _, p in params:
        flat[offset : offset + p.numel()].copy_(p.reshape(-1))
        p.data = flat[offset : offset + p.numel()].view_as(p)
        layout.append((offset, p.shape))
        offset += p.numel()
    # not persistent: the parameters are what a checkpoint saves
    net.register_buffer("_flat_linears", flat, persistent=False)
    net._flat_names = tuple(name for name, _ in params)
    net._flat_layout = tuple(layout)
    return net
