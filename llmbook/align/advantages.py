r"""Generalized advantage estimation (GAE) over the tokens of a completion.

In RLHF each completion is one episode: at step $t$ the state is the prompt plus the first $t$
completion tokens, the action is token $t$, and the reward $r_t$ is usually the per-token KL
penalty, plus the reward model's score on the last token. The value head predicts
$V_t \approx \mathbb{E}[\sum_{l \ge 0} \gamma^l r_{t+l}]$. The episode ends after the last real token,
so the value after it is 0.

The **TD error** $\delta_t = r_t + \gamma V_{t+1} - V_t$ is a one-step estimate of the advantage of
token $t$: what happened, minus what was expected. Summing $k$ of them telescopes into the
$k$-step estimate,

$$\hat A^{(k)}_t = \sum_{l=0}^{k-1} \gamma^l \delta_{t+l}
= \sum_{l=0}^{k-1} \gamma^l r_{t+l} + \gamma^k V_{t+k} - V_t .$$

Short horizons lean on $V$ (low variance, biased where $V$ is wrong), long ones on the sampled
rewards (unbiased, noisy). GAE (Schulman et al., 2016) averages all horizons with weights
$(1-\lambda)\lambda^{k-1}$, and the sum collapses to a discounted sum of TD errors with a backward
recursion:

$$\hat A_t = (1-\lambda)\sum_{k\ge1}\lambda^{k-1}\hat A^{(k)}_t = \sum_{l\ge0} (\gamma\lambda)^l \delta_{t+l},
\qquad \hat A_t = \delta_t + \gamma\lambda\,\hat A_{t+1}.$$

Two limits pin it down. With $\lambda = 0$, $\hat A_t = \delta_t$: one-step TD. With $\lambda = 1$ the
sum telescopes completely, $\hat A_t = \sum_{l\ge0}\gamma^l r_{t+l} - V_t$: the Monte Carlo return
minus the value as a baseline. The value head's target is the $\lambda$-return
$\hat A_t + V_t$ (``returns``). On a padded batch a mask $m_t$ (True on real tokens) ends each
episode: $V_{t+1}$ and $\hat A_{t+1}$ are multiplied by $m_{t+1}$.
"""

from __future__ import annotations

