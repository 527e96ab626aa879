"""Offline Criteo preprocessing: TSV (plain or gzip) -> the binary dataset that pipeline.dataset reads.

    python -m pipeline.criteo preprocess day_0.gz ... --out DIR (--hash-rows N | --min-freq T | --vocab D)

Modules: convert (options, the two passes, output files, meta.json), parse (vectorized TSV parsing),
vocab (frequency-threshold vocabularies), cli (the command line). The runtime data path
(pipeline.dataset and friends) does not import this package.
"""

from pipeline.criteo.cli import main
from pipeline.criteo.convert import FORMAT_NAME, FORMAT_VERSION, CriteoFormatError, PreprocessOptions, preprocess
from pipeline.criteo.vocab import Vocabulary, VocabularyError, load_vocabulary

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CriteoFormatError", "PreprocessOptions", "Vocabulary", "VocabularyError",
           "load_vocabulary", "main", "preprocess"]
