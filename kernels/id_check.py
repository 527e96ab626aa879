"""Id range check of a batch, fused: each value's table, its out-of-range policy, and the first bad id kept on the
device (input_dist's first step; embedding.ids.IdChecker is its caller).

One pass instead of a dozen: per value, its table t (from its bag's feature), then

- a negative id is bad under every policy;
- ``ERROR`` tables: an id >= rows[t] is bad;
- ``MODULO`` tables: an id >= rows[t] becomes id % rows[t];
- ``DYNAMIC`` tables: any non-negative id is a key.

A bad id reads as 0, so nothing downstream indexes out of bounds, and the first bad value of the batch (its
position) is kept in ``record``; ``record`` then keeps the first bad value of the first batch that had one, until
the caller reads and clears it. Reading it is the caller's host sync: in training only at log steps.
"""

import torch

from kernels.dispatch import by_device

ERROR, MODULO, DYNAMIC = 0, 1, 2  # table policies
NO_BAD = 2**62  # record[0] when no bad value is pending: above every position


def new_record(device) -> torch.Tensor:
    """int64 [5]: scratch first-bad position (NO_BAD between calls), then flag, batch << 32 | bag, id of the
    first bad id kept (flag 0: none), then a scratch ticket counter (0 between calls: the Triton check's
    programs count themselves in it, the last one keeps the id)."""
    return torch.tensor([NO_BAD, 0, 0, 0, 0], dtype=torch.int64, device=device)


def check_ids_reference(
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
    n = values.numel()
    lengths = offsets[1:] - offsets[:-1]
    bag_table = feature_table.repeat_interleave(batch_size)
    value_table = bag_table.repeat_interleave(lengths, output_size=n)
    rows, policy = table_rows[value_table], table_policy[value_table]
    over = values >= rows
    bad = (values < 0) | ((policy == ERROR) & over)
    checked = torch.where(
        (policy == MODULO) & over & (values >= 0), values % rows.clamp(min=1), values
    )
    checked = torch.where(bad, 0, checked)
    if n and bool(bad.any()) and int(record[1]) == 0:
        i = int(bad.to(torch.uint8).argmax())
        bag = int(torch.searchsorted(offsets, torch.tensor(i), right=True)) - 1
        record[1:4] = torch.tensor([1, (batch << 32) | bag, int(values[i])])
    return checked + base[value_table], (value_table if want_table else None)


def check_ids(
    values: torch.Tensor,
    offsets: torch.Tensor,
    batch_size: int,
    feature_table: torch.Tensor,
    table_rows: torch.Tensor,
    table_policy: torch.Tensor,
    base: torch.Tensor,
    record: torch.Tensor,
    batch: int,
    want_table: bool = False,
):
    """Check a batch's ids against their tables; no host sync.

    Args:
        values: int64 [N] ids, grouped by bag, bags feature-major (f * B + b).
        offsets: int64 [F*B+1] bag boundaries.
        batch_size: B.
        feature_table: int64 [F] table of each feature.
        table_rows: int64 [T] rows of each table (dynamic tables: any).
        table_policy: int32 [T] ERROR, MODULO or DYNAMIC.
        base: int64 [T] added to each checked id (a table's first row or key; zeros for the ids themselves).
        record: int64 [5] from new_record, updated in place (module docstring).
        batch: this batch's number, kept with its first bad id (< 2^31).
        want_table: also return each value's table.
    Returns:
        (int64 [N] checked id + base[table], int64 [N] table of each value or None).
    """
    run = by_device(
        values, reference=check_ids_reference, triton="id_check_triton.check_ids_triton"
    )
    return run(
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
    )
