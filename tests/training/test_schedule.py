"""LR schedule (training/lr_schedule.py): the formula, MLPerf's scheduler where they agree, batch scaling, both
optimizers set, and a resumed run that recomputes the same rates and ends with the same weights."""

import json
import types

import pytest
import torch

import train
from embedding import SparseOptimizer
from training.config import OptimizerConfig
from training.lr_schedule import apply_lr, lr_at

TOML = """
[run]
log_every = 1
[data]
num_dense = 4
bag_min = 1
bag_max = 3
[model]
bottom_mlp = [8, 4]
top_mlp = [8]
[embedding]
dim = 4
replicate_below_bytes = 300
[[embedding.tables]]
name = "big"
num_embeddings = 37
[[embedding.tables]]
name = "small"
num_embeddings = 5
[optimizer]
dense = "adagrad"
dense_lr = 0.04
sparse = "adagrad"
sparse_lr = 0.2
lr_warmup_steps = 3
decay_start = 4
decay_steps = 3
lr_end = 0.01
[train]
steps = 8
global_batch_size = 16
warmup_steps = 1
[eval]
samples = 64
batch_size = 32
"""


def test_formula_phase_by_phase():
    # warm-up 4, decay from step 6 over 4 steps to 0.2, lr 1:
    # 1/4, 2/4, 3/4, then 1 (steps 4, 5), decay 0.2 + 0.8 * ((10 - s) / 4)^2 for s = 6..9, then 0.2
    o = OptimizerConfig(lr_warmup_steps=4, decay_start=6, decay_steps=4, lr_end=0.2)
    got = [lr_at(s, 1.0, o, 256) for s in range(1, 12)]
    want = [
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
        1.0,
        0.2 + 0.8 * 9 / 16,
        0.2 + 0.8 * 4 / 16,
        0.2 + 0.8 / 16,
        0.2,
        0.2,
    ]
    assert got == pytest.approx(want, rel=1e-15)
    # defaults: constant
    assert [lr_at(s, 0.3, OptimizerConfig(), 256) for s in (1, 1000)] == [0.3, 0.3]


def test_linear_scaling_scales_every_rate():
    # global 1024 / reference 256 = 4: lr 0.5 -> 2, lr_end 0.1 -> 0.4
    o = OptimizerConfig(
        lr_warmup_steps=2,
        decay_start=2,
        decay_steps=2,
        lr_end=0.1,
        scale_lr_with_batch=True,
        reference_batch_size=256,
    )
    assert [lr_at(s, 0.5, o, 1024) for s in (1, 2, 3, 4)] == pytest.approx(
        [1.0, 2.0, 0.4 + 1.6 / 4, 0.4]
    )
    o.scale_lr_with_batch = False
    assert lr_at(2, 0.5, o, 1024) == 0.5


class _DLRMPolicy(torch.optim.lr_scheduler.LRScheduler):
    """facebookresearch/dlrm's LRPolicyScheduler (stepped once per iteration by the MLPerf DLRM-DCNv2 reference),
    transcribed: the oracle for the phases where lr_at is documented to agree with it."""

    def __init__(self, optimizer, warmup, decay_start, decay_steps):
        self.warmup, self.decay_start, self.decay_steps = warmup, decay_start, decay_steps
        super().__init__(optimizer)

    def get_lr(self):
        k = self._step_count
        if k < self.warmup:
            self.last = [b * (1.0 - (self.warmup - k) / self.warmup) for b in self.base_lrs]
        elif self.decay_start <= k < self.decay_start + self.decay_steps:
            scale = ((self.decay_steps - (k - self.decay_start)) / self.decay_steps) ** 2
            self.last = [max(1e-7, b * scale) for b in self.base_lrs]
        else:
            return self.last if self.decay_steps > 0 else list(self.base_lrs)
        return self.last


def _reference_lrs(base, warmup, decay_start, decay_steps, iterations):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base)
    scheduler = _DLRMPolicy(opt, warmup, decay_start, decay_steps)
    lrs = []
    for _ in range(iterations):
        lrs.append(opt.param_groups[0]["lr"])  # the rate iteration k trains with
        opt.step()
        scheduler.step()
    return lrs


