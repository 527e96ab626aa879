"""Command line of the Criteo preprocessing: ``python -m pipeline.criteo preprocess ...``
(pipeline/criteo/convert.py does the work)."""

from __future__ import annotations

import argparse
import sys

from pipeline.criteo.convert import CriteoFormatError, PreprocessOptions, preprocess
from pipeline.criteo.convert import __doc__ as _convert_doc


def _int_list(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.criteo", description=_convert_doc.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser(
        "preprocess", help="convert Criteo TSV (.gz accepted) into a binary dataset"
    )
    pre.add_argument(
        "inputs", nargs="+", help="TSV files in order (e.g. day_0 ... day_23, or Kaggle train.txt)"
    )
    pre.add_argument(
        "--out", required=True, help="output directory (created; must not exist unless --overwrite)"
    )
    ids = pre.add_mutually_exclusive_group(required=True)
    ids.add_argument(
        "--hash-rows",
        type=_int_list,
        help="hash ids into N rows per table (or 26 comma-separated sizes)",
    )
    ids.add_argument(
        "--min-freq",
        type=int,
        help="vocabulary of values seen >= T times; the rest share row 0 (saved in OUT/vocab)",
    )
    ids.add_argument(
        "--vocab",
        metavar="DIR_OR_DATASET",
        help="map through the vocabulary saved by an earlier "
        "--min-freq run (its dataset directory or vocab/ directory); unknown values share row 0",
    )
    pre.add_argument(
        "--skip-bad-lines", action="store_true", help="skip malformed lines (counted in meta.json)"
    )
    pre.add_argument(
        "--chunk-rows",
        type=int,
        default=PreprocessOptions.chunk_rows,
        help="lines per piece of work (a worker parses one piece at once)",
    )
    pre.add_argument("--id-dtype", choices=["int32", "int64"], default="int32")
    pre.add_argument("--label-dtype", choices=["float32", "uint8"], default="float32")
    days = pre.add_mutually_exclusive_group()
    days.add_argument(
        "--days", type=int, default=0, help="record the rows as N equal days (Kaggle: 7)"
    )
    days.add_argument(
        "--files-are-days", action="store_true", help="each input file is one day (Criteo 1TB)"
    )
    pre.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parsing processes (default: all cores, "
        "os.cpu_count(); 1: no extra process); the output does not depend on it",
    )
    pre.add_argument(
        "--overwrite", action="store_true", help="replace an existing output directory"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = PreprocessOptions(
        hash_rows=args.hash_rows,
        min_freq=args.min_freq,
        vocab=args.vocab,
        skip_bad_lines=args.skip_bad_lines,
        chunk_rows=args.chunk_rows,
        id_dtype=args.id_dtype,
        label_dtype=args.label_dtype,
        days=args.days,
        files_are_days=args.files_are_days,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    try:
        meta = preprocess(args.inputs, args.out, opts)
    except (CriteoFormatError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rate = meta["num_rows"] / max(meta["seconds"], 1e-9)
    print(
        f"wrote {meta['num_rows']} rows to {args.out} in {meta['seconds']:.1f} s ({rate:,.0f} rows/s, "
        f"{meta['workers']} workers); "
        f"{meta['bad_lines']['count']} bad lines skipped; table rows {meta['table_rows']}"
    )
    return 0
