"""``python -m pipeline.ingest --schema schema.toml --out DIR FILES...`` (see pipeline/ingest/cli.py)."""

import sys

from pipeline.ingest.cli import main

if __name__ == "__main__":
    sys.exit(main())
