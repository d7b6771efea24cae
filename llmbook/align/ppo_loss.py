r"""The PPO losses for a language model: clipped policy surrogate, clipped value loss, entropy.

Rollouts were sampled from the policy as it was, $\pi_\text{old}$; PPO then takes several gradient
steps on them. For token $t$ with advantage $\hat A_t$, the probability ratio
$\rho_t = \pi_\theta(x_t)/\pi_\text{old}(x_t)$ (``exp(logps - old_logps)``) makes
$\mathbb{E}_{\pi_\text{old}}[\rho_t \hat A_t]$ a *surrogate* whose gradient at $\theta = \theta_\text{old}$
is the policy gradient ($\nabla\rho = \rho\,\nabla\log\pi_\theta = \nabla\log\pi_\theta$ there). Far from
$\theta_\text{old}$ the surrogate stops being trustworthy, since the advantages were measured under
the old policy. PPO's **clipped surrogate** (Schulman et al., 2017) maximises

$$L^\text{CLIP} = \mathbb{E}_t\left[\min\big(\rho_t \hat A_t,\ \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\,\hat A_t\big)\right].$$

It is a **pessimistic bound**: the min of the unclipped objective and a clipped one is never above
either. Where $\hat A_t > 0$ the token should become likelier, but once $\rho_t > 1+\epsilon$ the clipped
term is the min and is constant in $\theta$, so there is no more gain (and no gradient) from pushing
further; where $\hat A_t < 0$ the same happens below $1-\epsilon$. Moves that make the objective
*worse* are never clipped: a ratio that went the wrong way keeps its full gradient and is pulled back.
As a loss to minimise this is $\max(-\hat A_t\rho_t,\ -\hat A_t\,\mathrm{clip}(\rho_t))$, averaged here over
every counted token of the batch (token level, as TRL's PPO). The **clip fraction** is the share of
tokens where the clipped term wins, i.e. tokens that no longer contribute a gradient: it stays
near 0 while the policy is close to the one that sampled the data, and a large value means the
update has run far ahead of it.

The **value loss** clips too: the new prediction may move at most $\epsilon_v$ from the rollout's,
$V^\text{clip} = V_\text{old} + \mathrm{clip}(V - V_\text{old}, -\epsilon_v, \epsilon_v)$, and the worse of the two
squared errors against the return $R$ is kept, $\tfrac12\max((V - R)^2, (V^\text{clip} - R)^2)$.

How far the policy moved is monitored with $\widehat{\mathrm{KL}} = \tfrac12\,\mathrm{mean}((\log\pi_\theta - \log\pi_\text{old})^2)$,
the $k_2$ estimator of :mod:`~llmbook.align.kl` between the old and new policy (TRL's ``approxkl``);
it is second-order accurate while the policies are close, which is exactly the regime PPO keeps.
"""

from __future__ import annotations

import torch

from llmbook.align.normalize import masked_mean


def _check_coef(name: str, value: float, *, positive: bool = False) -> float:
    value = float(value)
    ok = value > 0.0 if positive else value >= 0.0
    if not (ok and value < float("inf")):
        raise ValueError(
            f"{name}: expected a finite number {'>' if positive else '>='} 0, got {value!r}"
        )
    return value


