"""Closed formulas for a GPT's parameter count and training compute."""

from __future__ import annotations

from llmbook.model.config import ModelConfig


def _block_weights(config: ModelConfig, layer: int = 0, *, active: bool = False) -> tuple[int, int]:
    """(matmul weights, bias entries) of one block's attention and feed-forward layers.

    For a mixture-of-experts block the feed-forward part is the router plus every expert, or with
    ``active`` only the k routed and the shared experts a token passes through.
    """
    C, D, K, h = config.n_embd, config.head_dim, config.kv_heads, config.hidden_size
    attn = 2 * C * C + 2 * C * K * D  # q and o are C x C; k and v are C x K*D
    attn_bias = C + 2 * K * D + C
    if config.is_moe_layer(layer):
        h_e = config.expert_hidden or h
        n = (config.n_expert_active if active else config.n_expert) + config.n_shared_expert
        mlp, mlp_bias = n * 3 * C * h_e + C * config.n_expert, n * (2 * h_e + C)
    elif config.mlp == "swiglu":
        mlp, mlp_bias = 3 * C * h, 2 * h + C
    else:
        mlp, mlp_bias = 2 * C * h, h + C
    return attn + mlp, (attn_bias + mlp_bias if config.bias else 0)


def count_parameters(
    config: ModelConfig, *, non_embedding: bool = False, active: bool = False
) -> int:
    r"""The number of parameters of :class:`~llmbook.model.gpt.GPT` built from ``config``, by formula.

    With width $C$, depth $L$, vocabulary $V$, context $T$ and a GELU MLP of width $4C$, each block
    holds $12C^2$ weights ($4C^2$ in the q, k, v, o projections and $8C^2$ in the MLP), $9C$ biases
    when ``bias`` is set ($4C$ attention, $4C + C$ MLP) and two norms of $C$ (or $2C$ with bias) each.
    Embeddings add $VC$, plus $TC$ for a learned position table; the final norm adds one more norm; an
    untied head adds $VC$. Grouped-query attention shrinks k and v to $C \cdot KD$ each; SwiGLU has three
    matrices of $C \times h$; RMSNorm has a gain only; RoPE has no parameters.

    A mixture-of-experts block counts its router ($EC$) and all $E$ routed plus $S$ shared SwiGLU
    experts; with ``active`` only the $k + S$ experts that process each token (and the router), the
    number that sets the compute per token.

    :param config: the model config.
    :param non_embedding: leave out the token and position tables (and the head when tied).
    :param active: count only the parameters one token passes through (differs for MoE models).
    :returns: the count; the tests check it equals ``GPT(config).num_params()``.

    Introduced in {doc}`/book/part1/10-counting`.
    """
    C, L, V, T = config.n_embd, config.n_layer, config.vocab_size, config.block_size
    if config.norm == "none":
        norm = 0
    elif config.norm == "rmsnorm":
        norm = C
    else:
        norm = 2 * C if config.bias else C
    n = norm
    for layer in range(L):
        weights, biases = _block_weights(config, layer, active=active)
        n += weights + biases + 2 * norm
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
    Kaplan et al. (2020) count only $QK^\top$ and get half the attention term. For a
    mixture-of-experts model $N$ counts the active weights: the router and the $k$ routed plus shared
    experts each token passes through.

    Attention is counted at full $T$, masked entries included, as the written-out attention computes
    them; a causal flash kernel skips most masked blocks and does about half the attention work. The
    tests check the count exactly against :class:`torch.utils.flop_counter.FlopCounterMode` on a
    forward and backward pass, for dense and MoE models.

    :param config: the model config.
    :param seq_len: the sequence length $T$ (defaults to ``block_size``).
    :returns: FLOPs per token for one training step.

    Introduced in {doc}`/book/part1/10-counting`.
    """
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    T = config.block_size if seq_len is None else seq_len
    matmul_weights = sum(_block_weights(config, i, active=True)[0] for i in range(L)) + V * C
    return 6 * matmul_weights + 12 * L * T * C
