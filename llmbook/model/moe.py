"""Mixture of experts: a top-k router, SwiGLU experts, vectorized dispatch, balancing and z losses.

A mixture-of-experts (MoE) feed-forward layer replaces the one MLP of a block with ``E`` expert MLPs
and a router that sends each token to ``k`` of them. Parameters grow with ``E``; compute per token
grows only with ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class RouterOutput(NamedTuple):
    """What :class:`Router` returns for ``N`` tokens."""

    logits: torch.Tensor
    """``(N, E)`` router logits (noise included when training with noise)."""
    probs: torch.Tensor
    """``(N, E)`` softmax over all experts, in fp32 (float64 for a float64 model)."""
    weights: torch.Tensor
    """``(N, k)`` the gates of the chosen experts (renormalised to sum to 1 when asked)."""
    indices: torch.Tensor
    """``(N, k)`` the chosen experts, best first."""


class MoEStats(NamedTuple):
    """What one :class:`MoE` layer reports about a forward pass, returned with its output.

    The two losses keep their gradients (they join the training loss); the statistics are detached.
    Everything lives on the input's device and is computed fresh by each call: nothing is stored on
    the module, so the numbers always describe the call that returned them.

    Introduced in {doc}`/book/part5/02-moe-balancing`.
    """

    aux_loss: torch.Tensor
    """Scalar load-balancing loss (:func:`load_balancing_loss`), differentiable."""
    z_loss: torch.Tensor
    """Scalar router z-loss (:func:`router_z_loss`), differentiable."""
    counts: torch.Tensor
    """``(E,)`` float assignments each expert was chosen for (before the capacity limit), detached."""
    dropped: torch.Tensor
    """Scalar share of assignments dropped by the capacity limit (0 without one), detached."""


class Router(nn.Module):
    r"""Top-k softmax gating.

    $$p = \operatorname{softmax}(W_r x),\qquad \mathcal{T} = \operatorname{top-}k(p),\qquad
    g_e = \frac{p_e}{\sum_{j \in \mathcal{T}} p_j}\ (e \in \mathcal{T})$$

    Mixtral renormalises the chosen probabilities to sum to one; the Switch Transformer (top-1) keeps
    the raw $p_e$, because a renormalised single gate is always 1 and would pass no gradient to the
    router through the language-model loss. Optional noise (Shazeer et al., 2017, with a fixed scale
    instead of a learned one) adds $\sigma\,\mathcal N(0, 1)$ to the logits while training, so that
    experts with a slightly lower score still get tried.

    :param n_embd: the model width C.
    :param n_expert: number of experts E.
    :param top_k: experts per token k.
    :param noise_std: the scale of the logit noise while training (0: none).
    :param renormalize: renormalise the k chosen probabilities to sum to 1.

    Introduced in {doc}`/book/part5/01-moe-theory`.
    """

    def __init__(
        self,
        n_embd: int,
        n_expert: int,
        top_k: int,
        *,
        noise_std: float = 0.0,
        renormalize: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= n_expert:
            raise ValueError(f"top_k: must be in [1, n_expert={n_expert}], got {top_k}")
        self.top_k = top_k
        self.noise_std = noise_std
        self.renormalize = renormalize
        self.weight = nn.Parameter(
            torch.empty(n_expert, n_embd)
        )  # (E, C), HF Mixtral's gate.weight
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Score and choose experts for each token.

        :param x: ``(N, C)`` tokens.
        :returns: a :class:`RouterOutput`.
        """
        logits = F.linear(x, self.weight)  # (N, E)
        if self.training and self.noise_std > 0:
            logits = logits + self.noise_std * torch.randn_like(logits)
        # At least fp32 (a bf16 softmax over experts is coarse); a float64 model keeps float64.
        probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(
            dim=-1
        )  # (N, E)
        weights, indices = probs.topk(self.top_k, dim=-1)  # (N, k) each
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return RouterOutput(logits, probs, weights, indices)


