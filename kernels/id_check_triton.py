"""Triton id range check (kernels.id_check): one launch, no host sync.

``_check_kernel``: one program per BAGS consecutive bags walks their values in step (like gather_pool), writes
each checked id + base[table] (and the table), and takes the minimum position of the bad values into
record[0] with one atomic_min per program. Then each program takes a ticket (an atomic_add on record[4]);
the program that draws the last one, when every atomic_min is done, turns the minimum position into its bag
(a binary search of offsets) and id, keeps them in record[1:4] unless a bad id is already kept, and resets
record[0] and the ticket counter for the next batch. The kept value is a minimum: the same whatever order the
programs run in.
"""

import torch
import triton
import triton.language as tl

from kernels.id_check import DYNAMIC, ERROR, MODULO, NO_BAD

_ERROR = tl.constexpr(ERROR)
_MODULO = tl.constexpr(MODULO)
_DYNAMIC = tl.constexpr(DYNAMIC)
_NO_BAD = tl.constexpr(NO_BAD)
BAGS = 128  # bags per program
SEARCH_STEPS = 33  # binary search steps: F*B+1 < 2^32 bags
_SIZES = ["batch_size", "num_bags", "batch"]


@triton.jit
def _keep_first_bad(
    values_ptr,  # int64 [N] the batch's ids (before the check)
    offsets_ptr,  # int64 [F*B+1] bag boundaries
    record_ptr,  # int64 [5] (first bad position, flag, batch << 32 | bag, id, tickets)
    num_bags,  # F * B
    batch,  # this batch's number
    SEARCH_STEPS: tl.constexpr,  # binary search steps (2^SEARCH_STEPS > F*B)
):
    """The last program's work: record[0] (every program's atomic_min done) turned into its bag
    and id, kept in record[1:4] unless a bad id is kept already; record[0] and the ticket counter
    reset for the next batch."""
    # read through atomics: the other programs' atomic_mins live in L2, not in this SM's cache
    pos = tl.atomic_xchg(record_ptr, _NO_BAD, sem="relaxed")
    tl.atomic_xchg(record_ptr + 4, 0, sem="relaxed")
    found = pos < _NO_BAD
    at = tl.where(found, pos, 0)
    # the bag holding value `at`: the last bag whose start is <= at (empty bags share their start)
    lo = tl.zeros((), tl.int64)
    hi = num_bags.to(tl.int64) - 1
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi + 1) // 2
        active = lo < hi
        right = tl.load(offsets_ptr + mid) <= at
        lo = tl.where(active & right, mid, lo)
        hi = tl.where(active & ~right, mid - 1, hi)
    value = tl.load(values_ptr + at, mask=found, other=0)
    flag = tl.load(record_ptr + 1)
    keep = found & (flag == 0)
    tl.store(record_ptr + 1, tl.where(keep, 1, flag))
    where = (batch.to(tl.int64) << 32) | lo
    tl.store(record_ptr + 2, tl.where(keep, where, tl.load(record_ptr + 2)))
    tl.store(record_ptr + 3, tl.where(keep, value, tl.load(record_ptr + 3)))


