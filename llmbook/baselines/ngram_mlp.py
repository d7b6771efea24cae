r"""A neural n-gram model in the manner of Bengio et al. (2003): the embeddings of the last $n$
tokens, concatenated, go through one hidden layer to the next-token logits.

$$h = \tanh\big(W_1 [e_{x_{t-n+1}}; \dots; e_{x_t}] + b_1\big), \qquad
\text{logits} = W_2 h + b_2$$

Unlike a count table it shares statistics between similar contexts through the embeddings, and its
parameters grow linearly with $n$ rather than as $V^n$; like a count table it cannot see a token
$n$ places back.

Introduced in {doc}`/book/part10/04-baselines`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.baselines._common import check_positive, check_unpadded, config_dict, lm_output
from llmbook.model.gpt import GPTOutput


def context_windows(idx: torch.Tensor, context: int, pad_id: int) -> torch.Tensor:
    """The last ``context`` ids at every position, oldest first, padded on the left.

    :param idx: token ids ``(B, T)``.
    :param context: n, how many ids each position sees (itself included).
    :param pad_id: the id that stands for "before the window".
    :returns: ``(B, T, n)``; ``out[b, t, -1] == idx[b, t]`` and ``out[b, t, -1 - k] == idx[b, t - k]``
        for ``k <= t``, ``pad_id`` before the start.

    Introduced in {doc}`/book/part10/04-baselines`.
    """
    padded = F.pad(idx, (context - 1, 0), value=pad_id)  # (B, T + n - 1)
    return padded.unfold(1, context, 1)  # (B, T, n)


@dataclass(kw_only=True)
class NGramMLPConfig:
    """Shape of an n-gram MLP.

    Introduced in {doc}`/book/part10/04-baselines`.
    """

    vocab_size: int = 256
    """Number of token ids (V)."""
    block_size: int = 64
    """Window length the training loop cuts (the model sees only ``context`` ids of it)."""
    context: int = 4
    """n: how many of the latest ids predict the next one."""
    n_embd: int = 64
    """Width of each token's embedding (C)."""
    hidden: int = 512
    """Width of the hidden tanh layer."""

    def __post_init__(self) -> None:
        check_positive(self, ("vocab_size", "block_size", "context", "n_embd", "hidden"))

    def to_dict(self) -> dict:
        """The config as a dict.

        :returns: its fields.
        """
        return config_dict(self)


class NGramMLP(nn.Module):
    """Embeddings of the last ``context`` tokens, concatenated, through a tanh layer to the logits.

    The embedding table has one extra row, id ``vocab_size``, for the positions before the window's
    start, so the first tokens of a window are predicted from a shorter, padded context.

    :param config: the :class:`NGramMLPConfig`.

    Introduced in {doc}`/book/part10/04-baselines`.
    """

    def __init__(self, config: NGramMLPConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size + 1, config.n_embd)  # + the padding id
        self.hidden = nn.Linear(config.context * config.n_embd, config.hidden)
        self.lm_head = nn.Linear(config.hidden, config.vocab_size)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        ignore_index: int = -100,
    ) -> GPTOutput:
        """Next-token logits from the last ``context`` ids at every position.

        :param idx: token ids ``(B, T)``.
        :param targets: the next ids ``(B, T)``, or None.
        :param attention_mask: accepted so that :func:`~llmbook.generate.generation.generate` can
            sample from the model (``use_cache=False``); it must mark every position real.
        :param ignore_index: target value left out of the loss.
        :returns: a :class:`~llmbook.model.gpt.GPTOutput` with logits ``(B, T, V)``.
        """
        check_unpadded(attention_mask, "an n-gram MLP")
        B, T = idx.shape
        ctx = context_windows(idx, self.config.context, self.config.vocab_size)  # (B, T, n)
        x = self.wte(ctx).view(B, T, -1)  # (B, T, n*C): the n embeddings side by side
        return lm_output(self.lm_head(torch.tanh(self.hidden(x))), targets, ignore_index)
