r"""The bigram language model two ways: by counting pairs, and as a table of logits trained by
gradient descent. Both estimate $p(x_{t+1} \mid x_t)$ and nothing else.

Introduced in {doc}`/book/part10/04-baselines`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmbook.baselines._common import check_positive, check_unpadded, config_dict, lm_output
from llmbook.data.batching import as_ids
from llmbook.model.gpt import GPTOutput


def bigram_counts(ids, vocab_size: int) -> torch.Tensor:
    """Count how often each token follows each other token in a stream.

    :param ids: 1-D token stream (a tensor or a sequence of ints).
    :param vocab_size: V; every id must be below it.
    :returns: ``(V, V)`` int64 counts, ``counts[a, b]`` = how often ``b`` directly follows ``a``.
    :raises ValueError: when an id is outside ``[0, vocab_size)``.

    Introduced in {doc}`/book/part10/04-baselines`.
    """
    ids = as_ids(ids)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(
            f"ids: every id must be in [0, {vocab_size}), got {ids.min()}..{ids.max()}"
        )
    pairs = ids[:-1] * vocab_size + ids[1:]  # one integer per (previous, next) pair
    return torch.bincount(pairs, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


def smoothed_log_probs(counts: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    r"""Turn pair counts into conditional log-probabilities with add-$\alpha$ smoothing:

    $$\log p(b \mid a) = \log \frac{c_{ab} + \alpha}{\sum_{b'} c_{ab'} + V\alpha}$$

    $\alpha = 1$ is Laplace's rule; $\alpha \to 0$ gives the maximum-likelihood estimate, which is
    $-\infty$ for every pair the training text never showed.

    :param counts: ``(V, V)`` counts from :func:`bigram_counts`.
    :param alpha: pseudo-count added to every pair; must be finite and >= 0.
    :returns: ``(V, V)`` float32 log-probabilities; each row sums to 1 after ``exp``.
    :raises ValueError: for a negative or non-finite ``alpha``.

    Introduced in {doc}`/book/part10/04-baselines`.
    """
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha < float("inf")):
        raise ValueError(f"alpha: must be a finite number >= 0, got {alpha!r}")
    counts = counts.double() + alpha
    return (counts.log() - counts.sum(-1, keepdim=True).log()).float()


@dataclass(kw_only=True)
class BigramConfig:
    """Shape of a bigram model.

    Introduced in {doc}`/book/part10/04-baselines`.
    """

    vocab_size: int = 256
    """Number of token ids (V); the table is V x V."""
    block_size: int = 64
    """Window length the training loop cuts (the model itself looks one token back, whatever T)."""

    def __post_init__(self) -> None:
        check_positive(self, ("vocab_size", "block_size"))

    def to_dict(self) -> dict:
        """The config as a dict.

        :returns: its fields.
        """
        return config_dict(self)


class BigramLM(nn.Module):
    """A table of next-token logits, one row per current token: ``logits = table[idx]``.

    Trained by gradient descent on the cross-entropy, ``softmax(table[a])`` tends to the empirical
    distribution of what follows ``a``: the counting model's answer without the smoothing.

    :param config: the :class:`BigramConfig`.

    Introduced in {doc}`/book/part10/04-baselines`.
    """

    def __init__(self, config: BigramConfig) -> None:
        super().__init__()
        self.config = config
        V = config.vocab_size
        self.table = nn.Parameter(torch.zeros(V, V))  # uniform start: every row predicts 1/V

    @classmethod
    def from_counts(cls, counts: torch.Tensor, *, alpha: float = 1.0, block_size: int = 64):
        """The counting model as a module: the table holds the smoothed log-probabilities.

        :param counts: ``(V, V)`` counts from :func:`bigram_counts`.
        :param alpha: add-alpha smoothing (see :func:`smoothed_log_probs`).
        :param block_size: the config's window length.
        :returns: a :class:`BigramLM` whose softmax rows are the smoothed estimates.
        """
        model = cls(BigramConfig(vocab_size=counts.size(0), block_size=block_size))
        with torch.no_grad():
            model.table.copy_(smoothed_log_probs(counts, alpha))
        return model

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        ignore_index: int = -100,
    ) -> GPTOutput:
        """Next-token logits from the current token alone.

        :param idx: token ids ``(B, T)``.
        :param targets: the next ids ``(B, T)``, or None.
        :param attention_mask: accepted so that :func:`~llmbook.generate.generation.generate` can
            sample from the model (``use_cache=False``); it must mark every position real.
        :param ignore_index: target value left out of the loss.
        :returns: a :class:`~llmbook.model.gpt.GPTOutput` with logits ``(B, T, V)``.
        """
        check_unpadded(attention_mask, "a bigram model")
        return lm_output(self.table[idx], targets, ignore_index)  # (B, T, V)
