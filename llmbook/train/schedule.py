"""Learning-rate schedules."""

from __future__ import annotations

import math


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

    Introduced in {doc}`/book/part2/04-training-loop`.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
