"""The pre-norm transformer block: attention and MLP, each on a residual branch."""

from __future__ import annotations

import torch
from torch import nn

from llmbook.model.attention import MultiHeadAttention
from llmbook.model.config import ModelConfig
from llmbook.model.mlp import MLP, SwiGLU
from llmbook.model.norm import LayerNorm, RMSNorm


def build_norm(config: ModelConfig) -> nn.Module:
    """The normalisation layer the config asks for.

    :param config: uses ``norm``, ``n_embd``, ``norm_eps`` and ``bias``.
    :returns: a :class:`~llmbook.model.norm.LayerNorm`, :class:`~llmbook.model.norm.RMSNorm`, or
        :class:`torch.nn.Identity` for ``"none"``.

    Introduced in {doc}`/book/part1/06-residual-layernorm`.
    """
    if config.norm == "layernorm":
        return LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps)
    if config.norm == "none":
        return nn.Identity()
    raise ValueError(f"norm: unknown normalisation {config.norm!r}")


def build_mlp(config: ModelConfig) -> nn.Module:
    """The feed-forward block the config asks for.

    :param config: uses ``mlp`` and the block's sizes.
    :returns: an :class:`~llmbook.model.mlp.MLP` (GELU) or a :class:`~llmbook.model.mlp.SwiGLU`.

    Introduced in {doc}`/book/part3/03-swiglu`.
    """
    return SwiGLU(config) if config.mlp == "swiglu" else MLP(config)


class Block(nn.Module):
    r"""One pre-norm transformer block (GPT-2 layout).

    $$h = x + \operatorname{Attn}(\operatorname{Norm}_1(x)),\qquad y = h + \operatorname{MLP}(\operatorname{Norm}_2(h))$$

    With ``config.residual = False`` the additions are dropped ($h = \operatorname{Attn}(\ldots)$), and
    with ``config.norm = "none"`` the norms are identities: both exist only for the ablation that
    shows why the standard layout trains.

    :param config: the model config.

    Introduced in {doc}`/book/part1/06-residual-layernorm`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.residual = config.residual
        self.attn_norm = build_norm(config)
        self.attn = MultiHeadAttention(config)
        self.mlp_norm = build_norm(config)
        self.mlp = build_mlp(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        rope=None,
        cache=None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Apply the block.

        :param x: the residual stream ``(B, T, C)``.
        :param mask: optional bool attention mask, True where allowed (see
            :class:`~llmbook.model.attention.MultiHeadAttention`).
        :param rope: rotary tables, passed to attention.
        :param cache: a KV cache, passed to attention.
        :param layer: this block's index.
        :returns: the updated stream ``(B, T, C)``.
        """
        a = self.attn(self.attn_norm(x), mask, rope=rope, cache=cache, layer=layer)
        x = x + a if self.residual else a
        m = self.mlp(self.mlp_norm(x))
        return x + m if self.residual else m
