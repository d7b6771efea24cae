r"""The reward signal PPO optimises: a sequence score at the last token, a KL penalty at every token.

A completion $y = (y_1, \dots, y_n)$ of prompt $x$ earns one score $s(x, y)$ from the reward model
(optionally mixed with the task verifier) when it is finished. RLHF maximises

$$ J(\theta) = \mathbb E_{y \sim \pi_\theta}\big[s(x, y)\big]
   - \beta\, \mathrm{KL}\big(\pi_\theta(\cdot \mid x) \,\|\, \pi_\text{ref}(\cdot \mid x)\big), $$

and because the KL of whole sequences is the expected sum of per-token log-ratios, the penalty can be
*folded into the rewards*, one term per token (Ziegler et al., 2019; InstructGPT):

$$ r_t = -\beta\,\big(\log\pi_\theta(y_t \mid s_t) - \log\pi_\text{ref}(y_t \mid s_t)\big)
   + \mathbb 1[t = n]\, s(x, y). $$

The score arrives at the last token; the penalty is dense. Normalising the scores keeps their scale
(and with it the meaning of $\beta$ and the value function's targets) fixed while the policy moves:
*running* normalisation divides by a running standard deviation over the whole run, *batch*
whitening by the batch's own.
"""

from __future__ import annotations

import torch

from llmbook.align.kl import kl_estimate
from llmbook.align.normalize import RunningMoments

SCORE_NORMS = ("none", "running", "batch")
"""How :func:`normalize_scores` rescales sequence scores."""


def _finite_number(name: str, value, *, minimum: float | None = None) -> float:
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value!r}")
    return value


def sequence_scores(
    rm_scores: torch.Tensor,
    verifier_rewards: torch.Tensor,
    finished: torch.Tensor,
    *,
    rm_weight: float = 1.0,
    verifier_weight: float = 0.0,
    missing_end_penalty: float = 1.0,
) -> torch.Tensor:
    r"""One score per completion: $w_\text{rm}\,r_\text{RM} + w_\text{ver}\,v$, minus a penalty if unfinished.

    A completion that ran out of tokens before ``<|end|>`` was never judged complete by anyone: the
    reward model was trained on finished answers only, so its score for a cut-off one is not to be
    trusted, and it loses ``missing_end_penalty`` (TRL's ``missing_eos_penalty``).

    :param rm_scores: reward-model scores ``(B,)``.
    :param verifier_rewards: the task verifier's 0/1 rewards ``(B,)``.
    :param finished: bool ``(B,)``, True where the completion ended with ``<|end|>``.
    :param rm_weight: weight of the reward model, ``>= 0``.
    :param verifier_weight: weight of the verifier, ``>= 0``.
    :param missing_end_penalty: subtracted from unfinished completions, ``>= 0``.
    :returns: scores ``(B,)`` in float32.
    :raises ValueError: for mismatched shapes, negative or non-finite weights, or both weights 0.

    Introduced in {doc}`/book/part8/02-reward-signal`.
    """
    rm_weight = _finite_number("rm_weight", rm_weight, minimum=0.0)
    verifier_weight = _finite_number("verifier_weight", verifier_weight, minimum=0.0)
    penalty = _finite_number("missing_end_penalty", missing_end_penalty, minimum=0.0)
    if rm_weight == 0.0 and verifier_weight == 0.0:
        raise ValueError("rm_weight, verifier_weight: at least one must be > 0")
    if not (rm_scores.shape == verifier_rewards.shape == finished.shape) or rm_scores.dim() != 1:
        raise ValueError(
            "rm_scores, verifier_rewards, finished: expected three (B,) tensors, got "
            f"{tuple(rm_scores.shape)}, {tuple(verifier_rewards.shape)}, {tuple(finished.shape)}"
        )
    scores = rm_weight * rm_scores.float() + verifier_weight * verifier_rewards.float()
    return scores - penalty * (~finished.bool()).float()


def token_rewards(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-token rewards: $-\beta\,\widehat{\mathrm{KL}}_t$ everywhere, plus the score at the last token.

    :param scores: one score per completion ``(B,)``.
    :param logps: the sampled tokens' log-probabilities under the policy ``(B, N)``.
    :param ref_logps: the same tokens under the reference ``(B, N)``.
    :param mask: bool ``(B, N)``, True where a token counts (a prefix of each row, at least one).
    :param beta: the KL coefficient, ``>= 0``.
    :param estimator: the per-token KL estimator (``"k1"``, the log-ratio, is the classic choice:
        its sum over a sequence is the sequence's log-ratio).
    :returns: ``(rewards (B, N), kl (B, N))``, both 0 where ``mask`` is False.
    :raises ValueError: for mismatched shapes, a row without a counted token, or a bad ``beta``.

    Introduced in {doc}`/book/part8/02-reward-signal`.
    """
    beta = _finite_number("beta", beta, minimum=0.0)
    if logps.shape != ref_logps.shape or logps.shape != mask.shape or logps.dim() != 2:
        raise ValueError(
            "logps, ref_logps, mask: expected three (B, N) tensors of one shape, got "
            f"{tuple(logps.shape)}, {tuple(ref_logps.shape)}, {tuple(mask.shape)}"
        )
    if scores.shape != (logps.size(0),):
        raise ValueError(f"scores: expected shape ({logps.size(0)},), got {tuple(scores.shape)}")
    mask = mask.bool()
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("mask: every completion needs at least one token")
    kl = kl_estimate(logps.float(), ref_logps.float(), kind=estimator)
    kl = torch.where(mask, kl, torch.zeros_like(kl))  # not kl * mask: an inf in padding gives NaN
    rewards = -beta * kl
    rows = torch.arange(logps.size(0), device=logps.device)
    rewards[rows, lengths - 1] += scores.to(rewards.dtype)
    return rewards, kl


def normalize_scores(
    scores: torch.Tensor, mode: str, moments: RunningMoments | None = None, *, eps: float = 1e-8
) -> torch.Tensor:
    r"""Rescale a batch of sequence scores.

    - ``"none"``: unchanged.
    - ``"running"``: divide by the standard deviation of every score seen so far, this batch
      included (``moments`` is updated); the mean is kept, so a run whose scores rise still sees
      them rise.
    - ``"batch"``: whiten within the batch: $(s - \bar s)/\sigma_s$ (the batch always averages 0).

    :param scores: ``(B,)``.
    :param mode: one of :data:`SCORE_NORMS`.
    :param moments: the running statistics (required for ``"running"``).
    :param eps: added to the variance.
    :returns: ``(B,)``.
    :raises ValueError: for an unknown mode or ``"running"`` without ``moments``.

    Introduced in {doc}`/book/part8/02-reward-signal`.
    """
    if mode not in SCORE_NORMS:
        raise ValueError(f"mode: must be one of {SCORE_NORMS}, got {mode!r}")
    scores = scores.float()
    if mode == "none":
        return scores
    if mode == "running":
        if moments is None:
            raise ValueError("moments: running normalisation needs a RunningMoments")
        moments.update(scores)
        return scores / (moments.std**2 + eps) ** 0.5
    if scores.numel() < 2:
        return scores - scores.mean()
    return (scores - scores.mean()) / (scores.var() + eps).sqrt()