def test_matches_mlperf_scheduler_warmup_and_decay():
    base = 0.005
    # warm-up only: identical at every step
    ref = _reference_lrs(base, 5, 0, 0, 12)
    assert [
        lr_at(s, base, OptimizerConfig(lr_warmup_steps=5), 65536) for s in range(1, 13)
    ] == pytest.approx(ref, rel=1e-15)
    # warm-up 5 then decay over 10 steps from step 5: identical through the decay window (steps 1..14)
    o = OptimizerConfig(lr_warmup_steps=5, decay_start=5, decay_steps=10)
    ref = _reference_lrs(base, 5, 5, 10, 16)
    ours = [lr_at(s, base, o, 65536) for s in range(1, 17)]
    assert ours[:14] == pytest.approx(ref[:14], rel=1e-15)
    # after it the reference holds its last decay value lr / D^2 where lr_at reaches lr_end (0 here)
    assert ref[14:] == pytest.approx([base / 100] * 2) and ours[14:] == [0.0, 0.0]


def test_apply_lr_sets_both_optimizers():
    cfg = types.SimpleNamespace(
        optimizer=OptimizerConfig(dense_lr=0.1, sparse_lr=0.3, lr_warmup_steps=4),
        train=types.SimpleNamespace(global_batch_size=64),
    )
    dense = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    embeddings = types.SimpleNamespace(optimizer=SparseOptimizer("adagrad", 0.3))
    assert apply_lr(1, cfg, dense, embeddings) == pytest.approx((0.025, 0.075))
    assert dense.param_groups[0]["lr"] == pytest.approx(
        0.025
    ) and embeddings.optimizer.lr == pytest.approx(0.075)


def _digest(tmp_path, name, *extra):
    return train.main(
        ["--config", str(tmp_path / "s.toml"), "--run.dir", str(tmp_path / name), *extra]
    )["weights_digest"]


def test_warmup_reaches_dense_and_sparse_updates(tmp_path):
    # SGD's step is linear in the rate: one step at lr 0.4 with warm-up 4 (rate 0.4 * 1/4) is one step at 0.1
    (tmp_path / "s.toml").write_text(TOML)
    sgd = [
        "--optimizer.dense",
        "sgd",
        "--optimizer.sparse",
        "sgd",
        "--train.steps",
        "1",
        "--optimizer.decay_steps",
        "0",
        "--optimizer.decay_start",
        "0",
        "--optimizer.lr_end",
        "0",
    ]
    warm = _digest(
        tmp_path,
        "warm",
        *sgd,
        "--optimizer.dense_lr",
        "0.4",
        "--optimizer.sparse_lr",
        "0.4",
        "--optimizer.lr_warmup_steps",
        "4",
    )
    flat = _digest(
        tmp_path,
        "flat",
        *sgd,
        "--optimizer.dense_lr",
        "0.1",
        "--optimizer.sparse_lr",
        "0.1",
        "--optimizer.lr_warmup_steps",
        "0",
    )
    unscaled = _digest(
        tmp_path,
        "unscaled",
        *sgd,
        "--optimizer.dense_lr",
        "0.1",
        "--optimizer.sparse_lr",
        "0.4",
        "--optimizer.lr_warmup_steps",
        "0",
    )
    assert warm == flat and unscaled != flat  # the sparse rate alone changes the result


def test_resume_restores_the_schedule_exactly(tmp_path):
    (tmp_path / "s.toml").write_text(TOML)
    straight_digest = _digest(tmp_path, "straight")
    _digest(tmp_path, "resumed", "--train.steps", "5", "--train.checkpoint_every", "5")
    resumed_digest = _digest(tmp_path, "resumed", "--train.resume", "auto")
    o = OptimizerConfig(
        dense_lr=0.04, sparse_lr=0.2, lr_warmup_steps=3, decay_start=4, decay_steps=3, lr_end=0.01
    )
    lines = {}
    for name in ("straight", "resumed"):
        lines[name] = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        assert [line["step"] for line in lines[name]] == list(range(1, 9))
        for line in lines[name]:
            assert line["dense_lr"] == lr_at(line["step"], 0.04, o, 16)
            assert line["sparse_lr"] == lr_at(line["step"], 0.2, o, 16)
    assert [line["dense_lr"] for line in lines["straight"]] == pytest.approx(
        [0.04 / 3, 0.08 / 3, 0.04, 0.04, 0.01 + 0.03 * 4 / 9, 0.01 + 0.03 / 9, 0.01, 0.01]
    )
    assert [(line["loss"], line["dense_lr"], line["sparse_lr"]) for line in lines["straight"]] == [
        (line["loss"], line["dense_lr"], line["sparse_lr"]) for line in lines["resumed"]
    ]
    assert resumed_digest == straight_digest
