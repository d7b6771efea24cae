"""Language models from before the transformer, trained through the same loop: a bigram table (by
counting and by gradient descent), a Bengio-style n-gram MLP, and a GRU language model.

Each model is called as ``model(idx, targets)`` and returns a :class:`~llmbook.model.gpt.GPTOutput`,
and each config has ``block_size`` and ``to_dict()``, so :func:`~llmbook.train.loop.train` and
:func:`~llmbook.train.evaluate.evaluate` take them unchanged.

Introduced in {doc}`/book/part10/04-baselines`.
"""

from llmbook.baselines.bigram import BigramConfig, BigramLM, bigram_counts, smoothed_log_probs
from llmbook.baselines.gru import GRU, GRULM, GRUConfig, gru_cell
from llmbook.baselines.ngram_mlp import NGramMLP, NGramMLPConfig, context_windows

__all__ = [
    "GRU",
    "GRU_IMPLS",
    "GRULM",
    "BigramConfig",
    "BigramLM",
    "GRUConfig",
    "NGramMLP",
    "NGramMLPConfig",
    "bigram_counts",
    "context_windows",
    "gru_cell",
    "smoothed_log_probs",
]
