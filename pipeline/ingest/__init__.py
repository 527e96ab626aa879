"""``python -m pipeline.ingest``: Parquet or CSV files with a schema -> a dataset with jagged features.

Imports no torch, so the converter and its worker processes start quickly.
"""

from pipeline.ingest.columns import IngestError
from pipeline.ingest.convert import IngestOptions, ingest
from pipeline.ingest.schema import Schema, SchemaError, load_schema

__all__ = ["IngestError", "IngestOptions", "Schema", "SchemaError", "ingest", "load_schema"]
