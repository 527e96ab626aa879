"""bench/bench_preprocess.py: its generated TSV is valid Criteo data, and a small run records every point."""

import json

import numpy as np

from bench import bench_preprocess
from pipeline.criteo import PreprocessOptions, preprocess
from tests.support.criteo_reference import reference


def test_generated_lines_parse_like_the_reference(tmp_path):
    path = bench_preprocess.generate(tmp_path / "g.tsv", 3000, seed=1, progress=False)
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and len(lines) == 3001
    lines = lines[:-1]
    meta = preprocess(
        [path], tmp_path / "out", PreprocessOptions(hash_rows=[1000], workers=1, progress=False)
    )
    assert meta["num_rows"] == 3000 and meta["bad_lines"]["count"] == 0
    dense, sparse, labels, _ = reference(lines, hash_rows=1000)
    np.testing.assert_array_equal(
        np.fromfile(tmp_path / "out" / "sparse.bin", dtype=np.int32).reshape(-1, 26), sparse
    )
    np.testing.assert_array_equal(
        np.fromfile(tmp_path / "out" / "dense.bin", dtype=np.float32).reshape(-1, 13), dense
    )
    assert 0.15 < labels.mean() < 0.4
    fields = [line.split("\t") for line in lines]
    assert any(f[2].startswith("-") for f in fields)  # negative I2, as in Criteo
    assert all(f[1] for f in fields) and any(not f[13] for f in fields)  # I1 never empty, I13 often
    assert (
        bench_preprocess.generate(tmp_path / "again.tsv", 3000, seed=1, progress=False).read_bytes()
        == path.read_bytes()
    )
    assert (
        bench_preprocess.generate(tmp_path / "other.tsv", 3000, seed=2, progress=False).read_bytes()
        != path.read_bytes()
    )


def test_small_run_appends_one_line_per_point(tmp_path, capsys):
    results = tmp_path / "preprocess.jsonl"
    assert (
        bench_preprocess.main(
            [
                "--rows",
                "2000",
                "--workers",
                "1,2",
                "--modes",
                "hash",
                "--gzip",
                "--dir",
                str(tmp_path),
                "--results",
                str(results),
                "--chunk-rows",
                "300",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["input"], r["workers"]) for r in rows] == [
        ("plain", 1),
        ("plain", 2),
        ("gzip", 1),
        ("gzip", 2),
    ]
    for r in rows:
        assert (
            r["rows"] == 2000 and r["mode"] == "hash" and r["chunk_rows"] == 300 and r["cores"] >= 1
        )
        assert (
            r["rows_per_s"] == round(2000 / r["seconds"])
            and r["commit"]
            and r["date"]
            and "cpu" in r["device"]
        )
        assert r["own_cpu_s"] > 0 and r["other_cpu_s"] >= 0 and len(r["all_seconds"]) == 1
    assert rows[0]["speedup_vs_1"] == 1.0
    table = capsys.readouterr().out
    assert "preprocess, 2,000 rows" in table and "speed-up" in table
