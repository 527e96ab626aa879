"""Offline Criteo preprocessing: TSV (plain or gzip) -> the binary dataset that pipeline.dataset reads.

    python -m pipeline.criteo preprocess day_0.gz ... --out DIR (--hash-rows N | --min-freq T | --vocab D) [--workers N]

Modules: convert (options, the passes, output files, meta.json), work (cutting the input into pieces
and what a worker does with one), pool (the worker processes), parse (vectorized TSV parsing),
vocab (frequency-threshold vocabularies), cli (the command line). The runtime data path
(pipeline.dataset and friends) does not import this package.

The public names are imported on first use, so that a worker process, which needs only work.py,
parse.py and vocab.py, starts without importing the rest (it starts once per worker per run).
"""

_EXPORTS = {
    "main": "pipeline.criteo.cli",
    "FORMAT_NAME": "pipeline.criteo.convert",
    "FORMAT_VERSION": "pipeline.criteo.convert",
    "CriteoFormatError": "pipeline.criteo.convert",
    "PreprocessOptions": "pipeline.criteo.convert",
    "preprocess": "pipeline.criteo.convert",
    "Vocabulary": "pipeline.criteo.vocab",
    "VocabularyError": "pipeline.criteo.vocab",
    "load_vocabulary": "pipeline.criteo.vocab",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline.criteo' has no attribute {name!r}")
