"""Closed formulas for a GPT's parameter count and training compute."""

from __future__ import annotations

from llmbook.model.config import ModelConfig


def count_parameters(config: ModelConfig, *, non_embedding: bool = False) -> int:
    r"""The number of parameters of :class:`~llmbook.model.gpt.GPT` built from ``config``, by formula.

    With width $C$, depth $L$, vocabulary $V$ and context $T$, each block holds $12C^2$ weights
    ($4C^2$ in the q, k, v, o projections and $8C^2$ in the MLP), $9C$ biases when ``bias`` is set
    ($4C$ attention, $4C + C$ MLP) and two norms of $C$ (or $2C$ with bias) each. Embeddings add $VC$,
    plus $TC$ for a learned position table; the final norm adds one more norm; an untied head adds $VC$.

    :param config: the model config.
    :param non_embedding: leave out the token and position tables (and the head when tied).
    :returns: the count; the tests check it equals ``GPT(config).num_params()``.

    Introduced in {doc}`/book/part1/07-gpt-model`.
    """
    C, L, V, T = config.n_embd, config.n_layer, config.vocab_size, config.block_size
    norm = 0 if config.norm == "none" else (2 * C if config.bias else C)
    block = 12 * C * C + (9 * C if config.bias else 0) + 2 * norm
    n = L * block + norm
    if not config.tie_weights:
        n += V * C
    if not non_embedding:
        n += V * C
        if config.pos_embedding == "learned":
            n += T * C
    return n


def flops_per_token(config: ModelConfig, *, seq_len: int | None = None) -> int:
    r"""Training FLOPs per token: forward plus backward, matmuls only.

    Each weight in a matmul costs 2 FLOPs per token forward (a multiply and an add) and 4 backward
    (gradients for the input and for the weight), so $6N$ for $N$ matmul weights, including the LM head.
    Attention adds $QK^\top$ and the weighted sum of $V$: $2 \cdot 2\,T C$ per token per layer forward,
    so $12\,L\,T\,C$ in training. This is the accounting of Hoffmann et al. (2022, appendix F);
    Kaplan et al. (2020) count only $QK^\top$ and get half the attention term.

    :param config: the model config.
    :param seq_len: the sequence length $T$ (defaults to ``block_size``).
    :returns: FLOPs per token for one training step.

    Introduced in {doc}`/book/part1/07-gpt-model`.
    """
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    T = config.block_size if seq_len is None else seq_len
    matmul_weights = L * 12 * C * C + V * C
    return 6 * matmul_weights + 12 * L * T * C
