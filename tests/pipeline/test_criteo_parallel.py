"""--workers N gives the same dataset, byte for byte, as one worker; errors keep their true line and offset."""

import gzip
import json
import multiprocessing
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from pipeline import criteo
from pipeline.criteo import CriteoFormatError, PreprocessOptions, convert, preprocess
from pipeline.criteo import pool as pool_module
from pipeline.criteo.pool import ProcessPool, WorkerDied
from pipeline.criteo.work import iter_tasks
from tests.support.criteo_reference import make_lines, reference, write_tsv

CHUNK = 16  # lines per piece: every input below is cut into many pieces


def _snapshot(out):
    """Every file of a dataset (vocab/ included) by relative path; meta.json without its timing and worker count."""
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(out))] = path.read_bytes()
    meta = json.loads(files.pop("meta.json"))
    assert meta.pop("workers") >= 1 and meta.pop("seconds") >= 0
    return files, meta


def _run(paths, out, workers, **options):
    meta = preprocess(
        paths, out, PreprocessOptions(chunk_rows=CHUNK, workers=workers, progress=False, **options)
    )
    assert meta["workers"] == workers
    return _snapshot(out)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """300 lines over a plain file (many pieces), a file without final newline and a gzip file, plus 2 bad lines."""
    tmp = tmp_path_factory.mktemp("inputs")
    lines = make_lines(300, seed=5)
    lines[37] = "1\tnot\ta\tcriteo\tline"
    lines[230] = lines[230].replace("\t", "\t1.5", 1)
    return [
        write_tsv(tmp / "day_0", lines[:150]),
        write_tsv(tmp / "day_1", lines[150:200], final_newline=False),
        write_tsv(tmp / "day_2.gz", lines[200:], gz=True),
    ], lines


@pytest.fixture(params=["forkserver", "fork"])
def start_method(request, monkeypatch):
    """Both ways the workers can start (the command line forks; a process with threads uses the forkserver)."""
    monkeypatch.setattr(pool_module, "start_method", lambda: request.param)
    return request.param


@pytest.mark.parametrize("mode", ["hash", "min_freq", "vocab"])
def test_workers_give_identical_output(tmp_path, inputs, mode):
    paths, lines = inputs
    options = {"hash": {"hash_rows": [997]}, "min_freq": {"min_freq": 2}, "vocab": {}}[mode]
    if mode == "vocab":  # through a vocabulary built (by one worker) from the first 200 lines
        preprocess(
            paths[:2],
            tmp_path / "base",
            PreprocessOptions(min_freq=2, skip_bad_lines=True, workers=1, progress=False),
        )
        options = {"vocab": str(tmp_path / "base")}
    results = [
        _run(paths, tmp_path / f"w{w}", w, skip_bad_lines=True, **options) for w in (1, 2, 3)
    ]
    files, meta = results[0]
    assert sorted(files)[:3] == ["dense.bin", "labels.bin", "sparse.bin"]
    assert (len(files) == 3 + 27) == (mode != "hash")  # vocab/C1..C26.npy + vocab.json
    for other in results[1:]:
        assert other[0].keys() == files.keys()
        for name in files:
            assert other[0][name] == files[name], name
        assert other[1] == meta
    # and one worker is still right: against the line-by-line reference without the two bad lines
    good = [line for i, line in enumerate(lines) if i not in (37, 230)]
    assert meta["num_rows"] == 298 and meta["bad_lines"]["count"] == 2
    assert [s["bad_lines"] for s in meta["sources"]] == [1, 0, 1]
    assert (
        "day_0:38 " in meta["bad_lines"]["examples"][0]
        and "day_2.gz:31 " in meta["bad_lines"]["examples"][1]
    )
    if mode != "vocab":
        _, sparse, _, _ = (
            reference(good, hash_rows=997) if mode == "hash" else reference(good, min_freq=2)
        )
        np.testing.assert_array_equal(
            np.frombuffer(files["sparse.bin"], dtype=np.int32).reshape(-1, 26), sparse
        )


def _offset(lines, index):
    return sum(len(line) + 1 for line in lines[:index])


