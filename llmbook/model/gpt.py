"""The GPT model: embeddings, a stack of blocks, a final norm and a tied language-model head."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.model.attention import build_attention_mask
from llmbook.model.block import Block, build_norm
from llmbook.model.config import ModelConfig
from llmbook.model.moe import MoE
from llmbook.model.positional import LearnedPositionalEmbedding, SinusoidalPositionalEmbedding
from llmbook.model.rope import rope_cache


class GPTOutput(NamedTuple):
    """What :meth:`GPT.forward` returns; unpacks as ``logits, loss = model(idx, targets)``."""

    logits: torch.Tensor
    """Next-token scores ``(B, T, V)``."""
    loss: torch.Tensor | None
    """Mean cross-entropy over positions whose target is not ``ignore_index``; None without targets."""


class GPT(nn.Module):
    """A decoder-only transformer language model (GPT-2 layout).

    Token embeddings plus position embeddings feed ``n_layer`` pre-norm blocks, a final norm and a
    linear head onto the vocabulary whose weight is tied to the token embedding (Press & Wolf, 2017).

    :param config: the validated model config.

    Introduced in {doc}`/book/part1/07-gpt-model`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb: nn.Module | None = None
        if config.pos_embedding == "learned":
            self.pos_emb = LearnedPositionalEmbedding(config.block_size, config.n_embd)
        elif config.pos_embedding == "sinusoidal":
            self.pos_emb = SinusoidalPositionalEmbedding(config.block_size, config.n_embd)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = build_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, init_std) weights, zero biases, unit norm gains, and residual
        output projections scaled by $1/\\sqrt{2 L}$ so the stream's variance does not grow with depth."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" in name:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, std=std)

    def rope_tables(self, n_positions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions ``0 .. n_positions - 1`` (computed once, grown on demand).

        :param n_positions: how many positions are needed.
        :param device: where the tables must live.
        :returns: ``(cos, sin)``, each ``(n, D)``.
        """
        n = max(n_positions, self.config.block_size)
        if (
            self._rope is None
            or self._rope[0].size(0) < n
            or self._rope[0].device != torch.device(device)
        ):
            self._rope = rope_cache(n, self.config.head_dim, self.config.rope_theta, device=device)
        return self._rope

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        """Run the model up to (and including) the final norm.

        :param idx: token ids ``(B, T)``; without a cache ``T <= block_size``.
        :param attention_mask: optional bool, True at real tokens and False at padding: ``(B, T)``, or
            with a :class:`~llmbook.model.kv_cache.KVCache` ``(B, cached + T)`` covering the cached tokens
            too. Padding is never attended to, and positions count real tokens only, so a left-padded row
            computes exactly what the unpadded sequence computes.
        :param positions: optional ``(B, T)`` or ``(T,)`` position ids; by default ``0..T-1`` after the
            cached tokens, or derived from ``attention_mask``.
        :param cache: optional :class:`~llmbook.model.kv_cache.KVCache` (it is filled and advanced) or
            :class:`~llmbook.model.kv_cache.RollingKVCache` (one token per call, RoPE models).
        :returns: the final hidden states ``(B, T, C)``.
        :raises ValueError: for a sequence longer than ``block_size`` without a cache, positions beyond
            a learned table, or a mask of the wrong shape.
        """
        B, T = idx.shape
        cfg = self.config
        device = idx.device
        start = 0 if cache is None else cache.length
        if cache is None and T > cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size ({cfg.block_size})")
        rope = None
        n_positions = None  # 1 + the largest position, when known without reading the tensor
        if cache is not None and cache.rotates_keys:
            if cfg.pos_embedding != "rope":
                raise ValueError("pos_embedding: the rolling cache needs a rope model")
            if T != 1:
                raise ValueError(f"idx: the rolling cache takes one token per call, got {T}")
            slot_pos, valid, q_pos = cache.positions(start)
            cos, sin = self.rope_tables(cache.size, device)
            rope = (
                cos[q_pos : q_pos + 1],
                sin[q_pos : q_pos + 1],
                cos[slot_pos.to(device)],
                sin[slot_pos.to(device)],
            )
            mask = valid.to(device)[None, None, None, :]  # (1, 1, 1, S+W)
            positions = None
        else:
            T_k = start + T
            key_valid = None
            if attention_mask is not None:
                key_valid = attention_mask.to(device=device, dtype=torch.bool)
                if key_valid.shape == (B, T) and start > 0:
                    raise ValueError(
                        f"attention_mask: with {start} cached tokens it must cover them too: "
                        f"expected shape {(B, T_k)}"
                    )
                if key_valid.shape != (B, T_k):
                    raise ValueError(
                        f"attention_mask: expected shape {(B, T_k)}, got {tuple(key_valid.shape)}"
                    )
                if positions is None:
                    positions = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, start:]  # (B, T)
            if positions is None:
                positions = torch.arange(start, T_k, device=device)  # (T,)
                n_positions = T_k
            needs_mask = (
                key_valid is not None
                or cfg.sliding_window is not None
                or (cache is not None and T > 1)
            )
            mask = None
            if needs_mask:
                mask = build_attention_mask(
                    T,
                    T_k,
                    offset=start,
                    key_valid=key_valid,
                    window=cfg.sliding_window,
                    sinks=cfg.attn_sinks,
                    device=device,
                )
            if cfg.pos_embedding == "rope":
                gather = n_positions is None  # default positions start..T_k-1 are a slice
                if gather:
                    n_positions = int(positions.max()) + 1
                cos, sin = self.rope_tables(n_positions, device)
                if gather:
                    cos, sin = cos[positions], sin[positions]  # (T, D) or (B, T, D)
                else:
                    cos, sin = cos[start:T_k], sin[start:T_k]  # (T, D)
                rope = (cos, sin, cos, sin)
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None and positions is not None:
            if n_positions is None:
                n_positions = int(positions.max()) + 1
            if n_positions > cfg.block_size:
                raise ValueError(
                    f"positions: {n_positions - 1} is beyond the {cfg.pos_embedding} table "
                    f"(block_size {cfg.block_size})"
                )
            x = x + self.pos_emb(positions)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rope=rope, cache=cache, layer=i)
        if cache is not None:
            cache.advance(T)
        return self.norm_f(x)  # (B, T, C)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache=None,
        ignore_index: int = -100,
    ) -> GPTOutput:
        """Compute next-token logits and, given targets, the cross-entropy loss.

        :param idx: token ids ``(B, T)``.
        :param targets: the id each position should predict ``(B, T)`` (already shifted: ``targets[:, t]``
            is the token after ``idx[:, t]``); positions equal to ``ignore_index`` do not count.
        :param attention_mask: optional bool ``(B, T)``, True at real tokens; see :meth:`hidden_states`.
        :param positions: optional position ids; see :meth:`hidden_states`.
        :param cache: optional KV cache; see :meth:`hidden_states`.
        :param ignore_index: target value that is left out of the loss.
        :returns: a :class:`GPTOutput` ``(logits (B, T, V), loss or None)``.
        """
        h = self.hidden_states(idx, attention_mask=attention_mask, positions=positions, cache=cache)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(),
                targets.reshape(-1),
                ignore_index=ignore_index,
            )
            moe = self.moe_layers()
            if moe and self.training:
                # The routers' regularisers join the training loss (evaluation reports the LM loss).
                cfg = self.config
                loss = loss + sum(
                    cfg.moe_aux_coef * m.aux_loss + cfg.moe_z_coef * m.z_loss for m in moe
                )
        return GPTOutput(logits, loss)

    def moe_layers(self) -> list[nn.Module]:
        """The mixture-of-experts layers, bottom to top (empty for a dense model).

        :returns: the :class:`~llmbook.model.moe.MoE` modules.
        """
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoE)]

    def moe_metrics(self) -> dict[str, float]:
        """Router statistics of the last forward pass, for logging (empty for a dense model).

        ``moe/aux_loss`` and ``moe/z_loss`` are summed over layers; ``moe/dropped`` is the mean share of
        assignments dropped by the capacity limit; ``moe/max_load`` is the largest share of
        assignments any expert of any layer got (``1/E`` is perfect balance); ``moe/load/<l>/<e>`` is
        expert ``e``'s share in the ``l``-th MoE layer.

        :returns: metric name to value.

        Introduced in {doc}`/book/part5/02-moe-layer`.
        """
        moe = self.moe_layers()
        if not moe:
            return {}
        shares = [m.last_counts / m.last_counts.sum() for m in moe]  # each (E,)
        metrics = {
            "moe/aux_loss": sum(float(m.aux_loss.detach()) for m in moe),
            "moe/z_loss": sum(float(m.z_loss.detach()) for m in moe),
            "moe/dropped": sum(m.dropped_fraction for m in moe) / len(moe),
            "moe/max_load": max(float(s.max()) for s in shares),
        }
        for layer, share in enumerate(shares):
            for e, value in enumerate(share.tolist()):
                metrics[f"moe/load/{layer}/{e}"] = value
        return metrics

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Count the distinct parameters (a tied matrix counts once).

        :param non_embedding: leave out the token and position tables, the usual convention for
            scaling laws (the tied head then disappears with the token table).
        :returns: the number of scalar parameters.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() already de-duplicates ties
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= sum(p.numel() for p in self.pos_emb.parameters())
        return n
