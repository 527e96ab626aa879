"""Learning-rate schedule shared by the dense and the sparse optimizer (training.config.OptimizerConfig documents it).

A pure function of the step: a resumed run knows its step and so recomputes the rate exactly, with nothing to
checkpoint. Steps count from 1 (the first optimizer step is step 1), as the training loop and torch's LRScheduler
(whose _step_count the MLPerf DLRM-DCNv2 LRPolicyScheduler reads) both do.
"""

from __future__ import annotations


def batch_scale(o, global_batch_size: int) -> float:
    """Linear scaling rule: global batch / the batch the learning rates were tuned at (1 when off)."""
    return global_batch_size / o.reference_batch_size if o.scale_lr_with_batch else 1.0


def lr_at(step: int, base_lr: float, o, global_batch_size: int) -> float:
    """The learning rate of `step` (1-based) for an optimizer whose configured rate is base_lr (o: OptimizerConfig).

    warm-up   step < W:                    lr * step / W
    constant  W <= step < S (or no decay): lr
    decay     S <= step < S + D:           lr_end + (lr - lr_end) * ((S + D - step) / D) ** 2
    after     step >= S + D:               lr_end
    with W = lr_warmup_steps, S = decay_start, D = decay_steps, and lr, lr_end both times batch_scale().
    """
    scale = batch_scale(o, global_batch_size)
    lr, lr_end = base_lr * scale, o.lr_end * scale
    if step < o.lr_warmup_steps:
        return lr * step / o.lr_warmup_steps
    if o.decay_steps <= 0 or step < o.decay_start:
        return lr
    remaining = max(o.decay_start + o.decay_steps - step, 0) / o.decay_steps
    return lr_end + (lr - lr_end) * remaining**2


def apply_lr(step: int, cfg, dense_optimizer, embeddings) -> tuple[float, float]:
    """Set the dense optimizer's and the embeddings' rates for `step` (before its backward, which applies the
    sparse update); returns (dense_lr, sparse_lr)."""
    o, batch = cfg.optimizer, cfg.train.global_batch_size
    dense_lr, sparse_lr = lr_at(step, o.dense_lr, o, batch), lr_at(step, o.sparse_lr, o, batch)
    for group in dense_optimizer.param_groups:
        group["lr"] = dense_lr
    embeddings.optimizer.lr = sparse_lr  # the rate in force: every sparse update reads it
    return dense_lr, sparse_lr
