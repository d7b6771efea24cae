"""Corpora and batching.

Introduced in {doc}`/book/part2/02-batching`.
"""

from llmbook.data.batching import (
    IGNORE_INDEX,
    eval_batches,
    random_batch,
    to_hf_dataset,
    train_val_split,
)
from llmbook.data.corpora import (
    CORPORA,
    ChecksumError,
    Corpus,
    load_corpus,
    load_tinyshakespeare,
    load_wikitext2,
    on_real_corpus,
)

__all__ = [
    "CORPORA",
    "IGNORE_INDEX",
    "ChecksumError",
    "Corpus",
    "eval_batches",
    "load_corpus",
    "load_tinyshakespeare",
    "load_wikitext2",
    "on_real_corpus",
    "random_batch",
    "to_hf_dataset",
    "train_val_split",
]
