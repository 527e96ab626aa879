"""Data: the Batch type, synthetic and Criteo sources, prefetching, the train pipeline."""

from pipeline.batch import Batch, KeyedJagged

__all__ = ["Batch", "KeyedJagged"]
