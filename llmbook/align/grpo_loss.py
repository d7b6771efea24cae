r"""GRPO's loss: PPO's clipped ratio without a critic, the KL to the reference as a loss term, and three ways to average.

GRPO (Shao et al., 2024) keeps PPO's clipped surrogate but replaces the learned value baseline by
the group mean: every token $t$ of completion $i$ gets the completion's advantage $\hat A_i$
(:func:`~llmbook.align.advantages.group_advantages`). With the ratio
$\rho_{i,t} = \pi_\theta(y_{i,t})/\pi_\text{old}(y_{i,t})$ and asymmetric clip range
$[1-\epsilon_\text{low}, 1+\epsilon_\text{high}]$ (DAPO's "clip higher" when
$\epsilon_\text{high} > \epsilon_\text{low}$), the per-token loss is

$$\ell_{i,t} = -\min\big(\rho_{i,t}\hat A_i,\ \mathrm{clip}(\rho_{i,t}, 1-\epsilon_\text{low}, 1+\epsilon_\text{high})\,\hat A_i\big)
+ \beta\, k_3(i,t),$$

where $k_3 = \pi_\text{ref}/\pi_\theta - \log(\pi_\text{ref}/\pi_\theta) - 1 \ge 0$ is Schulman's
estimator of $\mathrm{KL}(\pi_\theta\|\pi_\text{ref})$ (:mod:`~llmbook.align.kl`), computed from the
*current* policy's log-probabilities so that its gradient reaches $\theta$. Unlike PPO for RLHF
(Part 8), the KL is **not** folded into the reward: it is a term of the loss, and must appear only
there (adding it to the rewards as well would count it twice). With ``kl_ratio_correction`` the
term is multiplied by $\rho_{i,t}$, which makes its gradient the unbiased gradient of the reverse KL
when the samples came from $\pi_\text{old} \ne \pi_\theta$ (TRL's default ``use_bias_correction_kl``).

How the per-token losses $\ell_{i,t}$ (mask $m_{i,t}$, lengths $L_i = \sum_t m_{i,t}$, $B$
completions) become one number is where the variants differ, and it sets how much each token
weighs (:data:`AGGREGATIONS`):

- ``"grpo"``: $\frac1B\sum_i \frac1{L_i}\sum_t \ell_{i,t}$, per-sequence mean, then batch mean. A token
  of a short completion weighs more than one of a long completion. For a right answer
  ($\hat A>0$) the short one is reinforced harder; for a wrong answer ($\hat A<0$) the long one is
  penalised less per token: a drift towards long wrong answers.
- ``"dapo"``: $\frac1{Z}\sum_{i,t}\ell_{i,t}$ with $Z$ the number of counted tokens (DAPO's token-level
  mean): every token weighs the same, whatever the length of its completion.
- ``"dr_grpo"``: $\frac1{B\,L_\text{max}}\sum_{i,t}\ell_{i,t}$ with a constant $L_\text{max}$ (the
  generation budget): every token weighs the same, and the scale no longer depends on how long the
  batch's answers happened to be (Liu et al., 2025, "Dr. GRPO").
"""

from __future__ import annotations

import torch

from llmbook.align.kl import kl_estimate
from llmbook.align.normalize import masked_mean
from llmbook.align.ppo_loss import _check_coef, _check_shapes, _clean

