"""The position-wise feed-forward block with a GELU non-linearity."""

from __future__ import annotations

import torch
from torch import nn

from llmbook.model.config import ModelConfig


class MLP(nn.Module):
    r"""Two linear maps with a GELU between them, applied to each position independently.

    $$\operatorname{MLP}(x) = W_\text{down}\,\operatorname{GELU}(W_\text{up} x + b_\text{up}) + b_\text{down}$$

    The hidden width is $4C$, as in the original transformer and GPT-2. GELU uses the tanh
    approximation that GPT-2 was trained with, so weights port between the two exactly.

    :param config: the model config (uses ``n_embd``, ``bias``, ``dropout``).

    Introduced in {doc}`/book/part1/06-feed-forward`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.up_proj = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.act = nn.GELU(approximate="tanh")
        self.down_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        :param x: ``(B, T, C)``.
        :returns: ``(B, T, C)``.
        """
        return self.dropout(self.down_proj(self.act(self.up_proj(x))))  # (B, T, C)


class SwiGLU(nn.Module):
    r"""The gated feed-forward block of Llama (Shazeer, 2020).

    $$\operatorname{SwiGLU}(x) = W_\text{down}\bigl(\operatorname{SiLU}(W_\text{gate}\,x) \odot W_\text{up}\,x\bigr)$$

    Three matrices instead of two, so at the same parameter count the hidden width is $2/3$ of the
    GELU block's: ``config.mlp_hidden`` or, by default, $\tfrac83 C$ rounded up to a multiple of 64.

    :param config: the model config (uses ``n_embd``, ``bias``, ``dropout``, ``mlp_hidden``).

    Introduced in {doc}`/book/part3/03-swiglu`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.gate_proj = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.up_proj = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.down_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        :param x: ``(B, T, C)``.
        :returns: ``(B, T, C)``.
        """
        h = torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x)  # (B, T, hidden)
        return self.dropout(self.down_proj(h))  # (B, T, C)