def _check_shapes(mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    if mask.dtype != torch.bool or mask.dim() == 0:
        raise ValueError(
            f"mask: expected a bool tensor such as (B, N), got {mask.dtype} {tuple(mask.shape)}"
        )
    for name, t in tensors.items():
        if t.shape != mask.shape:
            raise ValueError(
                f"{name}: expected shape {tuple(mask.shape)} (mask's), got {tuple(t.shape)}"
            )


def _clean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Padding may hold anything (inf, NaN); replace it before exp or squaring so that neither the
    # loss nor its gradient can see it.
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def ppo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""PPO's clipped policy loss, $\mathrm{mean}_t \max(-\hat A_t\rho_t,\ -\hat A_t\,\mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon))$.

    $\rho_t = \exp(\log\pi_\theta(x_t) - \log\pi_\text{old}(x_t))$; the mean is over all counted tokens of the
    batch. ``old_logps`` and ``advantages`` are constants (detached).

    :param logps: $\log\pi_\theta$ of the sampled tokens ``(B, N)``, with gradient.
    :param old_logps: $\log\pi_\text{old}$ of the same tokens at rollout time ``(B, N)``.
    :param advantages: $\hat A$ ``(B, N)``.
    :param mask: bool ``(B, N)``, True on the tokens that count.
    :param clip: $\epsilon > 0$.
    :returns: ``(loss, metrics)``; the metrics (detached floats) are ``policy_loss``, ``clipfrac``
        (share of counted tokens where the clipped term is the larger loss), ``approx_kl``
        ($\tfrac12\,\mathrm{mean}((\log\pi_\theta - \log\pi_\text{old})^2)$), ``ratio`` (mean $\rho$) and
        ``ratio_max``.
    :raises ValueError: for shapes that differ from ``mask``'s, a non-bool or all-False mask, or a
        ``clip`` that is not a finite number > 0.

    Introduced in {doc}`/book/part8/03-ppo-objective`.
    """
    clip = _check_coef("clip", clip, positive=True)
    _check_shapes(mask, logps=logps, old_logps=old_logps, advantages=advantages)
    log_ratio = _clean(logps - old_logps.detach(), mask)  # (B, N)
    adv = _clean(advantages.detach(), mask)  # (B, N)
    ratio = torch.exp(log_ratio)  # (B, N), 1 on padding
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {
            "policy_loss": float(loss),
            "clipfrac": float(masked_mean((clipped > unclipped).to(ratio.dtype), mask)),
            "approx_kl": float(0.5 * masked_mean(log_ratio**2, mask)),
            "ratio": float(masked_mean(ratio, mask)),
            "ratio_max": float(ratio[mask].max()),
        }
    return loss, metrics


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""PPO's clipped value loss, $\tfrac12\,\mathrm{mean}_t \max((V_t - R_t)^2, (V^\text{clip}_t - R_t)^2)$.

    $V^\text{clip} = V_\text{old} + \mathrm{clip}(V - V_\text{old}, -\epsilon_v, \epsilon_v)$; the mean is
    over all counted tokens. ``old_values`` and ``returns`` are constants (detached).

    :param values: the value head's predictions now ``(B, N)``, with gradient.
    :param old_values: its predictions at rollout time ``(B, N)``.
    :param returns: the targets $R$ (from :func:`~llmbook.align.advantages.gae`) ``(B, N)``.
    :param mask: bool ``(B, N)``, True on the tokens that count.
    :param clip: $\epsilon_v > 0$, in the units of the values.
    :returns: ``(loss, metrics)`` with ``value_loss`` and ``value_clipfrac`` (share of counted
        tokens where the clipped error is the larger).
    :raises ValueError: for shapes that differ from ``mask``'s, a non-bool or all-False mask, or a
        ``clip`` that is not a finite number > 0.

    Introduced in {doc}`/book/part8/03-ppo-objective`.
    """
    clip = _check_coef("clip", clip, positive=True)
    _check_shapes(mask, values=values, old_values=old_values, returns=returns)
    v = _clean(values, mask)
    old = _clean(old_values.detach(), mask)
    target = _clean(returns.detach(), mask)
    v_clipped = old + (v - old).clamp(-clip, clip)
    err = (v - target) ** 2
    err_clipped = (v_clipped - target) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        metrics = {
            "value_loss": float(loss),
            "value_clipfrac": float(masked_mean((err_clipped > err).to(err.dtype), mask)),
        }
    return loss, metrics


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    r"""The entropy of each next-token distribution, $H = \log\sum_v e^{z_v} - \sum_v p_v z_v$.

    The logits are first shifted by their maximum (the entropy does not change), so both terms
    stay of order $\log V$ however large the logits are; a logit of $-\infty$ (a token made
    impossible) contributes 0. Half-precision logits are computed in float32.

    :param logits: ``(B, N, V)`` (any leading shape works).
    :returns: ``(B, N)``, in nats, differentiable.
    :raises ValueError: for a 0-d or non-float ``logits``.

    Introduced in {doc}`/book/part8/03-ppo-objective`.
    """
    if logits.dim() == 0 or not torch.is_floating_point(logits):
        raise ValueError(
            f"logits: expected a float tensor (..., V), got {logits.dtype} {tuple(logits.shape)}"
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    z = logits - logits.amax(dim=-1, keepdim=True).detach()  # (B, N, V), max 0
    p = torch.softmax(z, dim=-1)
    # 0 * -inf is NaN: clamping -inf to the most negative float makes that term an exact 0.
    z = z.clamp(min=torch.finfo(z.dtype).min)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    r"""How much of the returns' variance the value head explains, $1 - \mathrm{Var}(R - V)/\mathrm{Var}(R)$.

    Over the counted positions: 1 is perfect, 0 is no better than predicting the mean return, and
    negative is worse than that. When the returns do not vary at all the ratio is undefined and
    the result is NaN (as in Stable-Baselines3), so a degenerate batch cannot pass for a good fit.

    :param values: predictions ``(B, N)``.
    :param returns: targets ``(B, N)``.
    :param mask: bool ``(B, N)``, True on the tokens that count.
    :returns: a Python float (computed in float64).
    :raises ValueError: for shapes that differ from ``mask``'s or a non-bool or all-False mask.

    Introduced in {doc}`/book/part8/03-ppo-objective`.
    """
    _check_shapes(mask, values=values, returns=returns)
    v, r = values.double(), returns.double()
    mean_r = masked_mean(r, mask)
    var_r = float(masked_mean((_clean(r, mask) - mean_r) ** 2, mask))
    if var_r == 0.0:
        return float("nan")
    resid = _clean(r - v, mask)
    var_resid = float(masked_mean((resid - masked_mean(resid, mask)) ** 2, mask))
    return 1.0 - var_resid / var_r


def ppo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float = 0.2,
    value_clip: float = 0.2,
    value_coef: float = 0.1,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""The whole PPO objective, policy loss $+\ c_v\,$value loss $-\ c_H\,\mathrm{mean}(H)$.

    See :func:`ppo_policy_loss` and :func:`ppo_value_loss`; the entropy bonus (mean over counted
    tokens) rewards keeping the next-token distributions spread out.

    :param logps: $\log\pi_\theta$ of the sampled tokens ``(B, N)``.
    :param old_logps: $\log\pi_\text{old}$ at rollout time ``(B, N)``.
    :param advantages: ``(B, N)``.
    :param values: the value head's predictions now ``(B, N)``.
    :param old_values: its predictions at rollout time ``(B, N)``.
    :param returns: the value targets ``(B, N)``.
    :param mask: bool ``(B, N)``, True on the tokens that count.
    :param clip: the ratio clip $\epsilon$.
    :param value_clip: the value clip $\epsilon_v$.
    :param value_coef: $c_v \ge 0$.
    :param entropy: per-token entropy ``(B, N)`` (e.g. :func:`entropy_from_logits`); needed only
        when ``entropy_coef`` > 0.
    :param entropy_coef: $c_H \ge 0$.
    :returns: ``(loss, metrics)``: the metrics of both losses, plus ``loss`` (the total) and, when
        ``entropy`` is given, ``entropy`` (its mean over counted tokens).
    :raises ValueError: for the errors of the two losses, a negative or non-finite coefficient, or
        ``entropy_coef`` > 0 without ``entropy``.

    Introduced in {doc}`/book/part8/03-ppo-objective`.
    """
    value_coef = _check_coef("value_coef", value_coef)
    entropy_coef = _check_coef("entropy_coef", entropy_coef)
    if entropy_coef > 0.0 and entropy is None:
        raise ValueError("entropy: required when entropy_coef > 0")
    policy, metrics = ppo_policy_loss(logps, old_logps, advantages, mask, clip=clip)
    value, value_metrics = ppo_value_loss(values, old_values, returns, mask, clip=value_clip)
    loss = policy + value_coef * value
    metrics.update(value_metrics)
    if entropy is not None:
        _check_shapes(mask, entropy=entropy)
        mean_entropy = masked_mean(entropy, mask)
        if entropy_coef > 0.0:
            loss = loss - entropy_coef * mean_entropy
        metrics["entropy"] = float(mean_entropy.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
