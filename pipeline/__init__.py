"""Data: the Batch type, synthetic and binary-dataset sources, prefetching, the train pipeline.

The offline Criteo preprocessing lives in the pipeline.criteo subpackage. Batch and KeyedJagged are
imported on first use so that ``python -m pipeline.criteo`` and its worker processes do not pay for
importing torch (about 2.5 s on the 2-core CI machine).
"""

__all__ = ["Batch", "KeyedJagged"]


def __getattr__(name: str):
    if name in __all__:
        from pipeline import batch

        return getattr(batch, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
