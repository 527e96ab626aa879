"""bench/ingest_throughput.py --quick: the converter at 1 and 2 workers and the reader, one result line each."""

import json

from bench import ingest_throughput


def test_quick_run_records_converter_and_reader(tmp_path, capsys):
    results = tmp_path / "ingest.jsonl"
    argv = ["--quick", "--workers", "1,2", "--dir", str(tmp_path), "--results", str(results)]
    assert ingest_throughput.main(argv) == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["part"], r.get("workers")) for r in lines] == [
        ("convert", 1),
        ("convert", 2),
        ("reader", None),
    ]
    for r in lines[:2]:
        assert r["rows"] == 5000 and r["rows_per_s"] > 0 and r["same_bytes_as_one_worker"]
    reader = lines[2]
    assert reader["batch"] == 1024 and reader["batches"] == 4 and reader["features"] == 26
    assert 7.5 < reader["mean_bag"] < 8.5 and reader["gb_per_s"] > 0
    assert all(r["cores"] >= 1 and r["commit"] for r in lines)
    assert capsys.readouterr().out.count("\n") == 3
