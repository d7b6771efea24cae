"""The GPT model: embeddings, a stack of blocks, a final norm and a tied language-model head."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.model.block import Block, build_norm
from llmbook.model.config import ModelConfig
from llmbook.model.positional import LearnedPositionalEmbedding, SinusoidalPositionalEmbedding


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
        if config.pos_embedding == "learned":
            self.pos_emb = LearnedPositionalEmbedding(config.block_size, config.n_embd)
        else:
            self.pos_emb = SinusoidalPositionalEmbedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
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

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the model up to (and including) the final norm.

        :param idx: token ids ``(B, T)`` with ``T <= block_size``.
        :param attention_mask: optional bool ``(B, T)``, True at real tokens and False at padding.
            Padding is never attended to, and positions count real tokens only, so a left-padded row
            computes exactly what the unpadded sequence computes.
        :param positions: optional ``(B, T)`` or ``(T,)`` position ids; by default ``0..T-1``, or derived
            from ``attention_mask``.
        :returns: the final hidden states ``(B, T, C)``.
        :raises ValueError: when the sequence is longer than ``block_size`` or a mask has the wrong shape.
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size ({self.config.block_size})")
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != (B, T):
                raise ValueError(
                    f"attention_mask: expected shape {(B, T)}, got {tuple(attention_mask.shape)}"
                )
            valid = attention_mask.to(torch.bool)
            if positions is None:
                positions = (valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
            # Each query sees the real keys; a padding query also sees itself, so that no row is
            # entirely masked (a softmax over nothing is NaN, and NaN * 0 would leak into real rows).
            eye = torch.eye(T, dtype=torch.bool, device=idx.device)
            mask = (
                valid[:, None, None, :] | eye
            )  # (B, 1, T, T); the causal rule is added in attention
        if positions is None:
            positions = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions))  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm_f(x)  # (B, T, C)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        ignore_index: int = -100,
    ) -> GPTOutput:
        """Compute next-token logits and, given targets, the cross-entropy loss.

        :param idx: token ids ``(B, T)``.
        :param targets: the id each position should predict ``(B, T)`` (already shifted: ``targets[:, t]``
            is the token after ``idx[:, t]``); positions equal to ``ignore_index`` do not count.
        :param attention_mask: optional bool ``(B, T)``, True at real tokens; see :meth:`hidden_states`.
        :param positions: optional position ids; see :meth:`hidden_states`.
        :param ignore_index: target value that is left out of the loss.
        :returns: a :class:`GPTOutput` ``(logits (B, T, V), loss or None)``.
        """
        h = self.hidden_states(idx, attention_mask=attention_mask, positions=positions)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(),
                targets.reshape(-1),
                ignore_index=ignore_index,
            )
        return GPTOutput(logits, loss)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Count the distinct parameters (a tied matrix counts once).

        :param non_embedding: leave out the token and position tables, the usual convention for
            scaling laws (the tied head then disappears with the token table).
        :returns: the number of scalar parameters.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() already de-duplicates ties
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            n -= sum(p.numel() for p in self.pos_emb.parameters())
        return n
