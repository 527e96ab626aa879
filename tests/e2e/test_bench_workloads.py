"""What the benchmarks read and count: Zipf ids over a shard-sized table, byte models, and the local-work
arithmetic of bench/local_work.py."""

import math

import pytest
import torch

from bench import local_work
from bench._common import Report
from bench.shapes import DLRM_HOT, SIZES, ZIPF_EXPONENT, make_batch, scatter_rows, shard_rows
from training.stages import STAGES

CPU = torch.device("cpu")


def test_dlrm_shape_is_one_ranks_mlperf_step_on_one_owners_shard():
    rows = shard_rows("dlrm")
    assert sum(SIZES["dlrm"]["rows"]) == 204_184_588 and sum(rows) == 25_523_083
    assert SIZES["dlrm"]["batch"] * SIZES["dlrm"]["world"] == 65536
    batch = make_batch("dlrm", CPU, shard=True)
    keys, offsets = batch["keys"], batch["offsets"]
    assert keys.numel() == 8192 * sum(DLRM_HOT) == offsets[-1]
    assert int(keys.min()) >= 0 and int(keys.max()) < sum(rows)
    # each table's keys stay inside its shard
    bounds = batch["table_offsets"].tolist()
    for t in range(len(rows)):
        values = keys[offsets[t * 8192] : offsets[(t + 1) * 8192]]
        assert bounds[t] <= int(values.min()) and int(values.max()) < bounds[t + 1]
    # a gather, not a copy: the distinct rows are spread over the 13 GB table, few of them next to another
    # (hot rows scattered; 29% are without scattering, and 100% for arange rows)
    gaps = torch.unique(keys).diff()
    assert float(gaps.double().mean()) > 50 and float((gaps == 1).double().mean()) < 0.15


def test_ids_follow_the_synthetic_datas_zipf_law():
    batch = make_batch("dlrm", CPU, shard=True, scatter=False)
    table = 20  # C21: 100 ids per sample over a 5M-row shard
    start = batch["table_offsets"][table]
    values = batch["keys"][batch["offsets"][table * 8192] : batch["offsets"][(table + 1) * 8192]]
    n, p = shard_rows("dlrm")[table], 1.0 - ZIPF_EXPONENT
    # P(id 0) of pipeline.synthetic.zipf_ids: the inverse CDF maps u < (2^p - 1) / ((n + 1)^p - 1) to 0
    expected = (2**p - 1) / ((n + 1) ** p - 1)
    assert float((values == start).double().mean()) == pytest.approx(expected, rel=0.03)
    # scattering permutes a table's rows: the law of a row's frequency is unchanged
    assert torch.equal(
        torch.sort(scatter_rows(torch.arange(1000), 1000)).values, torch.arange(1000)
    )


def test_small_size_keeps_variable_bags():
    batch = make_batch("small", CPU)
    lengths = batch["offsets"].diff()
    assert int(lengths.min()) == 0 and len(set(lengths.tolist())) > 2


def test_a_row_without_a_byte_model_is_refused():
    report = Report("x", "small", CPU, {"lookup": "8U + 2UDs"})
    report.add("lookup: torch", (2.0, 1.0, 3.0), 4_000_000)
    assert report.rows[0]["gb_per_s"] == pytest.approx(2.0) and report.rows[0]["byte_model"]
    with pytest.raises(KeyError, match="no byte model"):
        report.add("gather: torch", (1.0, 1.0, 1.0), 1)


def _window(steps, stage, comm, calls=None):
    return {
        "steps": steps,
        "stage_ms": {s: stage for s in STAGES},
        "comm_ms": {"grad_dist": comm},
        "calls": calls or {},
        "bytes": {},
    }


def test_local_work_of_a_rank_by_hand():
    probe = {
        "rank": 1,
        "windows": [
            _window(3, 100.0, 50.0),  # warm-up steps 1-3 (a log line inside warm-up)
            _window(2, 100.0, 50.0),  # steps 4-5: the collect at the end of warm-up
            _window(10, 20.0, 10.0, {"grad_dist/all_to_all_single": 20}),
            _window(10, 40.0, 30.0, {"grad_dist/all_to_all_single": 21}),
        ],
    }
    r = local_work.rank_local_work(probe, unmeasured=5)
    assert r["steps"] == 20
    assert r["stage_ms"]["lookup"] == pytest.approx(3.0)  # (20 + 40) / 20
    assert r["local_stage_ms"]["grad_dist"] == pytest.approx(1.0)  # (60 - 40) / 20
    assert r["local_stage_ms"]["lookup"] == pytest.approx(3.0)  # no communication charged there
    assert r["calls"]["grad_dist/all_to_all_single"] == pytest.approx(41 / 20)
    assert math.ceil(r["calls"]["grad_dist/all_to_all_single"]) == 3
    with pytest.raises(ValueError, match="no measured step"):
        local_work.rank_local_work(probe, unmeasured=25)
