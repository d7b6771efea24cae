"""The learning-rate range test: a short probe run whose rate grows geometrically, to find the peak rate.

Leslie Smith's test ("Cyclical Learning Rates for Training Neural Networks", 2015/2017), made popular
as fastai's LR finder: start at a rate far too small to matter, multiply it by a constant factor every
step, and watch the loss. It first stays flat, then falls as the rate becomes useful, then turns and
explodes once the rate is too large for the optimizer to stay stable. A good peak rate sits on the
falling slope, safely before the turn.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn

from llmbook.data.batching import as_ids, random_batch
from llmbook.train.optim import build_optimizer, check_adamw_arguments

RISE_TOLERANCE = 0.01
"""A rise of the smoothed loss by more than this fraction above its running minimum ends the first
descent of an LR range test (see :func:`lr_range_test`)."""


@dataclass
class LRRangeResult:
    """What an LR range test recorded, and the rate it suggests.

    Introduced in {doc}`/book/part4/06-schedules-in-practice`.
    """

    lrs: list[float]
    """Learning rate of each recorded step, growing geometrically from ``min_lr``."""
    losses: list[float]
    """Training loss of each recorded step's batch (computed before that step's update)."""
    smoothed: list[float]
    """Exponential moving average of ``losses``, bias-corrected (see :func:`lr_range_test`)."""
    suggested_lr: float
    """The suggested peak rate: where the smoothed loss falls fastest during its first descent."""
    edge_lr: float
    """The rate at the lowest point of the first descent, where the loss first turns upward: the
    edge of stable training."""
    min_loss_lr: float
    """The rate at which the smoothed loss was lowest over the whole test."""
    stopped_early: bool
    """Whether the test stopped before ``max_lr`` because the loss diverged (or became non-finite)."""


def _check(
    *, min_lr, max_lr, steps, batch_size, block_size, grad_clip, smoothing, diverge_factor, seed
) -> None:
    """Refuse invalid arguments by name; NaN and infinity are invalid everywhere (NaN passes every
    comparison: ``grad_clip=nan`` would silently turn clipping off)."""

    def finite(value) -> bool:
        return (
            isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        )

    def integer(value) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if not finite(value):
            raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if not 0.0 < min_lr < max_lr:
        raise ValueError(f"min_lr: must satisfy 0 < min_lr < max_lr, got {min_lr!r} and {max_lr!r}")
    if not integer(steps) or steps < 2:
        raise ValueError(f"steps: must be an integer >= 2, got {steps!r}")
    if not integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if block_size is not None and (not integer(block_size) or block_size < 1):
        raise ValueError(f"block_size: must be a positive integer or None, got {block_size!r}")
    if not finite(grad_clip) or grad_clip < 0:
        raise ValueError(f"grad_clip: must be a finite number >= 0 (0: off), got {grad_clip!r}")
    if not finite(smoothing) or not 0.0 < smoothing <= 1.0:
        raise ValueError(f"smoothing: must be in (0, 1], got {smoothing!r}")
    if not finite(diverge_factor) or not diverge_factor > 1.0:
        raise ValueError(f"diverge_factor: must be a finite number > 1, got {diverge_factor!r}")
    if not integer(seed):
        raise ValueError(f"seed: must be an integer, got {seed!r}")


def _suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float, float]:
    """(suggested, edge, min-loss) rates of a recorded curve."""
    # The first descent ends where the smoothed loss first rises clearly above its running minimum.
    end, running = len(smoothed), math.inf
    for i, value in enumerate(smoothed):
        if value > running * (1.0 + RISE_TOLERANCE):
            end = i
            break
        running = min(running, value)
    edge = min(range(end), key=smoothed.__getitem__)
    # Steepest fall per unit of log(lr), by central differences, before the edge.
    steepest, steepest_slope = edge, 0.0
    for i in range(1, edge):
        slope = (smoothed[i + 1] - smoothed[i - 1]) / math.log(lrs[i + 1] / lrs[i - 1])
        if slope < steepest_slope:
            steepest, steepest_slope = i, slope
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    return lrs[steepest], lrs[edge], lrs[best]


def lr_range_test(
    model: nn.Module,
    train_ids,
    *,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    steps: int = 100,
    batch_size: int = 12,
    block_size: int | None = None,
    bos_id: int | None = None,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.99),
    grad_clip: float = 1.0,
    smoothing: float = 0.05,
    diverge_factor: float = 4.0,
    seed: int = 0,
) -> LRRangeResult:
    r"""Leslie Smith's learning-rate range test (the "LR finder") with AdamW on random batches.

    Step $i = 0, \dots, N-1$ trains on one random batch at the rate

    $$\eta_i = \eta_{\min} \left(\frac{\eta_{\max}}{\eta_{\min}}\right)^{i/(N-1)},$$

    so the rate grows by the same factor every step and the $N$ steps cover the range evenly on a log
    axis. The batch losses $\ell_i$ are noisy, so they are smoothed with an exponential moving average
    with weight $\alpha$ = ``smoothing`` on the newest loss, bias-corrected like Adam's moments (the
    average starts at zero): $a_i = (1-\alpha)a_{i-1} + \alpha\ell_i$, $\bar\ell_i = a_i / (1 - (1-\alpha)^{i+1})$.
    The test stops early when $\bar\ell_i$ exceeds ``diverge_factor`` times its minimum so far, or when
    a loss is not finite: past that point the run has diverged and says nothing more.

    **The suggestion** is the rate at which the smoothed loss falls fastest per factor of rate,
    $-\mathrm{d}\bar\ell / \mathrm{d}\ln\eta$, during the *first descent*: from the start up to the
    lowest point before the smoothed loss first rises by more than :data:`RISE_TOLERANCE` above its
    running minimum (that lowest point is ``edge_lr``). Why this rule: the steepest fall is where a
    step buys the most progress per unit of rate, and the first rise is the first sign of instability,
    so the suggestion sits on the stable side of the edge. The popular alternative, the rate at the
    loss minimum divided by ten (fastai), assumes the loss explodes right after its minimum, as with
    SGD. With AdamW and gradient clipping it often does not: past the edge the loss spikes, partly
    recovers and keeps creeping down towards the plateau of a model that has learned only byte
    frequencies, so the overall minimum (``min_loss_lr``) can lie orders of magnitude beyond any rate
    that trains well. Restricting the search to the first descent also keeps the steepest fall of a
    recovery from a spike from being mistaken for the useful one.

    The test is a probe, not training: the model's weights, gradients, training mode and the global
    random state are restored afterwards, even if the test raises.

    :param model: a language model called as ``model(x, y)`` returning ``(logits, loss)``, with a
        ``config.block_size``; it runs on the device of its parameters.
    :param train_ids: 1-D training token stream.
    :param min_lr: the first rate.
    :param max_lr: the last rate (reached only if the loss has not diverged before).
    :param steps: steps from ``min_lr`` to ``max_lr`` (N).
    :param batch_size: windows per step (B).
    :param block_size: window length (T); None uses the model's ``block_size``.
    :param bos_id: start every window with this token (see :func:`~llmbook.data.batching.random_batch`).
    :param weight_decay: AdamW's decoupled weight decay on matrices, as in training.
    :param betas: AdamW's moment decay rates, as in training.
    :param grad_clip: clip the global gradient norm to this value (0: off), as in training.
    :param smoothing: weight of the newest loss in the moving average ($\alpha$), in (0, 1].
    :param diverge_factor: stop when the smoothed loss exceeds this multiple of its minimum.
    :param seed: seed of the batch sampler.
    :returns: the :class:`LRRangeResult`.
    :raises ValueError: for an invalid argument (NaN and infinity included), naming it.
    :raises FloatingPointError: when the very first loss is not finite (nothing to suggest from).

    Introduced in {doc}`/book/part4/06-schedules-in-practice`.
    """
    _check(
        min_lr=min_lr,
        max_lr=max_lr,
        steps=steps,
        batch_size=batch_size,
        block_size=block_size,
        grad_clip=grad_clip,
        smoothing=smoothing,
        diverge_factor=diverge_factor,
        seed=seed,
    )
    check_adamw_arguments(lr=min_lr, weight_decay=weight_decay, betas=betas, eps=1e-8)
    ids = as_ids(train_ids)
    params = list(model.parameters())
    device = params[0].device
    T = block_size or model.config.block_size
    modes = [(m, m.training) for m in model.modules()]  # submodules may differ (a frozen part)
    saved_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    cuda_devices = [device] if device.type == "cuda" else []

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    stopped_early = False
    try:
        with torch.random.fork_rng(devices=cuda_devices):  # dropout must not move the global RNG
            generator = torch.Generator().manual_seed(seed)
            optimizer = build_optimizer(model, lr=min_lr, weight_decay=weight_decay, betas=betas)
            model.train()
            average, best = 0.0, math.inf
            for i in range(steps):
                lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y = random_batch(
                    ids, batch_size, T, generator=generator, device=device, bos_id=bos_id
                )
                _, loss = model(x, y)
                value = loss.item()
                if not math.isfinite(value):
                    stopped_early = True
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                average = (1.0 - smoothing) * average + smoothing * value
                debiased = average / (1.0 - (1.0 - smoothing) ** (i + 1))
                lrs.append(lr)
                losses.append(value)
                smoothed.append(debiased)
                best = min(best, debiased)
                if debiased > diverge_factor * best:
                    stopped_early = True
                    break
    finally:
        model.load_state_dict(saved_state)
        for p, g in zip(params, saved_grads):
            p.grad = g
        for m, training in modes:
            m.training = training
    if not lrs:
        raise FloatingPointError(
            "the loss was not finite at the first step; check the model and data"
        )
    suggested, edge, min_loss_lr = _suggest(lrs, smoothed)
    return LRRangeResult(
        lrs=lrs,
        losses=losses,
        smoothed=smoothed,
        suggested_lr=suggested,
        edge_lr=edge,
        min_loss_lr=min_loss_lr,
        stopped_early=stopped_early,
    )
