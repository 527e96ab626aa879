"""Device peaks for MFU and memory-bandwidth reports: peak dense FLOP/s by dtype, HBM bandwidth.

GPU numbers are the vendors' published dense figures (tensor-core numbers WITHOUT 2:4 structured
sparsity, i.e. half the "with sparsity" datasheet number). A device is found by a substring of
torch.cuda.get_device_name(); the first matching row wins, so more specific names come first.
A CPU has no datasheet here: a short matmul probe measures it once per dtype and caches it.
"""

from __future__ import annotations

import functools
import resource
import sys
import time
from dataclasses import dataclass

import torch

DTYPES = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class DevicePeak:
    name: str
    flops: dict[str, float]  # dtype ("fp32", "tf32", "bf16") -> peak dense FLOP/s
    hbm_bytes_per_s: float


# (substring of torch.cuda.get_device_name(), peak). Sources, per GPU:
# - H100 SXM, NVIDIA H100 Tensor Core GPU datasheet: FP32 67 TF; TF32 989 TF and BF16 1,979 TF are
#   "with sparsity" -> dense 494.7 / 989.4 TF; HBM3 3.35 TB/s. Its name is "NVIDIA H100 80GB HBM3".
# - H200 SXM, NVIDIA H200 datasheet: same GH100 compute as H100 SXM (67 / 989* / 1,979* TF);
#   HBM3e 4.8 TB/s.
# - A100 SXM, NVIDIA A100 datasheet: FP32 19.5 TF, TF32 156 TF, BF16 312 TF (dense; 312*/624* sparse);
#   80GB SXM 2,039 GB/s, 80GB PCIe 1,935 GB/s, 40GB SXM 1,555 GB/s.
# - B200, NVIDIA HGX B200 datasheet (per GPU): FP32 75 TF; TF32 2.2 PF and FP16/BF16 4.5 PF with
#   sparsity -> dense 1.1 / 2.25 PF; HBM3e 8 TB/s.
# - L40S, NVIDIA L40S datasheet: FP32 91.6 TF; TF32 183 TF, BF16 362.05 TF (dense; 366*/733* sparse);
#   GDDR6 864 GB/s.
_H100_FLOPS = {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12}
_A100_FLOPS = {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12}
GPU_PEAKS: list[tuple[str, DevicePeak]] = [
    ("H200", DevicePeak("H200 SXM", _H100_FLOPS, 4.8e12)),
    ("H100 80GB HBM3", DevicePeak("H100 SXM", _H100_FLOPS, 3.35e12)),
    ("H100 SXM", DevicePeak("H100 SXM", _H100_FLOPS, 3.35e12)),
    ("A100-SXM4-80GB", DevicePeak("A100 SXM 80GB", _A100_FLOPS, 2.039e12)),
    ("A100-SXM4-40GB", DevicePeak("A100 SXM 40GB", _A100_FLOPS, 1.555e12)),
    ("A100 80GB PCIe", DevicePeak("A100 PCIe 80GB", _A100_FLOPS, 1.935e12)),
    ("A100", DevicePeak("A100 80GB", _A100_FLOPS, 2.0e12)),
    ("B200", DevicePeak("B200", {"fp32": 75e12, "tf32": 1.1e15, "bf16": 2.25e15}, 8e12)),
    ("L40S", DevicePeak("L40S", {"fp32": 91.6e12, "tf32": 183e12, "bf16": 362.05e12}, 0.864e12)),
]


def normalize_dtype(dtype) -> str:
    """ "fp32" | "tf32" | "bf16" from a string or a torch dtype (float32 means fp32: TF32 is a matmul mode)."""
    if isinstance(dtype, torch.dtype):
        # fp16 peaks = bf16 peaks
        names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "bf16"}
        if dtype not in names:
            raise ValueError(f"no peak FLOP/s for dtype {dtype}")
        return names[dtype]
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "bf16", "fp16": "bf16"}
    name = aliases.get(str(dtype), str(dtype))
    if name not in DTYPES:
        raise ValueError(f"no peak FLOP/s for dtype {dtype!r}; expected one of {DTYPES}")
    return name


def gpu_peak(device_name: str) -> DevicePeak | None:
    """The table row whose key is a substring of device_name, or None for a GPU not in the table."""
    for key, peak in GPU_PEAKS:
        if key.lower() in device_name.lower():
            return peak
    return None


@functools.cache
def cpu_peak_flops(dtype: str = "fp32", size: int = 512, seconds: float = 0.2) -> float:
    """Measured matmul FLOP/s on this CPU: the best of repeated size^3 matmuls for ~``seconds``.
    A probe, not a datasheet: it is what torch's BLAS reaches here, so CPU MFU reads against that."""
    torch_dtype = torch.bfloat16 if normalize_dtype(dtype) == "bf16" else torch.float32
    a = torch.randn(size, size).to(torch_dtype)
    b = torch.randn(size, size).to(torch_dtype)
    torch.mm(a, b)  # warm-up: thread pool start, BLAS dispatch
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return 2.0 * size**3 / best


def peak_flops(device="cuda", dtype="bf16") -> float | None:
    """Peak dense FLOP/s of ``device`` for ``dtype``; None for a GPU missing from GPU_PEAKS."""
    dtype = normalize_dtype(dtype)
    device = torch.device(device)
    if device.type == "cpu":
        return cpu_peak_flops("fp32" if dtype == "tf32" else dtype)
    if device.type != "cuda":
        return None
    peak = gpu_peak(torch.cuda.get_device_name(device))
    return peak.flops[dtype] if peak else None


def hbm_bandwidth(device="cuda") -> float | None:
    """Device memory bandwidth in bytes/s; None for a CPU or a GPU missing from GPU_PEAKS."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    peak = gpu_peak(torch.cuda.get_device_name(device))
    return peak.hbm_bytes_per_s if peak else None


def mfu(
    flops_per_sample: float, samples_per_sec: float, device="cuda", dtype="bf16"
) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over peak, a fraction (0.42 = 42%). None if the peak is unknown."""
    peak = peak_flops(device, dtype)
    if not peak:
        return None
    return flops_per_sample * samples_per_sec / peak


def peak_memory_gib(device="cuda") -> float:
    """Peak memory of this process so far: CUDA max_memory_allocated on a GPU, peak RSS on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)