AGGREGATIONS = ("grpo", "dapo", "dr_grpo")
"""The loss aggregations :func:`aggregate` knows: per-sequence mean then batch mean (GRPO),
token-level mean (DAPO), sum over a constant (Dr. GRPO)."""


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "grpo",
    *,
    max_length: int | None = None,
    normalizer: float | None = None,
) -> torch.Tensor:
    r"""Reduce per-token losses ``(B, N)`` to a scalar, one of the :data:`AGGREGATIONS` (see the module).

    Masked-out positions are never read (they may hold inf or NaN). An empty row counts as a
    sequence of loss 0 in ``"grpo"`` and ``"dr_grpo"`` and adds nothing in ``"dapo"``.

    :param per_token: ``(B, N)`` losses.
    :param mask: bool ``(B, N)``, True on counted tokens.
    :param aggregation: ``"grpo"``, ``"dapo"`` or ``"dr_grpo"``.
    :param max_length: $L_\text{max}$ for ``"dr_grpo"`` (required there; default elsewhere: unused).
    :param normalizer: for ``"dapo"``, the token count $Z$ to divide by (default: the counted tokens
        of this batch; a training loop passes the whole rollout batch's count per minibatch so
        that minibatches weigh their tokens equally, as TRL's ``num_items_in_batch``).
    :returns: the scalar loss.
    :raises ValueError: for an unknown aggregation, a missing or non-positive ``max_length`` for
        ``"dr_grpo"``, a ``normalizer`` that is not a finite number > 0, or shapes that differ.

    Introduced in {doc}`/book/part9/03-policy-only-objective`.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation: expected one of {AGGREGATIONS}, got {aggregation!r}")
    _check_shapes(mask, per_token=per_token)
    if per_token.dim() != 2:
        raise ValueError(f"per_token: expected (B, N), got {tuple(per_token.shape)}")
    total = _clean(per_token, mask)
    B = per_token.size(0)
    if aggregation == "grpo":
        return masked_mean(per_token, mask, dim=1).sum() / max(B, 1)
    if aggregation == "dr_grpo":
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length: dr_grpo needs a positive integer, got {max_length!r}")
        return total.sum() / (max(B, 1) * max_length)
    if normalizer is None:
        normalizer = max(int(mask.sum()), 1)
    normalizer = _check_coef("normalizer", normalizer, positive=True)
    return total.sum() / normalizer


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    aggregation: str = "grpo",
    max_length: int | None = None,
    normalizer: float | None = None,
    kl_ratio_correction: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""The GRPO loss (see the module): clipped surrogate plus $\beta\,k_3$, aggregated.

    :param logps: $\log\pi_\theta$ of the sampled tokens ``(B, N)``, with gradient.
    :param old_logps: $\log\pi_\text{old}$ at sampling time ``(B, N)`` (treated as constants).
    :param advantages: $\hat A$, one per completion ``(B,)`` (broadcast to its tokens) or per token
        ``(B, N)`` (treated as constants).
    :param mask: bool ``(B, N)``, True on the completion tokens.
    :param ref_logps: $\log\pi_\text{ref}$ of the same tokens ``(B, N)``; required when ``beta > 0``.
    :param beta: the KL coefficient $\beta \ge 0$.
    :param clip_low: $\epsilon_\text{low} > 0$.
    :param clip_high: $\epsilon_\text{high} > 0$ (None: ``clip_low``).
    :param aggregation: one of :data:`AGGREGATIONS` (see :func:`aggregate`).
    :param max_length: $L_\text{max}$ for ``"dr_grpo"``.
    :param normalizer: the token count for ``"dapo"`` (see :func:`aggregate`).
    :param kl_ratio_correction: multiply $k_3$ by $\rho$ (TRL's ``use_bias_correction_kl``).
    :returns: ``(loss, metrics)``. The metrics (detached floats) are ``loss``, ``policy_loss`` (the
        surrogate part, aggregated the same way), ``kl`` (mean $k_3$ per counted token, without the
        correction), ``clipfrac_low`` / ``clipfrac_high`` (share of tokens clipped at
        $1-\epsilon_\text{low}$ with $\hat A<0$ / at $1+\epsilon_\text{high}$ with $\hat A>0$, the
        tokens that give no gradient), ``clipfrac`` (their sum), ``approx_kl``
        ($\tfrac12\,\mathrm{mean}(\log\rho)^2$) and ``ratio`` (mean $\rho$). With no counted token
        they are 0.
    :raises ValueError: for shapes that differ from ``mask``'s, a ``beta``, ``clip_low`` or
        ``clip_high`` that is not a finite number in range, ``beta > 0`` without ``ref_logps``, or
        an invalid aggregation setting.

    Introduced in {doc}`/book/part9/03-policy-only-objective`.
    """
    beta = _check_coef("beta", beta)
    clip_low = _check_coef("clip_low", clip_low, positive=True)
    clip_high = (
        clip_low if clip_high is None else _check_coef("clip_high", clip_high, positive=True)
    )
    if clip_low >= 1.0:
        raise ValueError(f"clip_low: must be < 1 (the ratio is positive), got {clip_low!r}")
    _check_shapes(mask, logps=logps, old_logps=old_logps)
    if advantages.dim() == 1:
        if advantages.shape[0] != mask.shape[0]:
            raise ValueError(
                f"advantages: expected ({mask.shape[0]},) or {tuple(mask.shape)}, "
                f"got {tuple(advantages.shape)}"
            )
        advantages = advantages[:, None].expand(mask.shape)
    _check_shapes(mask, advantages=advantages)
    if beta > 0.0 and ref_logps is None:
        raise ValueError("ref_logps: required when beta > 0 (the KL term needs the reference)")
    log_ratio = _clean(logps - old_logps.detach(), mask)  # (B, N), 0 on padding
    adv = _clean(advantages.detach().to(logps.dtype), mask)  # (B, N)
    ratio = torch.exp(log_ratio)  # (B, N)
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surrogate = -torch.minimum(ratio * adv, clipped_ratio * adv)  # (B, N)
    per_token = surrogate
    kl = None
    if ref_logps is not None:
        _check_shapes(mask, ref_logps=ref_logps)
        kl = kl_estimate(_clean(logps, mask), _clean(ref_logps.detach(), mask), "k3")  # (B, N)
        if beta > 0.0:
            per_token = per_token + beta * (kl * ratio if kl_ratio_correction else kl)
    loss = aggregate(per_token, mask, aggregation, max_length=max_length, normalizer=normalizer)
    with torch.no_grad():
        counted = bool(mask.any())

        def mean(x: torch.Tensor) -> float:
            return float(masked_mean(x, mask)) if counted else 0.0

        low = ((ratio < 1.0 - clip_low) & (adv < 0)).float()
        high = ((ratio > 1.0 + clip_high) & (adv > 0)).float()
        metrics = {
            "loss": float(loss),
            "policy_loss": float(
                aggregate(
                    surrogate, mask, aggregation, max_length=max_length, normalizer=normalizer
                )
            ),
            "kl": mean(kl) if kl is not None else 0.0,
            "clipfrac_low": mean(low),
            "clipfrac_high": mean(high),
            "clipfrac": mean(low + high),
            "approx_kl": mean(0.5 * log_ratio**2),
            "ratio": mean(ratio),
        }
    return loss, metrics
