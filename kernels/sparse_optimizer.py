"""The sparse optimizers: names, hyper-parameters, state layout, reference math of one update.

They follow FBGEMM's fused table-batched embedding, in float32 whatever the storage dtype, each
operation rounded to nearest (square roots too: ``sqrt_rn``; Adam's bias corrections 1 - b^t:
float64, rounded to float32 once):

- ``sgd``:      w -= lr * g
- ``adagrad``:  row-wise: m1[r] += mean_d(g^2); w -= lr * g / (sqrt(m1[r]) + eps)
- ``adam``:     lazy: only touched rows advance; per-row step t[r] += 1;
                m1 = b1*m1 + (1-b1)*g; m2 = b2*m2 + (1-b2)*g^2;
                w -= lr * (m1 / (1-b1^t)) / (sqrt(m2 / (1-b2^t)) + eps)

``SparseOptimizer.update_rows`` is the torch reference of sparse_update and pool_backward_update;
their Triton kernels share the same math in kernels.sparse_optimizer_triton.
"""

from dataclasses import dataclass
from typing import Literal, get_args

import torch

SparseOptimizerName = Literal["sgd", "adagrad", "adam"]
SPARSE_OPTIMIZERS: tuple[SparseOptimizerName, ...] = get_args(SparseOptimizerName)


@dataclass
class SparseOptimizer:
    """A sparse optimizer and its hyper-parameters.

    ``lr`` is the learning rate in force: a learning-rate schedule sets it before each step, as
    it sets torch optimizers' ``param_groups[i]["lr"]``, and every update reads it then.
    ``beta1`` and ``beta2`` are used by adam only.
    """

    name: SparseOptimizerName = "adagrad"  # sgd, adagrad (row-wise) or adam (lazy)
    lr: float = 0.05
    eps: float = 1e-8
    beta1: float = 0.9
    beta2: float = 0.999

    def __post_init__(self):
        if self.name not in SPARSE_OPTIMIZERS:
            raise _unknown(self.name)

    def state_layout(
        self, num_rows: int, dim: int
    ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of each state tensor of num_rows x dim weights (row r's state: index r)."""
        if self.name == "sgd":
            return {}
        if self.name == "adagrad":
            return {"momentum1": ((num_rows,), torch.float32)}  # one accumulator per row
        if self.name == "adam":
            moment = ((num_rows, dim), torch.float32)
            steps = ((num_rows,), torch.int64)
            return {"momentum1": moment, "momentum2": moment, "row_steps": steps}
        raise _unknown(self.name)

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state tensors, in the order of init_state's dict."""
        return tuple(self.state_layout(0, 0))

    def init_state(self, num_rows: int, dim: int, device) -> dict[str, torch.Tensor]:
        """Zero optimizer state for a storage of num_rows x dim."""
        return {
            name: torch.zeros(shape, dtype=dtype, device=device)
            for name, (shape, dtype) in self.state_layout(num_rows, dim).items()
        }

    def check_state(self, state: dict[str, torch.Tensor], weight: torch.Tensor) -> None:
        """ValueError unless state holds this optimizer's tensors for weight, contiguous."""
        for name, (shape, dtype) in self.state_layout(*weight.shape).items():
            t = state.get(name)
            if t is None:
                raise ValueError(
                    f"{self.name} state is missing {name!r} (see SparseOptimizer.init_state)"
                )
            layout = (tuple(t.shape), t.dtype, t.device)
            if layout != (shape, dtype, weight.device) or not t.is_contiguous():
                raise ValueError(
                    f"state[{name!r}] must be a contiguous {dtype} tensor of shape {shape} "
                    f"on {weight.device}, got {t.dtype} {tuple(t.shape)} on {t.device}"
                )

    def update_rows(
        self,
        weight: torch.Tensor,
        rows: torch.Tensor,
        grad: torch.Tensor,
        state: dict[str, torch.Tensor],
    ) -> None:
        """The reference math: one step on distinct rows of weight and their state, in place.

        Args:
            weight: [R, D] storage (float32, or bf16/fp16 with float32 math).
            rows: int64 [U] distinct rows.
            grad: float32 [U, D] the gradient of each row.
            state: tensors from init_state.
        """
        if rows.numel() == 0:
            return
        lr, eps, beta1, beta2, g = self.lr, self.eps, self.beta1, self.beta2, grad
        w = weight.index_select(0, rows).float()
        if self.name == "sgd":
            w -= lr * g
        elif self.name == "adagrad":
            m1 = state["momentum1"].index_select(0, rows) + (g * g).mean(dim=1)
            state["momentum1"].index_copy_(0, rows, m1)
            w -= lr * g / (sqrt_rn(m1) + eps)[:, None]
        elif self.name == "adam":
            t = state["row_steps"].index_select(0, rows) + 1
            m1 = beta1 * state["momentum1"].index_select(0, rows) + (1 - beta1) * g
            m2 = beta2 * state["momentum2"].index_select(0, rows) + (1 - beta2) * g * g
            state["row_steps"].index_copy_(0, rows, t)
            state["momentum1"].index_copy_(0, rows, m1)
            state["momentum2"].index_copy_(0, rows, m2)
            # in float64, then rounded once: 1 - beta^t in float32 loses most of its digits at small t
            tf = t.double()[:, None]
            bias1 = (1 - beta1**tf).float()
            bias2 = (1 - beta2**tf).float()
            w -= lr * (m1 / bias1) / (sqrt_rn(m2 / bias2) + eps)
        else:
            raise _unknown(self.name)
        weight.index_copy_(0, rows, w.to(weight.dtype))


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """float32 square root rounded to nearest. torch's vectorized CPU sqrt is off by an ulp on about
    0.6% of inputs; float64's, rounded once, is the correctly rounded float32 (53 >= 2 * 24 + 2 bits:
    the double rounding is harmless), as a GPU's IEEE sqrt and the Triton kernels' tl.sqrt_rn."""
    return x.double().sqrt().float()


def _unknown(name) -> ValueError:
    return ValueError(f"unknown sparse optimizer {name!r}; expected one of {SPARSE_OPTIMIZERS}")
