"""kernels.id_check: the fused id range check, Triton (interpreter) against the torch reference."""

import os

import pytest
import torch

from kernels.id_check import DYNAMIC, ERROR, MODULO, check_ids_reference, new_record
from tests.support.kernels import DEVICE, needs_triton, on
from training.launch_census import LaunchCensus

pytestmark = needs_triton


def _batch(seed: int, batch_size: int, num_features: int, max_len: int, bad: float):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (num_features * batch_size,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    values = torch.randint(0, 40, (int(offsets[-1]),), generator=gen)
    flip = torch.rand(values.numel(), generator=gen) < bad
    values = torch.where(flip, -values - 1, values)  # some negative ids
    return values, offsets


TABLES = {  # feature -> table; tables: rows, policy
    "feature_table": torch.tensor([0, 1, 2, 1, 3]),
    "table_rows": torch.tensor([50, 17, 30, 0]),
    "table_policy": torch.tensor([ERROR, MODULO, ERROR, DYNAMIC], dtype=torch.int32),
    "base": torch.tensor([0, 50, 67, 97]),
}


def _run(fn, values, offsets, batch_size, record, batch, want_table):
    t = {k: v.to(values.device) for k, v in TABLES.items()}
    return fn(
        values,
        offsets,
        batch_size,
        t["feature_table"],
        t["table_rows"],
        t["table_policy"],
        t["base"],
        record,
        batch,
        want_table,
    )


@pytest.mark.parametrize(
    "batch_size,max_len,bad", [(1, 1, 0.0), (7, 3, 0.0), (33, 4, 0.02), (300, 1, 0.001)]
)
@pytest.mark.parametrize("want_table", [False, True])
def test_triton_matches_reference(batch_size, max_len, bad, want_table):
    from kernels.id_check_triton import check_ids_triton

    ref_record, tri_record = new_record("cpu"), new_record(DEVICE)
    for batch in range(3):  # the record keeps the first batch's first bad id
        values, offsets = _batch(batch * 10 + batch_size, batch_size, 5, max_len, bad)
        ref = _run(check_ids_reference, values, offsets, batch_size, ref_record, batch, want_table)
        tri = _run(
            check_ids_triton, *on(values, offsets), batch_size, tri_record, batch, want_table
        )
        assert torch.equal(ref[0], tri[0].cpu())
        if want_table:
            assert torch.equal(ref[1], tri[1].cpu())
        assert torch.equal(ref_record, tri_record.cpu()), (ref_record, tri_record)


def test_record_names_the_first_bad_value_and_policies_apply():
    from kernels.id_check_triton import check_ids_triton

    # B = 2; features 0..4; bags f*2+b
    lists = [[3], [49, 50], [20], [], [5, 40], [31, 1], [16, 17], [7], [10**12], [0]]
    offsets = torch.tensor([0] + [len(x) for x in lists]).cumsum(0)
    values = torch.tensor([v for x in lists for v in x])
    record = new_record(DEVICE)
    out, table = _run(check_ids_triton, *on(values, offsets), 2, record, 5, True)
    out, table = out.cpu(), table.cpu()
    # table 0 (error, 50 rows): 50 is bad -> 0; table 1 (modulo 17, features 1 and 3): 20 -> 3,
    # 17 -> 0; table 2 (error, 30 rows): 40 and 31 bad -> 0; table 3 dynamic: any id
    checked = [3, 49, 0, 3, 5, 0, 0, 1, 16, 0, 7, 10**12, 0]
    assert (out - TABLES["base"][table]).tolist() == checked
    first_bad = 2  # value 50 of bag 1 (feature 0, sample 1)
    assert record.tolist() == [2**62, 1, (5 << 32) | 1, 50, 0]
    assert values[first_bad] == 50


def test_many_programs_keep_the_first_bad_value_of_the_first_bad_batch():
    """Bad ids in several programs' bags, over several batches: the last program to finish keeps the
    minimum position's bag and id, and leaves the scratch slots ready for the next batch."""
    from kernels.id_check_triton import BAGS, check_ids_triton

    batch_size, num_features = 200, 5  # 1000 bags: 8 programs
    lengths = torch.full((num_features * batch_size,), 2, dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    clean = torch.zeros(int(offsets[-1]), dtype=torch.int64)
    bad_bags = [7 * BAGS + 3, 2 * BAGS + 5, 5 * BAGS]  # programs 7, 2 and 5
    dirty = clean.clone()
    for k, bag in enumerate(bad_bags):
        dirty[offsets[bag] + 1] = -(k + 1)
    ref_record, tri_record = new_record("cpu"), new_record(DEVICE)
    for batch, values in enumerate([clean, dirty, clean, dirty]):
        _run(check_ids_reference, values, offsets, batch_size, ref_record, batch, False)
        _run(check_ids_triton, *on(values, offsets), batch_size, tri_record, batch, False)
        got = tri_record.tolist()
        assert got == ref_record.tolist(), batch
        assert got[0] == 2**62 and got[4] == 0  # ready for the next batch
    # batch 1's bad id at the lowest position: program 2's bag, id -2
    assert got[1:4] == [1, (1 << 32) | (2 * BAGS + 5), -2]


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="the census counts interpreted launches"
)
def test_one_launch_per_batch():
    from kernels.id_check_triton import check_ids_triton

    values, offsets = _batch(3, 300, 5, 3, 0.01)  # 1500 bags: several programs, bad ids
    with LaunchCensus() as census:
        _run(check_ids_triton, values, offsets, 300, new_record("cpu"), 0, True)
    triton_sites = [s for s in census.sites if " triton." in s]
    assert [census.sites[s] for s in triton_sites] == [1], dict(census.sites)
