"""The GPT model: embeddings, a stack of blocks, a final norm and a tied language-model head."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.model.attention import build_attention_mask
from llmbook.model.block import Block, build_norm
from llmbook.model.config import ModelConfig
from llmbook.model.moe import MoE, MoEStats, moe_metrics
from llmbook.model.positional import LearnedPositionalEmbedding, SinusoidalPositionalEmbedding
from llmbook.model.rope import rope_cache


@dataclass(frozen=True)
class GPTOutput:
    """What :meth:`GPT.forward` returns; unpacks as ``logits, loss = model(idx, targets)``.

    A small class rather than a ``NamedTuple``: a tuple with a third field would break the two-name
    unpacking the whole book uses, so iterating yields exactly ``logits`` and ``loss``, and the
    mixture-of-experts statistics are read by name (``out.moe``).
    """

    logits: torch.Tensor
    """Next-token scores ``(B, T, V)``."""
    loss: torch.Tensor | None = None
    """Mean cross-entropy over positions whose target is not ``ignore_index`` (plus the routers'
    regularisers in training mode, see :meth:`GPT.forward`); None without targets."""
    moe: tuple[MoEStats, ...] | None = None
    """One :class:`~llmbook.model.moe.MoEStats` per MoE layer, bottom to top, for this forward pass;
    None for a dense model. Turn it into a logging dict with :meth:`GPT.moe_metrics`."""

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        """Yield ``logits`` then ``loss``, so that ``logits, loss = model(idx, targets)`` works."""
        yield self.logits
        yield self.loss


def _pairwise_mask(
    mask: torch.Tensor, B: int, T: int, start: int, cfg: ModelConfig, device
) -> torch.Tensor:
    # A (B, T, T) query-by-key mask made causal; each query always sees itself (no empty softmax row).
    if start > 0:
        raise ValueError("attention_mask: a (B, T, T) mask is for packed rows, not with a cache")
    if cfg.sliding_window is not None:
        raise ValueError("attention_mask: a (B, T, T) mask does not combine with sliding_window")
    if tuple(mask.shape) != (B, T, T):
        raise ValueError(f"attention_mask: expected shape {(B, T, T)}, got {tuple(mask.shape)}")
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=device)
    return (mask.to(device=device, dtype=torch.bool) & causal) | eye  # (B, T, T)


class GPT(nn.Module):
    """A decoder-only transformer language model (GPT-2 layout).

    Token embeddings plus position embeddings feed ``n_layer`` pre-norm blocks, a final norm and a
    linear head onto the vocabulary whose weight is tied to the token embedding (Press & Wolf, 2017).

    :param config: the validated model config.

    Introduced in {doc}`/book/part1/09-gpt-model`.
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
        causal: bool = True,
    ) -> torch.Tensor:
        """Run the model up to (and including) the final norm.

        :param idx: token ids ``(B, T)``; without a cache ``T <= block_size``.
        :param attention_mask: optional bool, True at real tokens and False at padding: ``(B, T)``, or
            with a :class:`~llmbook.model.kv_cache.KVCache` ``(B, cached + T)`` covering the cached tokens
            too. Padding is never attended to, and positions, the sliding window and the attention
            sinks count real tokens only, so a padded row computes exactly what the unpadded sequence
            computes (with the cache too). For packed rows (several documents in one row, Part 6) it
            may instead be a ``(B, T, T)`` query-by-key mask, True where query ``t`` may see key ``s``
            (a block diagonal); causality is added, and positions restart at each document (the
            number of keys a query sees, minus one) unless ``positions`` is given.
        :param positions: optional ``(B, T)`` or ``(T,)`` position ids; by default ``0..T-1`` after the
            cached tokens, or derived from ``attention_mask``.
        :param cache: optional :class:`~llmbook.model.kv_cache.KVCache` (it is filled and advanced) or
            :class:`~llmbook.model.kv_cache.RollingKVCache` (one token per call, RoPE models).
        :param causal: False runs the same blocks as an *encoder*: every position attends to every
            real token, later ones included (the reward model's encoder variant, Part 7.2). It takes
            a ``(B, T)`` mask or none, and no cache or sliding window.
        :returns: the final hidden states ``(B, T, C)``.
        :raises ValueError: for a sequence longer than ``block_size`` without a cache, positions beyond
            a learned table, a mask of the wrong shape, a mask or positions with the rolling cache, or
            ``causal=False`` with a cache, a sliding window or a ``(B, T, T)`` mask.
        """
        if not causal:
            if cache is not None:
                raise ValueError(
                    "causal: an encoder pass sees the whole sequence; it takes no cache"
                )
            return self._run_bidirectional(idx, attention_mask, positions)
        return self._run(idx, attention_mask=attention_mask, positions=positions, cache=cache)[0]

    def _run_bidirectional(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor | None
    ) -> torch.Tensor:
        # The encoder: the causal rule replaced by "any real key"; positions count real tokens, so
        # padding on either side changes nothing for the real ones.
        B, T = idx.shape
        cfg = self.config
        if cfg.sliding_window is not None:
            raise ValueError("causal: an encoder pass does not combine with sliding_window")
        if T > cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size ({cfg.block_size})")
        if attention_mask is None:
            key_valid = torch.ones(B, T, dtype=torch.bool, device=idx.device)
        else:
            if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (B, T):
                raise ValueError(
                    f"attention_mask: an encoder pass takes shape {(B, T)}, "
                    f"got {tuple(attention_mask.shape)}"
                )
            key_valid = attention_mask.to(device=idx.device, dtype=torch.bool)
        if positions is None:
            positions = (key_valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        mask = key_valid[:, None, None, :].expand(B, 1, T, T)  # (B, 1, T, T): every real key
        rope = None
        if cfg.pos_embedding == "rope":
            cos, sin = self.rope_tables(int(positions.max()) + 1, idx.device)
            cos, sin = cos[positions], sin[positions]  # (B, T, D) or (T, D)
            rope = (cos, sin, cos, sin)
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            if int(positions.max()) >= cfg.block_size:
                raise ValueError(
                    f"positions: {int(positions.max())} is beyond the {cfg.pos_embedding} table "
                    f"(block_size {cfg.block_size})"
                )
            x = x + self.pos_emb(positions)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rope=rope, layer=i)
        return self.norm_f(x)  # (B, T, C)

    def _run(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        cache,
    ) -> tuple[torch.Tensor, tuple[MoEStats, ...] | None]:
        # hidden_states, plus the MoE layers' statistics (None for a dense model).
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
            if attention_mask is not None or positions is not None:
                # Its sinks are the first tokens fed and its positions are slots: padding would
                # become a sink, so rows must be unpadded and advance together.
                name = "attention_mask" if attention_mask is not None else "positions"
                raise ValueError(f"{name}: the rolling cache takes unpadded rows and no positions")
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
            pairwise = None
            if attention_mask is not None and attention_mask.dim() == 3:
                # Packed sequences: a (B, T, T) mask of which key each query may see (a block
                # diagonal of documents); causality is added here, positions restart per document.
                pairwise = _pairwise_mask(attention_mask, B, T, start, cfg, device)
                if positions is None:  # keys a query sees, itself included, minus one
                    positions = pairwise.sum(-1) - 1  # (B, T)
                attention_mask = None
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
                pairwise is not None
                or key_valid is not None
                or cfg.sliding_window is not None
                or (cache is not None and T > 1)
            )
            mask = None
            if pairwise is not None:
                mask = pairwise[:, None]  # (B, 1, T, T)
            elif needs_mask:
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
        moe: list[MoEStats] = []
        for i, block in enumerate(self.blocks):
            if isinstance(getattr(block, "mlp", None), MoE):
                x, stats = block(x, mask, rope=rope, cache=cache, layer=i, return_stats=True)
                moe.append(stats)
            else:
                x = block(x, mask, rope=rope, cache=cache, layer=i)
        if cache is not None:
            cache.advance(T)
        return self.norm_f(x), (tuple(moe) if moe else None)  # (B, T, C)

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
        r"""Compute next-token logits and, given targets, the cross-entropy loss.

        :param idx: token ids ``(B, T)``.
        :param targets: the id each position should predict ``(B, T)`` (already shifted: ``targets[:, t]``
            is the token after ``idx[:, t]``); positions equal to ``ignore_index`` do not count.
        :param attention_mask: optional bool ``(B, T)``, True at real tokens; see :meth:`hidden_states`.
        :param positions: optional position ids; see :meth:`hidden_states`.
        :param cache: optional KV cache; see :meth:`hidden_states`.
        :param ignore_index: target value that is left out of the loss.
        :returns: a :class:`GPTOutput`: ``logits (B, T, V)``, ``loss`` (None without targets) and, for
            a mixture-of-experts model, ``moe``, each MoE layer's losses and statistics for this call.
            In training mode the loss includes the routers' regularisers,
            $\sum_\ell \alpha\,\mathcal L_\text{aux}^\ell + \beta\,\mathcal L_z^\ell$
            (``moe_aux_coef``, ``moe_z_coef``); evaluation reports the language-model loss alone.
        """
        h, moe = self._run(idx, attention_mask=attention_mask, positions=positions, cache=cache)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(),
                targets.reshape(-1),
                ignore_index=ignore_index,
            )
            if moe and self.training:
                cfg = self.config
                loss = loss + sum(
                    cfg.moe_aux_coef * s.aux_loss + cfg.moe_z_coef * s.z_loss for s in moe
                )
        return GPTOutput(logits, loss, moe)

    def moe_layers(self) -> list[nn.Module]:
        """The mixture-of-experts layers, bottom to top (empty for a dense model).

        :returns: the :class:`~llmbook.model.moe.MoE` modules.
        """
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoE)]

    def moe_metrics(self, output: GPTOutput) -> dict[str, float]:
        """Router statistics of one forward pass, for logging (empty for a dense model).

        The statistics travel with the forward pass's output, not on the modules, so they describe
        exactly that call, on its device and in its dtype. See :func:`~llmbook.model.moe.moe_metrics`
        for the names: ``moe/aux_loss`` and ``moe/z_loss`` (summed over layers), ``moe/dropped``,
        ``moe/max_load`` and ``moe/load/<l>/<e>``.

        :param output: what :meth:`forward` returned.
        :returns: metric name to value.

        Introduced in {doc}`/book/part5/03-moe-layer`.
        """
        return moe_metrics(output.moe)

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
