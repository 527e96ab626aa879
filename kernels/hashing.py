"""Counter-based hashing: random numbers that depend only on an integer counter.

Used wherever a value must not depend on how work is split across ranks: synthetic samples
(keyed by global sample index) and initial embedding rows (keyed by table and global row).
"""

import torch

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


# splitmix64's increment and multipliers as signed int64, public for code that hashes the same way
GOLDEN = _signed(0x9E3779B97F4A7C15)
MIX1 = _signed(0xBF58476D1CE4E5B9)
MIX2 = _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finalizer on int64 tensors (wrapping arithmetic)."""
    z = x + GOLDEN
    z = (z ^ _shr(z, 30)) * MIX1
    z = (z ^ _shr(z, 27)) * MIX2
    return z ^ _shr(z, 31)


def uniform(x: torch.Tensor) -> torch.Tensor:
    """float64 in [0, 1) from hashed int64 counters."""
    return _shr(splitmix64(x), 11).double() * (2.0**-53)
