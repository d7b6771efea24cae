r"""Reward-model losses: pure functions of the chosen and rejected rewards, returning ``(loss, metrics)``.

The Bradley–Terry model says answer $y_c$ beats $y_r$ with probability
$P(y_c \succ y_r) = \sigma(r_c - r_r)$, where $\sigma$ is the logistic function. Maximum likelihood
over labelled pairs minimises the mean of

$$\ell_\text{BT} = -\log \sigma(r_c - r_r - m),
\qquad \frac{\partial \ell}{\partial r_c} = -\sigma(-(r_c - r_r - m)) = -\frac{\partial \ell}{\partial r_r},$$

with margin $m = 0$; Llama 2 adds a per-pair margin $m$ that grows with how clearly raters preferred
one answer. The gradient vanishes once a pair is ranked confidently, and is largest (1) for a pair
ranked badly the wrong way round. The *margin ranking* (hinge) loss
$\max(0, m - (r_c - r_r))$ stops pushing entirely once the gap reaches $m$. Both depend on
differences only, so adding a constant to every reward changes nothing; the *centering* term
$\lambda\,\mathrm{mean}((r_c + r_r)^2)$ pins that free constant near zero (Eisenstein et al., 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    if chosen.shape != rejected.shape or chosen.dim() != 1 or chosen.numel() == 0:
        raise ValueError(
            "chosen, rejected: expected two non-empty 1-D tensors of the same shape, got "
            f"{tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )


def _metrics(chosen: torch.Tensor, rejected: torch.Tensor, loss: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        diff = (chosen - rejected).float()
        return {
            "loss": float(loss),
            "accuracy": float((diff > 0).float().mean()),
            "margin": float(diff.mean()),
            "chosen": float(chosen.float().mean()),
            "rejected": float(rejected.float().mean()),
        }


def reward_centering(chosen: torch.Tensor, rejected: torch.Tensor, coef: float) -> torch.Tensor:
    r"""The centering penalty $\lambda\,\mathrm{mean}((r_c + r_r)^2)$.

    :param chosen: rewards of the chosen answers ``(N,)``.
    :param rejected: rewards of the rejected answers ``(N,)``.
    :param coef: $\lambda \ge 0$.
    :returns: a scalar tensor.
    :raises ValueError: for mismatched shapes or a negative or non-finite ``coef``.

    Introduced in {doc}`/book/part7/03-losses`.
    """
    _check(chosen, rejected)
    coef = float(coef)
    if not (coef >= 0.0 and coef < float("inf")):
        raise ValueError(f"coef: expected a finite number >= 0, got {coef!r}")
    return coef * ((chosen + rejected) ** 2).mean()


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""Bradley–Terry loss $\mathrm{mean}(-\log\sigma(r_c - r_r - m)) + \lambda\,\mathrm{mean}((r_c + r_r)^2)$.

    With ``margin`` None and ``center_coef`` 0 it is the InstructGPT reward-model loss; with a
    per-pair ``margin`` it is Llama 2's; ``center_coef`` adds the centering term (the formula of
    TRL's ``RewardTrainer``). ``logsigmoid`` keeps it finite for any gap.

    :param chosen: rewards of the chosen answers ``(N,)``.
    :param rejected: rewards of the rejected answers ``(N,)``.
    :param margin: a margin per pair ``(N,)`` or one for all (None: 0).
    :param center_coef: the centering coefficient $\lambda$ (0: none).
    :returns: ``(loss, metrics)``; the metrics (detached floats) are ``loss``, ``accuracy`` (share
        of pairs with $r_c > r_r$; a tie counts as wrong), ``margin`` (mean $r_c - r_r$), ``chosen``
        and ``rejected`` (mean rewards).
    :raises ValueError: for mismatched shapes, a margin of another shape or not finite, or an
        invalid ``center_coef``.

    Introduced in {doc}`/book/part7/03-losses`.
    """
    _check(chosen, rejected)
    center_coef = float(center_coef)
    if not (center_coef >= 0.0 and center_coef < float("inf")):
        raise ValueError(f"center_coef: expected a finite number >= 0, got {center_coef!r}")
    diff = chosen - rejected
    if margin is not None:
        margin = torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
        if margin.dim() != 0 and margin.shape != chosen.shape:
            raise ValueError(
                f"margin: expected one number or a tensor of shape {tuple(chosen.shape)}, "
                f"got shape {tuple(margin.shape)}"
            )
        if not bool(torch.isfinite(margin).all()):
            raise ValueError("margin: every margin must be finite")
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef > 0.0:
        loss = loss + reward_centering(chosen, rejected, center_coef)
    return loss, _metrics(chosen, rejected, loss)


def margin_ranking_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, *, margin: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""The hinge loss $\mathrm{mean}(\max(0, m - (r_c - r_r)))$.

    Pairs ranked by at least ``margin`` contribute nothing, neither loss nor gradient; the rest get a
    constant gradient of $\mp 1/N$, however wrong they are.

    :param chosen: rewards of the chosen answers ``(N,)``.
    :param rejected: rewards of the rejected answers ``(N,)``.
    :param margin: $m \ge 0$.
    :returns: ``(loss, metrics)`` with the metrics of :func:`bradley_terry_loss`.
    :raises ValueError: for mismatched shapes or a negative or non-finite margin.

    Introduced in {doc}`/book/part7/03-losses`.
    """
    _check(chosen, rejected)
    margin = float(margin)
    if not (margin >= 0.0 and margin < float("inf")):
        raise ValueError(f"margin: expected a finite number >= 0, got {margin!r}")
    loss = (margin - (chosen - rejected)).clamp(min=0.0).mean()
    return loss, _metrics(chosen, rejected, loss)


REWARD_LOSSES = ("bradley_terry", "margin_ranking")
"""The losses :class:`~llmbook.align.reward.RewardConfig` can name."""
