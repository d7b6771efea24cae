"""The pre-norm transformer block: attention and MLP, each on a residual branch."""

from __future__ import annotations

import torch
from torch import nn

from llmbook.model.attention import MultiHeadAttention
from llmbook.model.config import ModelConfig
from llmbook.model.mlp import MLP, SwiGLU
from llmbook.model.moe import MoE, MoEStats
from llmbook.model.norm import LayerNorm, RMSNorm


def build_norm(config: ModelConfig) -> nn.Module:
    """The normalisation layer the config asks for.

    :param config: uses ``norm``, ``n_embd``, ``norm_eps`` and ``bias``.
    :returns: a :class:`~llmbook.model.norm.LayerNorm`, :class:`~llmbook.model.norm.RMSNorm`, or
        :class:`torch.nn.Identity` for ``"none"``.

    Introduced in {doc}`/book/part1/07-residual-layernorm`.
    """
    if config.norm == "layernorm":
        return LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps)
    if config.norm == "none":
        return nn.Identity()
    raise ValueError(f"norm: unknown normalisation {config.norm!r}")


def build_mlp(config: ModelConfig, layer: int = 0) -> nn.Module:
    """The feed-forward block the config asks for in block ``layer``.

    :param config: uses ``mlp``, the block's sizes and the mixture-of-experts fields.
    :param layer: the block index (decides dense or MoE, see ``ModelConfig.is_moe_layer``).
    :returns: an :class:`~llmbook.model.mlp.MLP` (GELU), a :class:`~llmbook.model.mlp.SwiGLU`, or an
        :class:`~llmbook.model.moe.MoE` of SwiGLU experts.

    Introduced in {doc}`/book/part3/03-swiglu`; MoE layers in {doc}`/book/part5/04-hybrid-stacks`.
    """
    if config.is_moe_layer(layer):
        return MoE(
            config.n_embd,
            config.n_expert,
            config.n_expert_active,
            config.expert_hidden or config.hidden_size,
            n_shared=config.n_shared_expert,
            capacity_factor=config.capacity_factor,
            noise_std=config.router_noise,
            renormalize=config.router_renormalize,
            bias=config.bias,
        )
    return SwiGLU(config) if config.mlp == "swiglu" else MLP(config)


class Block(nn.Module):
    r"""One pre-norm transformer block (GPT-2 layout).

    $$h = x + \operatorname{Attn}(\operatorname{Norm}_1(x)),\qquad y = h + \operatorname{MLP}(\operatorname{Norm}_2(h))$$

    With ``config.residual = False`` the additions are dropped ($h = \operatorname{Attn}(\ldots)$), and
    with ``config.norm = "none"`` the norms are identities: both exist only for the ablation that
    shows why the standard layout trains.

    :param config: the model config.
    :param layer: the block's index (selects a dense or a mixture-of-experts feed-forward layer).

    Introduced in {doc}`/book/part1/07-residual-layernorm`.
    """

    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.residual = config.residual
        self.attn_norm = build_norm(config)
        self.attn = MultiHeadAttention(config)
        self.mlp_norm = build_norm(config)
        self.mlp = build_mlp(config, layer)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        rope=None,
        cache=None,
        layer: int = 0,
        return_stats: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, MoEStats | None]:
        """Apply the block.

        :param x: the residual stream ``(B, T, C)``.
        :param mask: optional bool attention mask, True where allowed (see
            :class:`~llmbook.model.attention.MultiHeadAttention`).
        :param rope: rotary tables, passed to attention.
        :param cache: a KV cache, passed to attention.
        :param layer: this block's index.
        :param return_stats: also return the feed-forward layer's
            :class:`~llmbook.model.moe.MoEStats` (None for a dense MLP).
        :returns: the updated stream ``(B, T, C)``, or ``(stream, stats)`` with ``return_stats``.
        """
        a = self.attn(self.attn_norm(x), mask, rope=rope, cache=cache, layer=layer)
        x = x + a if self.residual else a
        stats = None
        if return_stats and isinstance(self.mlp, MoE):
            m, stats = self.mlp(self.mlp_norm(x), return_stats=True)
        else:
            m = self.mlp(self.mlp_norm(x))
        y = x + m if self.residual else m
        return (y, stats) if return_stats else y
