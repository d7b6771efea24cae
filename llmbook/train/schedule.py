"""Learning-rate schedules: pure functions of the step, so resuming a run needs only the step."""

from __future__ import annotations

import math
import numbers


def _check_steps(**steps: int) -> None:
    """Refuse a step count that is not a non-negative integer (a float step or a bool is a bug)."""
    for name, value in steps.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name}: must be a non-negative integer, got {value!r}")


def _check_rates(max_lr: float, min_lr: float = 0.0) -> None:
    """Refuse rates that are not finite (NaN passes every comparison) or a floor above the peak."""
    if not _is_finite(max_lr) or max_lr < 0:
        raise ValueError(f"max_lr: must be a finite number >= 0, got {max_lr!r}")
    if not _is_finite(min_lr) or not 0 <= min_lr <= max_lr:
        raise ValueError(
            f"min_lr: must be a finite number in [0, max_lr = {max_lr}], got {min_lr!r}"
        )


def _is_finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def warmup_cosine(
    step: int, *, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0
) -> float:
    r"""Linear warmup to ``max_lr``, then cosine decay to ``min_lr`` at ``total_steps``.

    $$\eta(s) = \begin{cases} \eta_\max\,\frac{s+1}{W} & s < W\\[2pt]
    \eta_\min + \tfrac12(\eta_\max-\eta_\min)\bigl(1+\cos\pi\,\frac{s-W}{S-W}\bigr) & W \le s \le S\\[2pt]
    \eta_\min & s > S\end{cases}$$

    :param step: the optimizer step, from 0.
    :param max_lr: the peak rate.
    :param warmup_steps: steps of linear warmup (W).
    :param total_steps: the step where decay ends (S).
    :param min_lr: the floor.
    :returns: the learning rate for this step.

    :raises ValueError: for a negative or non-integer step count, or a rate that is not finite or
        not in order ($0 \le \eta_\min \le \eta_\max$).

    Introduced in {doc}`/book/part2/05-optimizer`.
    """
    _check_steps(step=step, warmup_steps=warmup_steps, total_steps=total_steps)
    _check_rates(max_lr, min_lr)
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


SCHEDULES = ("constant", "cosine", "wsd")
"""Schedule names accepted by :func:`learning_rate` and ``TrainConfig.schedule``."""


def constant(step: int, *, max_lr: float, warmup_steps: int = 0) -> float:
    r"""Linear warmup to ``max_lr``, then flat: $\eta(s) = \eta_\max \min\bigl(1, \frac{s+1}{W}\bigr)$.

    :param step: the optimizer step, from 0.
    :param max_lr: the rate after warmup.
    :param warmup_steps: steps of linear warmup (W); 0 starts at ``max_lr``.
    :returns: the learning rate for this step.
    :raises ValueError: for a negative or non-integer step count, or a rate that is not finite.

    Introduced in {doc}`/book/part4/05-schedules`.
    """
    _check_steps(step=step, warmup_steps=warmup_steps)
    _check_rates(max_lr)
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    return max_lr


def warmup_stable_decay(
    step: int,
    *,
    max_lr: float,
    warmup_steps: int,
    total_steps: int,
    decay_steps: int,
    min_lr: float = 0.0,
) -> float:
    r"""Warmup-stable-decay (WSD): warmup, a long flat phase, then a linear decay over the last steps.

    With $D$ decay steps the decay starts at $S_d = S - D$:

    $$\eta(s) = \begin{cases} \eta_\max\,\frac{s+1}{W} & s < W\\[2pt]
    \eta_\max & W \le s < S_d\\[2pt]
    \eta_\max - (\eta_\max-\eta_\min)\,\frac{s-S_d+1}{D} & S_d \le s < S\\[2pt]
    \eta_\min & s \ge S\end{cases}$$

    The flat phase does not depend on $S$, so a run can be continued, or decayed from any point of the
    stable phase, without restarting it.

    :param step: the optimizer step, from 0.
    :param max_lr: the plateau rate.
    :param warmup_steps: steps of linear warmup (W).
    :param total_steps: the step where decay ends (S).
    :param decay_steps: length of the final decay (D), at most ``total_steps - warmup_steps``.
    :param min_lr: the rate reached at the end of the decay.
    :returns: the learning rate for this step.
    :raises ValueError: for a negative or non-integer step count, ``decay_steps`` out of range, or a
        rate that is not finite or not in order.

    Introduced in {doc}`/book/part4/05-schedules`.
    """
    _check_steps(step=step, warmup_steps=warmup_steps, total_steps=total_steps)
    _check_rates(max_lr, min_lr)
    if (
        isinstance(decay_steps, bool)
        or not isinstance(decay_steps, numbers.Integral)
        or not 1 <= decay_steps <= total_steps - warmup_steps
    ):
        raise ValueError(
            f"decay_steps: must be an integer in [1, total_steps - warmup_steps = "
            f"{total_steps - warmup_steps}], got {decay_steps!r}"
        )
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return max_lr
    # Written from the end so that the last step lands exactly on min_lr.
    return min_lr + (max_lr - min_lr) * (total_steps - 1 - step) / decay_steps


def learning_rate(
    step: int,
    *,
    schedule: str,
    max_lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
    decay_fraction: float = 0.2,
) -> float:
    """The learning rate of a named schedule at one step (what the training loop calls).

    :param step: the optimizer step, from 0.
    :param schedule: one of :data:`SCHEDULES`: ``"constant"`` (:func:`constant`), ``"cosine"``
        (:func:`warmup_cosine`) or ``"wsd"`` (:func:`warmup_stable_decay`).
    :param max_lr: the peak rate.
    :param warmup_steps: steps of linear warmup.
    :param total_steps: the run's length in steps.
    :param min_lr: the floor of the decaying schedules.
    :param decay_fraction: WSD's share of ``total_steps - warmup_steps`` spent decaying.
    :returns: the learning rate.
    :raises ValueError: for an unknown schedule name, a ``decay_fraction`` outside (0, 1], or an
        invalid step or rate (see the schedules).

    Introduced in {doc}`/book/part4/05-schedules`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: must be one of {SCHEDULES}, got {schedule!r}")
    if not _is_finite(decay_fraction) or not 0 < decay_fraction <= 1:
        raise ValueError(
            f"decay_fraction: must be a finite number in (0, 1], got {decay_fraction!r}"
        )
    # Checked here for every schedule, so that a bad value is refused even where it is unused.
    _check_steps(step=step, warmup_steps=warmup_steps, total_steps=total_steps)
    _check_rates(max_lr, min_lr)
    if schedule == "constant":
        return constant(step, max_lr=max_lr, warmup_steps=warmup_steps)
    if schedule == "cosine":
        return warmup_cosine(
            step,
            max_lr=max_lr,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_lr=min_lr,
        )
    if total_steps <= warmup_steps:  # WSD, and the whole run is warmup
        return constant(step, max_lr=max_lr, warmup_steps=warmup_steps)
    decay_steps = max(1, round(decay_fraction * (total_steps - warmup_steps)))
    return warmup_stable_decay(
        step,
        max_lr=max_lr,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        decay_steps=decay_steps,
        min_lr=min_lr,
    )
