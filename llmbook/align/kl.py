r"""Estimating the KL divergence to the reference model from the tokens the policy sampled.

RLHF keeps the policy $\pi$ close to a frozen reference $\pi_\text{ref}$ by penalising

$$\mathrm{KL}(\pi \,\|\, \pi_\text{ref}) = \mathbb{E}_{x\sim\pi}\left[\log\frac{\pi(x)}{\pi_\text{ref}(x)}\right].$$

The exact sum over the vocabulary is affordable for one token but not for a whole completion, whose
outcomes are all the sequences; what a rollout gives cheaply is, for each *sampled* token $x$, the two
log-probabilities ``logps`` $= \log\pi(x)$ and ``ref_logps`` $= \log\pi_\text{ref}(x)$. Write the
log-ratio $\ell = \log r$, $r = \pi_\text{ref}(x)/\pi(x)$. Three single-sample estimators
(Schulman, "Approximating KL divergence", 2020):

- $k_1 = -\ell$. Its expectation under $\pi$ is the definition above, so it is **unbiased**. But it
  is negative whenever the sampled token is likelier under $\pi_\text{ref}$ than under $\pi$, and its
  variance is large: half the samples can be negative while the KL is small and positive.
- $k_3 = (r - 1) - \ell$. The added term has mean zero,
  $\mathbb{E}_\pi[r] = \sum_x \pi(x)\,\pi_\text{ref}(x)/\pi(x) = \sum_x \pi_\text{ref}(x) = 1$,
  so $k_3$ is **unbiased** too; and since $e^\ell \ge 1 + \ell$ it is **never negative**. The
  added term $r - 1$ is a control variate: it is negatively correlated with $-\ell$ (both are first
  order in $r - 1$, with opposite signs), which cancels most of $k_1$'s noise when
  $\pi \approx \pi_\text{ref}$ and leaves $k_3 = \tfrac12 (r-1)^2 + O((r-1)^3)$.
- $k_2 = \tfrac12 \ell^2$, **never negative** and, near $\pi_\text{ref}$, far less noisy than $k_1$, but **biased**
  (far from it, its spread can exceed $k_1$'s: Part 8.3 measures both). Expanding in
  $u = r - 1$: $-\log r = -u + \tfrac12 u^2 - \tfrac13 u^3 + \dots$, and $\mathbb{E}_\pi[u] = 0$, so
  $\mathrm{KL} = \mathbb{E}_\pi[\tfrac12 u^2] + O(u^3)$, while
  $\tfrac12 (\log r)^2 = \tfrac12 u^2 - \tfrac12 u^3 + \dots$. The two agree to second order: $k_2$ is
  accurate when the distributions are close, and its bias grows (as the third moment of $u$) as
  they drift apart.

Summed over the tokens of a completion, each unbiased per-token estimator gives an unbiased estimate
of the sequence-level KL, because the log-ratio of a sequence is the sum of the per-token ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KL_ESTIMATORS = ("k1", "k2", "k3")
"""The estimators :func:`kl_estimate` knows, in Schulman's naming."""


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    r"""A per-token estimate of $\mathrm{KL}(\pi \,\|\, \pi_\text{ref})$ from sampled tokens.

    With $\ell$ = ``ref_logps - logps``: ``"k1"`` is $-\ell$, ``"k2"`` is $\tfrac12\ell^2$,
    ``"k3"`` is $e^\ell - 1 - \ell$ (computed with ``expm1``, exact near $\ell = 0$). The tokens
    must have been sampled from $\pi$ for the expectations in the module docstring to hold. The
    result is differentiable in both inputs; a large positive $\ell$ makes $k_3$ overflow, which
    callers that use it as a loss sometimes prevent by clamping $\ell$.

    :param logps: $\log\pi(x)$ of the sampled tokens, any shape, e.g. ``(B, N)``.
    :param ref_logps: $\log\pi_\text{ref}(x)$ of the same tokens, the same shape.
    :param kind: one of :data:`KL_ESTIMATORS`.
    :returns: the elementwise estimate, of ``logps``'s shape.
    :raises ValueError: for an unknown ``kind`` or mismatched shapes.

    Introduced in {doc}`/book/part8/03-ppo-objective`.
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"kind: expected one of {KL_ESTIMATORS}, got {kind!r}")
    if logps.shape != ref_logps.shape:
        raise ValueError(
            f"logps, ref_logps: expected the same shape, got {tuple(logps.shape)} "
            f"and {tuple(ref_logps.shape)}"
        )
    log_ratio = ref_logps - logps  # log(pi_ref / pi)
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    return torch.expm1(log_ratio) - log_ratio


def categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    r"""The exact $\mathrm{KL}(p \,\|\, q) = \sum_v p_v (\log p_v - \log q_v)$ over the last dim.

    Both distributions are given by logits (softmax over the last dimension). Outcomes impossible
    under $p$ (logit $-\infty$) contribute 0; an outcome possible under $p$ and impossible under
    $q$ makes the divergence infinite.

    :param p_logits: logits of $p$, ``(..., V)``.
    :param q_logits: logits of $q$, the same shape.
    :returns: ``(...)``, one divergence per distribution.
    :raises ValueError: for mismatched shapes or a 0-d input.

    Introduced in {doc}`/book/part8/03-ppo-objective`.
    """
    if p_logits.shape != q_logits.shape or p_logits.dim() == 0:
        raise ValueError(
            f"p_logits, q_logits: expected the same shape (..., V), got {tuple(p_logits.shape)} "
            f"and {tuple(q_logits.shape)}"
        )
    log_p = F.log_softmax(p_logits, dim=-1)
    log_q = F.log_softmax(q_logits, dim=-1)
    p = log_p.exp()
    # 0 * log 0 = 0; the clamp keeps -inf out of the product (and NaN out of the gradient).
    finite_min = torch.finfo(log_p.dtype).min
    terms = p * (log_p.clamp(min=finite_min) - log_q)
    return torch.where(p > 0, terms, terms.new_zeros(())).sum(-1)