class Expert(nn.Module):
    r"""One SwiGLU expert: $W_\text{down}(\operatorname{SiLU}(W_\text{gate}x) \odot W_\text{up}x)$.

    :param n_embd: the model width C.
    :param hidden: the expert's hidden width.
    :param bias: add biases to the projections.

    Introduced in {doc}`/book/part5/03-moe-layer`.
    """

    def __init__(self, n_embd: int, hidden: int, *, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(n_embd, hidden, bias=bias)
        self.up_proj = nn.Linear(n_embd, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the expert.

        :param x: ``(n, C)`` the tokens routed here.
        :returns: ``(n, C)``.
        """
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def load_balancing_loss(probs: torch.Tensor, indices: torch.Tensor, n_expert: int) -> torch.Tensor:
    r"""The Switch Transformer's auxiliary load-balancing loss (Fedus et al., 2021, eq. 4–6).

    $$\mathcal L_\text{aux} = E \sum_{e=1}^{E} f_e\, P_e,\qquad
    f_e = \frac{\#\{\text{assignments to } e\}}{N k},\qquad P_e = \frac1N \sum_{n} p_{n,e}$$

    $f_e$ (counts) has no gradient; $P_e$ does, and pushing down $\sum_e f_e P_e$ lowers the
    probability of the experts that receive the most tokens. Its minimum over balanced routings is 1
    (all $f_e = P_e = 1/E$). With top-$k$ this is the Switch form with $f$ counted over all $N k$
    assignments; Hugging Face's Mixtral loss is $k$ times it.

    :param probs: ``(N, E)`` router probabilities.
    :param indices: ``(N, k)`` chosen experts.
    :param n_expert: E.
    :returns: the scalar loss.

    Introduced in {doc}`/book/part5/02-moe-balancing`.
    """
    counts = torch.bincount(indices.reshape(-1), minlength=n_expert).to(probs.dtype)  # (E,)
    f = counts / indices.numel()
    P = probs.mean(dim=0)  # (E,)
    return n_expert * (f * P).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    r"""The router z-loss of ST-MoE (Zoph et al., 2022): $\frac1N \sum_n \bigl(\log \sum_e e^{z_{n,e}}\bigr)^2$.

    It keeps router logits small, which keeps the softmax (and bf16 arithmetic) well conditioned.

    :param logits: ``(N, E)`` router logits.
    :returns: the scalar loss.

    Introduced in {doc}`/book/part5/02-moe-balancing`.
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.logsumexp(z, dim=-1).square().mean()


def expert_capacity(n_tokens: int, n_expert: int, top_k: int, capacity_factor: float) -> int:
    r"""Slots per expert: $\lceil \text{factor} \cdot N k / E \rceil$ (a factor of 1 is a perfect split).

    :param n_tokens: tokens in the batch N.
    :param n_expert: experts E.
    :param top_k: assignments per token k.
    :param capacity_factor: head-room over a perfectly even split.
    :returns: the capacity.

    Introduced in {doc}`/book/part5/02-moe-balancing`.
    """
    return math.ceil(capacity_factor * n_tokens * top_k / n_expert)


class MoE(nn.Module):
    r"""A sparse mixture-of-experts feed-forward layer, optionally with always-on shared experts.

    $$y = \sum_{e \in \mathcal T(x)} g_e(x)\, \operatorname{Expert}_e(x) \;+\; \sum_{s} \operatorname{Shared}_s(x)$$

    Dispatch is vectorized: the ``N k`` (token, expert) assignments are sorted by expert, so each
    expert receives one contiguous slice of token indices, runs once on all its tokens, and adds its
    gated output back with ``index_add_``. The only Python loop is over experts. With a capacity factor
    each expert processes at most :func:`expert_capacity` assignments; first choices take precedence over
    second choices, then earlier tokens over later ones (as in GShard), and a dropped assignment simply
    contributes nothing (the token still flows through the residual connection).

    Called as ``layer(x)`` it returns the output alone, so it drops in wherever a dense MLP goes;
    ``layer(x, return_stats=True)`` also returns a :class:`MoEStats` with the balancing and z losses
    (with gradients) and the routing statistics of that call. The layer keeps no state between calls.

    :param n_embd: the model width C.
    :param n_expert: routed experts E.
    :param top_k: experts per token k.
    :param hidden: each expert's hidden width.
    :param n_shared: always-on shared experts (DeepSeekMoE), each of width ``hidden``.
    :param capacity_factor: limit each expert to this multiple of an even share (None: no limit).
    :param noise_std: router logit noise while training.
    :param renormalize: renormalise the chosen gates (Mixtral) or keep raw probabilities (Switch).
    :param bias: biases in the experts' projections.

    Introduced in {doc}`/book/part5/03-moe-layer`.
    """

    def __init__(
        self,
        n_embd: int,
        n_expert: int,
        top_k: int,
        hidden: int,
        *,
        n_shared: int = 0,
        capacity_factor: float | None = None,
        noise_std: float = 0.0,
        renormalize: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.n_expert = n_expert
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.router = Router(n_embd, n_expert, top_k, noise_std=noise_std, renormalize=renormalize)
        self.experts = nn.ModuleList(Expert(n_embd, hidden, bias=bias) for _ in range(n_expert))
        self.shared = nn.ModuleList(Expert(n_embd, hidden, bias=bias) for _ in range(n_shared))

    def forward(
        self, x: torch.Tensor, *, return_stats: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, MoEStats]:
        """Route, dispatch, combine.

        :param x: ``(B, T, C)``.
        :param return_stats: also return the :class:`MoEStats` of this call.
        :returns: ``(B, T, C)``, or ``((B, T, C), stats)`` with ``return_stats``.
        """
        B, T, C = x.shape
        flat = x.reshape(-1, C)  # (N, C)
        N, E, k = flat.size(0), self.n_expert, self.top_k
        route = self.router(flat)

        # Assignments in slot-major order (all first choices, then all second choices, ...), so a
        # stable sort by expert puts first choices ahead of second ones within each expert.
        expert_of = route.indices.t().reshape(-1)  # (k N,)
        token_of = torch.arange(N, device=x.device).repeat(k)  # (k N,)
        gate_of = route.weights.t().reshape(-1)  # (k N,)
        order = torch.argsort(expert_of, stable=True)  # (k N,) grouped by expert
        counts = torch.bincount(expert_of, minlength=E)  # (E,)
        starts = torch.cumsum(counts, 0) - counts  # (E,) where each expert's group begins
        keep = counts
        if self.capacity_factor is not None:
            keep = counts.clamp(max=expert_capacity(N, E, k, self.capacity_factor))

        out = torch.zeros_like(flat)  # (N, C)
        starts_l, keep_l = starts.tolist(), keep.tolist()
        for e, expert in enumerate(self.experts):
            if keep_l[e] == 0:
                continue
            idx = order[starts_l[e] : starts_l[e] + keep_l[e]]  # (n_e,) assignment ids
            tokens = token_of[idx]  # (n_e,)
            y = expert(flat[tokens]) * gate_of[idx, None].to(flat.dtype)  # (n_e, C)
            out.index_add_(0, tokens, y.to(out.dtype))
        for shared in self.shared:
            out = out + shared(flat)

        out = out.reshape(B, T, C)
        if not return_stats:
            return out
        stats = MoEStats(
            aux_loss=load_balancing_loss(route.probs, route.indices, E),
            z_loss=router_z_loss(route.logits),
            counts=counts.detach().float(),
            dropped=(1.0 - keep.sum() / counts.sum()).detach().float(),
        )
        return out, stats


def moe_metrics(stats: Sequence[MoEStats] | None) -> dict[str, float]:
    """Turn the MoE layers' statistics of one forward pass into a flat dict for logging.

    ``moe/aux_loss`` and ``moe/z_loss`` are summed over layers; ``moe/dropped`` is the mean share of
    assignments dropped by the capacity limit; ``moe/max_load`` is the largest share of assignments
    any expert of any layer got (``1/E`` is perfect balance); ``moe/load/<l>/<e>`` is expert ``e``'s
    share in the ``l``-th MoE layer. The values are Python floats (one device sync).

    :param stats: one :class:`MoEStats` per MoE layer, bottom to top, as in
        :attr:`~llmbook.model.gpt.GPTOutput.moe`; None or empty for a dense model.
    :returns: metric name to value (empty for a dense model).

    Introduced in {doc}`/book/part5/03-moe-layer`.
    """
    if not stats:
        return {}
    shares = [s.counts / s.counts.sum() for s in stats]  # each (E,)
    metrics = {
        "moe/aux_loss": sum(float(s.aux_loss.detach()) for s in stats),
        "moe/z_loss": sum(float(s.z_loss.detach()) for s in stats),
        "moe/dropped": sum(float(s.dropped) for s in stats) / len(stats),
        "moe/max_load": max(float(s.max()) for s in shares),
    }
    for layer, share in enumerate(shares):
        for e, value in enumerate(share.tolist()):
            metrics[f"moe/load/{layer}/{e}"] = value
    return metrics