@triton.jit(do_not_specialize=_SIZES)
def _check_kernel(
    values_ptr,  # int64 [N] ids, grouped by bag, bags feature-major
    offsets_ptr,  # int64 [F*B+1] bag boundaries
    feature_table_ptr,  # int64 [F] table of each feature
    table_rows_ptr,  # int64 [T] rows of each table
    table_policy_ptr,  # int32 [T] ERROR / MODULO / DYNAMIC
    base_ptr,  # int64 [T] added to each checked id
    out_ptr,  # int64 [N] out: checked id + base[table]
    table_out_ptr,  # int64 [N] out: table of each value (written when WANT_TABLE)
    record_ptr,  # int64 [5] from new_record: first bad position (atomic_min), kept id, tickets
    batch_size,  # B
    num_bags,  # F * B
    batch,  # this batch's number, kept with its first bad id
    BAGS: tl.constexpr,  # bags per program
    WANT_TABLE: tl.constexpr,  # write table_out
    SEARCH_STEPS: tl.constexpr,  # binary search steps of the last program (2^SEARCH_STEPS > F*B)
):
    bag = tl.program_id(0).to(tl.int64) * BAGS + tl.arange(0, BAGS)
    bag_mask = bag < num_bags
    start = tl.load(offsets_ptr + bag, mask=bag_mask, other=0)
    length = tl.load(offsets_ptr + bag + 1, mask=bag_mask, other=0) - start
    table = tl.load(feature_table_ptr + bag // batch_size, mask=bag_mask, other=0)
    rows = tl.load(table_rows_ptr + table, mask=bag_mask, other=1)
    policy = tl.load(table_policy_ptr + table, mask=bag_mask, other=_DYNAMIC)
    base = tl.load(base_ptr + table, mask=bag_mask, other=0)
    first_bad = tl.full([BAGS], _NO_BAD, tl.int64)
    for j in range(0, tl.max(length)):
        m = j < length
        i = start + j
        v = tl.load(values_ptr + i, mask=m, other=0)
        over = v >= rows
        bad = m & ((v < 0) | ((policy == _ERROR) & over))
        wrap = (policy == _MODULO) & over & (v >= 0)
        checked = tl.where(wrap, v % tl.maximum(rows, 1), v)
        checked = tl.where(bad, 0, checked)
        tl.store(out_ptr + i, checked + base, mask=m)
        if WANT_TABLE:
            tl.store(table_out_ptr + i, table, mask=m)
        first_bad = tl.minimum(first_bad, tl.where(bad, i, _NO_BAD))
    lowest = tl.min(first_bad, axis=0)
    tl.atomic_min(record_ptr, lowest, mask=lowest < _NO_BAD, sem="relaxed")
    # acq_rel: this program's atomic_min is visible before its ticket, and the last ticket's
    # holder sees every program's
    ticket = tl.atomic_add(record_ptr + 4, 1, sem="acq_rel")
    if ticket == tl.num_programs(0) - 1:
        _keep_first_bad(values_ptr, offsets_ptr, record_ptr, num_bags, batch, SEARCH_STEPS)


def check_ids_triton(
    values,
    offsets,
    batch_size,
    feature_table,
    table_rows,
    table_policy,
    base,
    record,
    batch,
    want_table,
):
    """Same contract as kernels.id_check.check_ids."""
    n, num_bags = values.numel(), offsets.numel() - 1
    out = torch.empty_like(values)
    table_out = torch.empty_like(values) if want_table else out
    if n == 0 or num_bags == 0:
        return out, (table_out if want_table else None)
    _check_kernel[(triton.cdiv(num_bags, BAGS),)](
        values,
        offsets,
        feature_table,
        table_rows,
        table_policy,
        base,
        out,
        table_out,
        record,
        batch_size,
        num_bags,
        batch,
        BAGS=BAGS,
        WANT_TABLE=want_table,
        SEARCH_STEPS=SEARCH_STEPS,
    )
    return out, (table_out if want_table else None)


def compile_cases():
    """Calls covering every specialization this launcher makes (kernels.compile_check compiles them)."""
    from kernels.id_check import new_record

    values = torch.tensor([3, -1, 7, 0, 9], dtype=torch.int64)
    offsets = torch.tensor([0, 2, 2, 4, 5], dtype=torch.int64)  # F=2, B=2, an empty bag
    tables = torch.tensor([0, 1], dtype=torch.int64)
    rows = torch.tensor([5, 4], dtype=torch.int64)
    policy = torch.tensor([0, 1], dtype=torch.int32)
    base = torch.tensor([0, 5], dtype=torch.int64)
    for want in (False, True):
        yield lambda w=want: check_ids_triton(
            values, offsets, 2, tables, rows, policy, base, new_record("cpu"), 0, w
        )
