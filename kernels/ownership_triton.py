"""Triton owner rank and local storage row of fused-row keys: one pass per key.

A key's table is found by a binary search over the T+1 table offsets (a few cached loads: T is
small), then its owner (``key_owner``) or its storage row on the owner (``_local_rows_kernel``).
kernels.unique_partition_triton reuses ``key_owner`` for the owners of the unique keys.
"""

import torch
import triton
import triton.language as tl

BLOCK = 1024  # keys per program


@triton.jit
def key_table(
    key,  # int64 [BLOCK] keys, offsets[0] <= key
    offsets_ptr,  # int64 [T+1] first fused row of each table, then the total
    num_tables,  # T
    search_steps,  # halvings of [0, T): T.bit_length() (0 skips the search: table 0)
):
    """The last table t with offsets[t] <= key (torch.searchsorted(right=True) - 1), in [0, T)."""
    lo = tl.zeros_like(key)
    hi = lo + num_tables
    for _ in range(search_steps):
        mid = (lo + hi) >> 1  # lo < hi <= T: mid < T, a valid table
        right = tl.load(offsets_ptr + mid) <= key
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    return lo


@triton.jit
def key_owner(
    key,  # int64 [BLOCK] keys
    offsets_ptr,  # int64 [T+1] table offsets
    owner_ptr,  # int64 [T] owner rank per table, -1 for row-wise
    num_tables,  # T
    search_steps,  # as for key_table
    world_size,  # W
):
    """Owner rank of each key (int64), as kernels.ownership.owner_of_reference."""
    t = key_table(key, offsets_ptr, num_tables, search_steps)
    row = key - tl.load(offsets_ptr + t)
    table_owner = tl.load(owner_ptr + t)
    return tl.where(table_owner >= 0, table_owner, row % world_size)


@triton.jit(do_not_specialize=["n", "num_tables", "search_steps", "world_size"])
def _owner_kernel(
    keys_ptr,  # int64 [N] keys
    n,  # N
    offsets_ptr,  # int64 [T+1] table offsets
    owner_ptr,  # int64 [T] owner rank per table, -1 for row-wise
    num_tables,  # T
    search_steps,  # T.bit_length()
    world_size,  # W
    out_ptr,  # int64 [N] out: owner rank of each key
    BLOCK: tl.constexpr,  # keys per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    key = tl.load(keys_ptr + offs, mask=valid, other=0)
    owner = key_owner(key, offsets_ptr, owner_ptr, num_tables, search_steps, world_size)
    tl.store(out_ptr + offs, owner, mask=valid)


@triton.jit(do_not_specialize=["n", "num_tables", "search_steps", "world_size"])
def _local_rows_kernel(
    keys_ptr,  # int64 [N] keys held by this rank
    n,  # N
    offsets_ptr,  # int64 [T+1] table offsets
    owner_ptr,  # int64 [T] owner rank per table, -1 for row-wise (stored at row // W)
    base_ptr,  # int64 [T] first storage row of each table on this rank
    num_tables,  # T
    search_steps,  # T.bit_length()
    world_size,  # W
    out_ptr,  # int64 [N] out: storage row of each key
    BLOCK: tl.constexpr,  # keys per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    key = tl.load(keys_ptr + offs, mask=valid, other=0)
    t = key_table(key, offsets_ptr, num_tables, search_steps)
    row = key - tl.load(offsets_ptr + t)
    row = tl.where(tl.load(owner_ptr + t) < 0, row // world_size, row)
    tl.store(out_ptr + offs, tl.load(base_ptr + t) + row, mask=valid)


def check_tables(keys, table_offsets, table_owner, world_size, *more) -> None:
    """ValueError unless the keys and table tensors fit together (int64, 1-D, on one device)."""
    named = (("keys", keys), ("table_offsets", table_offsets), ("table_owner", table_owner))
    for name, t in (*named, *more):
        if t.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
        if t.device != keys.device:
            raise ValueError(f"{name} is on {t.device}, keys on {keys.device}")
    if table_offsets.numel() != table_owner.numel() + 1 or table_owner.numel() == 0:
        raise ValueError(
            f"need T >= 1 tables and T+1 offsets, got {table_owner.numel()} owners "
            f"and {table_offsets.numel()} offsets"
        )
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")


def owner_of_triton(keys, table_offsets, table_owner, world_size: int) -> torch.Tensor:
    """Same contract as kernels.ownership.owner_of."""
    check_tables(keys.reshape(-1), table_offsets, table_owner, world_size)
    flat = keys.reshape(-1).contiguous()
    out = torch.empty_like(flat)
    n, tables = flat.numel(), table_owner.numel()
    if n:
        _owner_kernel[(triton.cdiv(n, BLOCK),)](
            flat, n, table_offsets, table_owner, tables, tables.bit_length(), world_size, out,
            BLOCK=BLOCK,
        )  # fmt: skip
    return out.view(keys.shape)


def local_rows_triton(keys, table_offsets, table_owner, local_base, world_size: int):
    """Same contract as kernels.ownership.local_rows."""
    flat = keys.reshape(-1).contiguous()
    check_tables(flat, table_offsets, table_owner, world_size, ("local_base", local_base))
    if local_base.numel() != table_owner.numel():
        raise ValueError(
            f"local_base has {local_base.numel()} entries, table_owner {table_owner.numel()}"
        )
    out = torch.empty_like(flat)
    n, tables = flat.numel(), table_owner.numel()
    if n:
        _local_rows_kernel[(triton.cdiv(n, BLOCK),)](
            flat, n, table_offsets, table_owner, local_base, tables, tables.bit_length(),
            world_size, out, BLOCK=BLOCK,
        )  # fmt: skip
    return out.view(keys.shape)


def compile_cases():
    """Calls covering every specialization these launchers make (kernels.compile_check compiles
    them): one table and several."""
    keys = torch.arange(300, dtype=torch.int64) * 7 % 60
    for offsets, owners in (
        (torch.tensor([0, 60]), torch.tensor([-1])),
        (torch.tensor([0, 10, 50, 2**40]), torch.tensor([0, -1, 2])),
    ):
        base = torch.zeros_like(owners)
        yield lambda o=offsets, w=owners: owner_of_triton(keys, o, w, 3)
        yield lambda o=offsets, w=owners, b=base: local_rows_triton(keys, o, w, b, 3)
