r"""A GRU language model (Cho et al., 2014), with the recurrence written out.

At every step the gated recurrent unit mixes its previous state $h$ with a candidate $n$:

$$\begin{aligned}
r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
z &= \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
n &= \tanh\big(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})\big) \\
h' &= (1 - z) \odot n + z \odot h
\end{aligned}$$

These are PyTorch's equations and parameter layout (gates stacked r, z, n), so the weights of a
:class:`torch.nn.GRU` load into :class:`GRU` unchanged and the outputs agree.

Introduced in {doc}`/book/part10/04-baselines`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmbook.baselines._common import check_positive, check_unpadded, config_dict, lm_output
from llmbook.model.gpt import GPTOutput


def gru_cell(
    x_gates: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor | None
) -> torch.Tensor:
    """One GRU step from precomputed input gates.

    The input's contribution ``x @ W_ih.T + b_ih`` does not depend on the state, so a layer computes
    it for all steps in one matrix product and only the state's part stays inside the loop.

    :param x_gates: ``(B, 3H)`` the input's pre-activations, gates stacked r, z, n.
    :param h: ``(B, H)`` the previous state.
    :param weight_hh: ``(3H, H)`` the state's weights, gates stacked r, z, n.
    :param bias_hh: ``(3H,)`` or None.
    :returns: ``(B, H)`` the new state.

    Introduced in {doc}`/book/part10/04-baselines`.
    """
    h_gates = h @ weight_hh.T  # (B, 3H)
    if bias_hh is not None:
        h_gates = h_gates + bias_hh
    xr, xz, xn = x_gates.chunk(3, dim=-1)
    hr, hz, hn = h_gates.chunk(3, dim=-1)
    r = torch.sigmoid(xr + hr)  # how much of the old state the candidate may read
    z = torch.sigmoid(xz + hz)  # how much of the old state to keep
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


GRU_IMPLS = ("reference", "fused")
"""``GRUConfig.impl`` values: the recurrence written out in Python, or PyTorch's kernel."""


class GRU(nn.GRU):
    """A stack of GRU layers over a batch-first sequence: a ``torch.nn.GRU(..., batch_first=True)``
    whose forward pass, with ``impl="reference"``, is the recurrence of :func:`gru_cell` written out.

    The parameters are ``torch.nn.GRU``'s own (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
    ``bias_hh_l0``, ...), so the two paths share weights and a test proves them equal; ``"fused"``
    runs PyTorch's kernel, the same loop over time in C++, about twice as fast on a CPU.

    :param input_size: width of each input vector.
    :param hidden_size: H, width of the state.
    :param num_layers: layers; each reads the previous layer's states.
    :param bias: whether the gates carry biases.
    :param impl: ``"reference"`` or ``"fused"``.

    Introduced in {doc}`/book/part10/04-baselines`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bias: bool = True,
        impl: str = "reference",
    ) -> None:
        if impl not in GRU_IMPLS:
            raise ValueError(f"impl: must be one of {GRU_IMPLS}, got {impl!r}")
        super().__init__(input_size, hidden_size, num_layers, bias=bias, batch_first=True)
        self.impl = impl

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the recurrence over the sequence, layer by layer.

        :param x: ``(B, T, input_size)``.
        :param h0: ``(num_layers, B, H)`` initial states; None: zeros.
        :returns: the last layer's state at every step ``(B, T, H)`` and every layer's final state
            ``(num_layers, B, H)``, as ``torch.nn.GRU`` returns them.
        """
        if self.impl == "fused":
            return super().forward(x, h0)
        B, T, _ = x.shape
        if h0 is None:
            h0 = x.new_zeros(self.num_layers, B, self.hidden_size)
        finals = []
        for k in range(self.num_layers):
            w_ih, w_hh = getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}")
            b_ih = getattr(self, f"bias_ih_l{k}") if self.bias else None
            b_hh = getattr(self, f"bias_hh_l{k}") if self.bias else None
            x_gates = x @ w_ih.T  # (B, T, 3H): every step's input part at once
            if b_ih is not None:
                x_gates = x_gates + b_ih
            h = h0[k]
            states = []
            for t in range(T):  # the sequential part: step t needs step t - 1
                h = gru_cell(x_gates[:, t], h, w_hh, b_hh)
                states.append(h)
            x = torch.stack(states, dim=1)  # (B, T, H)
            finals.append(h)
        return x, torch.stack(finals)


@dataclass(kw_only=True)
class GRUConfig:
    """Shape of a GRU language model.

    Introduced in {doc}`/book/part10/04-baselines`.
    """

    vocab_size: int = 256
    """Number of token ids (V)."""
    block_size: int = 64
    """Window length the training loop cuts: gradients flow back at most this many steps
    (truncated backpropagation through time); the model itself runs on any length."""
    n_embd: int = 64
    """Width of the token embedding (C)."""
    hidden: int = 256
    """Width of the recurrent state (H)."""
    n_layer: int = 1
    """Stacked GRU layers."""
    impl: str = "fused"
    """``"fused"`` (PyTorch's GRU kernel) or ``"reference"`` (the recurrence of :func:`gru_cell`
    in Python, proven equal); the weights are the same either way."""

    def __post_init__(self) -> None:
        check_positive(self, ("vocab_size", "block_size", "n_embd", "hidden", "n_layer"))
        if self.impl not in GRU_IMPLS:
            raise ValueError(f"impl: must be one of {GRU_IMPLS}, got {self.impl!r}")

    def to_dict(self) -> dict:
        """The config as a dict.

        :returns: its fields.
        """
        return config_dict(self)


class GRULM(nn.Module):
    """Token embedding, a :class:`GRU`, a linear head: the state at step t predicts token t + 1.

    :param config: the :class:`GRUConfig`.

    Introduced in {doc}`/book/part10/04-baselines`.
    """

    def __init__(self, config: GRUConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.gru = GRU(config.n_embd, config.hidden, config.n_layer, impl=config.impl)
        self.lm_head = nn.Linear(config.hidden, config.vocab_size)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        h0: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        ignore_index: int = -100,
    ) -> GPTOutput:
        """Next-token logits at every step.

        :param idx: token ids ``(B, T)``.
        :param targets: the next ids ``(B, T)``, or None.
        :param h0: ``(n_layer, B, H)`` states to start from (e.g. the end of the previous window);
            None: zeros.
        :param attention_mask: accepted so that :func:`~llmbook.generate.generation.generate` can
            sample from the model (``use_cache=False``); it must mark every position real.
        :param ignore_index: target value left out of the loss.
        :returns: a :class:`~llmbook.model.gpt.GPTOutput` with logits ``(B, T, V)``.
        """
        check_unpadded(attention_mask, "a GRU")
        states, _ = self.gru(self.wte(idx), h0)  # (B, T, H)
        return lm_output(self.lm_head(states), targets, ignore_index)
