"""training.peak: device table lookup, MFU arithmetic, CPU probe, peak memory."""

import pytest
import torch

from training import peak


@pytest.mark.parametrize(
    ("device_name", "table_name", "bf16", "hbm"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4e12, 3.35e12),
        ("NVIDIA H200", "H200 SXM", 989.4e12, 4.8e12),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB", 312e12, 2.039e12),
        ("NVIDIA B200", "B200", 2.25e15, 8e12),
        ("NVIDIA L40S", "L40S", 362.05e12, 0.864e12),
    ],
)
def test_gpu_lookup_by_device_name(device_name, table_name, bf16, hbm):
    row = peak.gpu_peak(device_name)
    assert row.name == table_name
    assert row.flops["bf16"] == bf16
    assert row.hbm_bytes_per_s == hbm
    assert row.flops["fp32"] < row.flops["tf32"] < row.flops["bf16"]


def test_unknown_gpu_has_no_peak():
    assert peak.gpu_peak("NVIDIA GeForce GTX 1080") is None


def test_dtype_names():
    assert peak.normalize_dtype(torch.bfloat16) == "bf16"
    assert peak.normalize_dtype("float32") == "fp32"
    with pytest.raises(ValueError):
        peak.normalize_dtype("int8")


def test_cpu_mfu_uses_the_measured_probe():
    probe = peak.cpu_peak_flops("fp32")
    assert probe > 1e8  # any CPU does 0.1 GFLOP/s
    # running exactly at the probe's rate is 100%
    assert peak.mfu(probe / 1000, 1000, "cpu", "fp32") == pytest.approx(1.0)
    assert peak.peak_memory_gib("cpu") > 0
