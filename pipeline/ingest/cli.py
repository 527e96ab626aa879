"""Command line of the converter: ``python -m pipeline.ingest --schema schema.toml --out DIR FILES...``."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.ingest.columns import IngestError
from pipeline.ingest.convert import IngestOptions, ingest
from pipeline.ingest.schema import SchemaError, load_schema


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.ingest",
        description="convert Parquet or CSV files into a dataset with a schema (docs/data.md)",
    )
    parser.add_argument("inputs", nargs="+", help="files, globs or directories, in order")
    parser.add_argument("--schema", required=True, help="the schema TOML file")
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument(
        "--vocab",
        default="",
        metavar="DIR",
        help="map through the vocabularies and statistics of an earlier dataset (e.g. the eval day)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes over row groups and files (same output)"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the per-column work runs: numpy on the CPU, or cupy on the GPU (same output)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        schema = load_schema(args.schema)
        options = IngestOptions(
            vocab=args.vocab, workers=args.workers, overwrite=args.overwrite, device=args.device
        )
        meta = ingest(schema, args.inputs, args.out, options)
    except (IngestError, SchemaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = dict(zip(meta["feature_names"], meta["table_rows"], strict=True))
    print(json.dumps({"out": args.out, "rows": meta["num_rows"], "table_rows": rows}))
    return 0