import torch


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0):  # False for NaN
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return value


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Advantages and value targets by generalized advantage estimation.

    $\delta_t = r_t + \gamma V_{t+1} m_{t+1} - V_t$ and
    $\hat A_t = \delta_t + \gamma\lambda\, m_{t+1} \hat A_{t+1}$, backwards from the last column;
    ``returns`` $= \hat A + V$. Rewards and values at masked-out positions are never read, and both
    outputs are 0 there (an empty row gives a row of zeros). Computed without gradient: the
    advantages are constants of the policy loss and the returns are targets of the value loss.

    :param rewards: per-token rewards ``(B, N)``.
    :param values: the value head's predictions ``(B, N)`` (detached here).
    :param mask: bool ``(B, N)``, True on the completion tokens that count: per row, a prefix of
        True (up to and including the last token) followed by False.
    :param gamma: the discount $\gamma \in [0, 1]$.
    :param lam: the GAE $\lambda \in [0, 1]$.
    :returns: ``(advantages, returns)``, each ``(B, N)`` in the promoted dtype of ``rewards``
        and ``values``.
    :raises ValueError: for shapes that differ or are not 2-D, a non-bool mask or one that is not
        a prefix per row, or ``gamma``/``lam`` outside [0, 1] or NaN.

    Introduced in {doc}`/book/part8/03-ppo-objective`.
    """
    gamma, lam = _check_unit("gamma", gamma), _check_unit("lam", lam)
    if rewards.dim() != 2:
        raise ValueError(f"rewards: expected (B, N), got shape {tuple(rewards.shape)}")
    if values.shape != rewards.shape:
        raise ValueError(
            f"values: expected shape {tuple(rewards.shape)}, got {tuple(values.shape)}"
        )
    if mask.shape != rewards.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask: expected a bool tensor of shape {tuple(rewards.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("mask: expected each row to be True up to its last token, then False")
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    r = torch.where(mask, rewards.to(dtype), zero)  # (B, N)
    v = torch.where(mask, values.detach().to(dtype), zero)  # (B, N)
    B, N = r.shape
    next_v = torch.cat([v[:, 1:], zero.expand(B, 1)], dim=1)  # (B, N), already 0 past the end
    next_m = torch.cat([mask[:, 1:], mask.new_zeros(B, 1)], dim=1).to(dtype)  # (B, N)
    delta = r + gamma * next_v - v  # (B, N)
    advantages = torch.zeros_like(delta)
    carry = torch.zeros(B, dtype=dtype, device=r.device)  # A_{t+1}
    for t in reversed(range(N)):
        carry = delta[:, t] + gamma * lam * next_m[:, t] * carry
        advantages[:, t] = carry
    advantages = torch.where(mask, advantages, zero)
    returns = torch.where(mask, advantages + v, zero)
    return advantages, returns


GROUP_SCALINGS = ("group", "batch", "none")
"""How :func:`group_advantages` divides the centred rewards: by each group's standard deviation
(GRPO), by the whole batch's (as TRL's ``scale_rewards="batch"``), or not at all (Dr. GRPO)."""


def _check_groups(rewards: torch.Tensor, group_size: int) -> int:
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(
            f"rewards: expected a float tensor (B,), got {rewards.dtype} {tuple(rewards.shape)}"
        )
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected a positive integer, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"group_size: {group_size} does not divide the {rewards.numel()} rewards "
            "(each group's completions must be adjacent rows)"
        )
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards: expected finite values")
    return rewards.numel() // group_size


@torch.no_grad()
def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    r"""GRPO's group-relative advantages: each reward minus its group's mean, optionally scaled.

    Rows ``g*k .. g*k + k - 1`` are the ``k = group_size`` completions of prompt ``g``. With
    $\bar r_g$ the group mean and $s$ the (Bessel-corrected) standard deviation,
    $\hat A_i = (r_i - \bar r_g)/(s + \varepsilon)$ for ``scale="group"`` ($s$ of the group),
    ``"batch"`` ($s$ of all rewards) or $\hat A_i = r_i - \bar r_g$ for ``"none"``. A group whose
    rewards are all equal (all right or all wrong) gets advantages of exactly 0: it carries no
    learning signal. One value per completion; the loss broadcasts it to every token.

    :param rewards: one scalar reward per completion ``(B,)``, groups in adjacent rows.
    :param group_size: completions per prompt, ``k >= 1``, dividing B (a group of 1 has advantage 0).
    :param scale: one of :data:`GROUP_SCALINGS`.
    :param eps: added to the standard deviation (TRL's 1e-4), ``> 0``.
    :returns: ``(B,)`` advantages in the rewards' dtype.
    :raises ValueError: for a non-float or non-1-D ``rewards``, non-finite rewards, a ``group_size``
        that does not divide B, an unknown ``scale`` or an ``eps`` that is not a finite number > 0.

    Introduced in {doc}`/book/part9/02-advantages`.
    """
    G = _check_groups(rewards, group_size)
    if scale not in GROUP_SCALINGS:
        raise ValueError(f"scale: expected one of {GROUP_SCALINGS}, got {scale!r}")
    eps = float(eps)
    if not (0.0 < eps < float("inf")):
        raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
    grouped = rewards.view(G, group_size)  # (G, k)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (G, k)
    if scale == "none":
        return centred.reshape(-1)
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped)
    else:
        std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
    return (centred / (std + eps)).reshape(-1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups have all-equal rewards (all right, all wrong): their advantages are all 0.

    :param rewards: one reward per completion ``(B,)``, groups in adjacent rows.
    :param group_size: completions per prompt, dividing B.
    :returns: ``(B // group_size,)`` bool, True for a group with a single reward value.
    :raises ValueError: as :func:`group_advantages`.

    Introduced in {doc}`/book/part9/02-advantages`.
    """
    G = _check_groups(rewards, group_size)
    grouped = rewards.view(G, group_size)
    return (grouped == grouped[:, :1]).all(dim=1)