@pytest.mark.parametrize("gz", [False, True])
def test_bad_line_far_into_a_file_names_its_true_line_and_offset(tmp_path, gz):
    lines = make_lines(400, seed=6)
    fields = lines[311].split("\t")
    fields[39] = "0000xyz0"  # C26 of line 312
    lines[311] = "\t".join(fields)
    # a later bad line, possibly found first by another worker: not the one reported
    lines[350] = "0"
    path = write_tsv(tmp_path / ("big.gz" if gz else "big.tsv"), lines, gz=gz)
    first = write_tsv(tmp_path / "first.tsv", make_lines(40, seed=7))
    name = path.name.replace(".", r"\.")
    for workers in (1, 3):
        with pytest.raises(
            CriteoFormatError,
            match=rf"{name}:312 \(byte offset {_offset(lines, 311)}\): C26 is b'0000xyz0'",
        ):
            preprocess(
                [first, path],
                tmp_path / "out",
                PreprocessOptions(hash_rows=[10], chunk_rows=8, workers=workers, progress=False),
            )
        assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    assert not multiprocessing.active_children()


def test_irregular_inputs(tmp_path):
    lines = make_lines(3, seed=8)
    empty = write_tsv(tmp_path / "empty", [], final_newline=False)
    empty_gz = write_tsv(tmp_path / "empty.gz", [], final_newline=False, gz=True)
    assert empty.stat().st_size == 0
    paths = [
        empty,
        write_tsv(tmp_path / "three", lines, final_newline=False),
        empty_gz,
        write_tsv(tmp_path / "one.gz", lines[:1], final_newline=False, gz=True),
    ]
    one = preprocess(
        paths,
        tmp_path / "w1",
        PreprocessOptions(hash_rows=[50], chunk_rows=1, workers=1, progress=False),
    )
    assert one["num_rows"] == 4 and [s["lines"] for s in one["sources"]] == [0, 3, 0, 1]
    base = _snapshot(tmp_path / "w1")
    # more workers than lines and than pieces
    many = preprocess(
        paths,
        tmp_path / "w5",
        PreprocessOptions(hash_rows=[50], chunk_rows=1, workers=5, progress=False),
    )
    assert many["workers"] == 5 and _snapshot(tmp_path / "w5") == base
    # an input without any row is refused, naming its files; nothing is written
    for opts in (PreprocessOptions(min_freq=1), PreprocessOptions(hash_rows=[5])):
        with pytest.raises(
            CriteoFormatError,
            match=rf"^no rows in the input: {empty}, {empty_gz} have no data lines; a dataset needs",
        ):
            preprocess(
                [empty, empty_gz], tmp_path / "none", replace(opts, workers=3, progress=False)
            )
        assert not (tmp_path / "none").exists() and not (tmp_path / ".none.partial").exists()


def test_pieces_cover_the_input_at_line_starts(tmp_path):
    lines = make_lines(200, seed=9)
    plain = write_tsv(tmp_path / "a.tsv", lines, final_newline=False)
    packed = write_tsv(tmp_path / "b.gz", lines, gz=True)
    text = plain.read_bytes()
    tasks = list(iter_tasks([plain, packed], chunk_rows=7))
    ranges = [(t.start, t.end) for t in tasks if t.source == 0]
    assert len(ranges) > 20 and ranges[0][0] == 0 and ranges[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert all(text[start - 1 : start] == b"\n" for start, _ in ranges[1:])
    assert [t.final for t in tasks if t.source == 0].count(True) == 1
    packed_tasks = [t for t in tasks if t.source == 1]
    assert b"".join(t.data for t in packed_tasks) == gzip.decompress(packed.read_bytes())
    assert all(t.data.endswith(b"\n") for t in packed_tasks)
    assert sum(t.progress for t in tasks) == plain.stat().st_size + packed.stat().st_size


def test_interrupted_parallel_run_leaves_nothing(tmp_path, monkeypatch):
    path = write_tsv(tmp_path / "x.tsv", make_lines(200, seed=10))
    writes = []

    def interrupt(self, array):
        writes.append(1)
        if len(writes) == 4:  # in the middle: workers are busy with later pieces
            raise KeyboardInterrupt

    monkeypatch.setattr(convert._BinaryFileWriter, "write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        preprocess(
            [path],
            tmp_path / "out",
            PreprocessOptions(hash_rows=[10], chunk_rows=10, workers=2, progress=False),
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    assert not multiprocessing.active_children()  # the workers were stopped, not left running


def _fail(job, arg):
    if arg == 2:
        raise ValueError(f"item {arg} of {job}")
    if arg == "exit":
        os._exit(3)
    return arg * 10


def test_fork_path_gives_identical_output(tmp_path, inputs, start_method):
    paths, _ = inputs
    one = _run(paths, tmp_path / "w1", 1, min_freq=2, skip_bad_lines=True)
    assert _run(paths, tmp_path / "w2", 2, min_freq=2, skip_bad_lines=True) == one


def test_pool_reports_worker_errors_and_deaths(start_method):
    with ProcessPool(2) as pool:
        assert pool.start_method == start_method
        assert pool.broadcast(_fail, "job") == [0, 10]  # worker i gets i
        # in input order
        assert list(pool.imap(_fail, "job", [4, 1, 3, 0, 5], window=2)) == [40, 10, 30, 0, 50]
        # raised in the parent, with the worker's message
        with pytest.raises(ValueError, match="item 2 of job"):
            list(pool.imap(_fail, "job", range(5), window=3))
    with pytest.raises(WorkerDied, match="exit code 3"):
        with ProcessPool(2) as pool:
            list(pool.imap(_fail, "job", [1, "exit", 3], window=2))
    assert not multiprocessing.active_children()


def test_start_method_forks_only_a_single_threaded_process():
    code = (
        "import os, threading, time; os.environ['OPENBLAS_NUM_THREADS'] = '1'; import numpy; "
        "from pipeline.criteo.pool import start_method; print(start_method()); "
        "threading.Thread(target=time.sleep, args=(0.1,)).start(); print(start_method())"
    )
    from tests.support.paths import ROOT as root

    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["fork", "forkserver"]


def test_cli_workers(tmp_path, capsys):
    path = write_tsv(tmp_path / "d0", make_lines(30, seed=11))
    assert (
        criteo.main(
            [
                "preprocess",
                str(path),
                "--out",
                str(tmp_path / "out"),
                "--hash-rows",
                "9",
                "--workers",
                "2",
                "--chunk-rows",
                "4",
            ]
        )
        == 0
    )
    assert "rows/s, 2 workers)" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["workers"] == 2
    assert (
        criteo.main(
            [
                "preprocess",
                str(path),
                "--out",
                str(tmp_path / "o2"),
                "--hash-rows",
                "9",
                "--workers",
                "0",
            ]
        )
        == 1
    )
    assert "workers and chunk_rows must be >= 1" in capsys.readouterr().err


def test_gzip_members_and_truncation(tmp_path, capsys):
    lines = make_lines(60, seed=12)
    first, second = (
        gzip.compress(("\n".join(part) + "\n").encode()) for part in (lines[:25], lines[25:])
    )
    # concatenated members, as `cat a.gz b.gz` makes
    (tmp_path / "two.gz").write_bytes(first + second)
    meta = preprocess(
        [tmp_path / "two.gz"],
        tmp_path / "out",
        PreprocessOptions(hash_rows=[10], chunk_rows=4, workers=2, progress=False),
    )
    assert meta["num_rows"] == 60
    (tmp_path / "cut.gz").write_bytes((first + second)[:-30])
    assert (
        criteo.main(
            [
                "preprocess",
                str(tmp_path / "cut.gz"),
                "--out",
                str(tmp_path / "o2"),
                "--hash-rows",
                "9",
                "--workers",
                "2",
            ]
        )
        == 1
    )
    assert (
        "cut.gz: the gzip data ends before its end marker (truncated file?)"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "o2").exists() and not (tmp_path / ".o2.partial").exists()
