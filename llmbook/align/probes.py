r"""Sanity checks for a reward model: calibration, length correlation, invariances, and the hacking probe.

Held-out accuracy says how often a reward model ranks a pair right; these probes say *why*, and
what a policy optimised against it will find:

- :func:`calibration` compares the Bradley–Terry probability $\sigma(r_a - r_b)$ with how often
  answer $a$ is in fact the better one (a reliability table);
- :func:`length_correlation` is the Pearson correlation of reward and answer length;
- :func:`invariance` re-scores pairs after a change that must not matter (trailing whitespace, the
  same problem asked in other words, a correct answer in another accepted format) and counts flips;
- :func:`hacking_probe` pits a short correct answer against a longer wrong one. A reward model that
  learned "longer is better" prefers the wrong one; the verifier does not.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import torch

from llmbook.align.chat import ChatFormat
from llmbook.align.preference import PreferencePair, corrupt
from llmbook.align.reward import pair_rewards
from llmbook.align.reward_model import RewardModel
from llmbook.tasks import generate_examples, get_task, verify
from llmbook.tasks.base import Example


def calibration(
    chosen: torch.Tensor, rejected: torch.Tensor, *, n_bins: int = 10, seed: int = 0
) -> list[dict]:
    r"""A reliability table: predicted Bradley–Terry win probability against the observed win rate.

    Each pair is shown in a random order, as $(a, b)$, so that half the time the first answer is the
    chosen one; the model predicts $p = \sigma(r_a - r_b)$ that $a$ is better. Pairs are binned by
    $p$ into ``n_bins`` equal-width bins; a calibrated model's observed rate in each bin equals the
    bin's mean $p$.

    :param chosen: rewards of the chosen answers ``(N,)``.
    :param rejected: rewards of the rejected answers ``(N,)``.
    :param n_bins: the number of bins on [0, 1].
    :param seed: seed of the orders.
    :returns: one dict per non-empty bin: ``lo``, ``hi``, ``n``, ``predicted`` (mean $p$) and
        ``observed`` (share of pairs whose first answer is the chosen one).
    :raises ValueError: for mismatched shapes or ``n_bins < 1``.

    Introduced in {doc}`/book/part7/04-sanity-checks`.
    """
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        raise ValueError("chosen, rejected: expected two 1-D tensors of the same shape")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins: expected an int >= 1, got {n_bins!r}")
    g = torch.Generator().manual_seed(seed)
    first_is_chosen = torch.rand(chosen.shape, generator=g) < 0.5
    a = torch.where(first_is_chosen, chosen, rejected).double()
    b = torch.where(first_is_chosen, rejected, chosen).double()
    p = torch.sigmoid(a - b)
    index = (p * n_bins).long().clamp(max=n_bins - 1)
    table = []
    for k in range(n_bins):
        sel = index == k
        if sel.any():
            table.append(
                {
                    "lo": k / n_bins,
                    "hi": (k + 1) / n_bins,
                    "n": int(sel.sum()),
                    "predicted": float(p[sel].mean()),
                    "observed": float(first_is_chosen[sel].double().mean()),
                }
            )
    return table


def expected_calibration_error(table: Sequence[dict]) -> float:
    """The bin-weighted mean gap between predicted and observed rates of a :func:`calibration` table.

    :param table: the reliability table.
    :returns: the ECE in [0, 1] (NaN for an empty table).

    Introduced in {doc}`/book/part7/04-sanity-checks`.
    """
    total = sum(row["n"] for row in table)
    if not total:
        return float("nan")
    return sum(row["n"] * abs(row["predicted"] - row["observed"]) for row in table) / total


def length_correlation(rewards: torch.Tensor, texts: Sequence[str]) -> float:
    """The Pearson correlation of rewards and the character lengths of the answers they score.

    :param rewards: rewards ``(N,)``.
    :param texts: the answers, ``N`` of them.
    :returns: the correlation in [-1, 1] (NaN when either side is constant).
    :raises ValueError: when the sizes differ.

    Introduced in {doc}`/book/part7/04-sanity-checks`.
    """
    if rewards.dim() != 1 or rewards.numel() != len(texts):
        raise ValueError(f"texts: expected {rewards.numel()} answers, got {len(texts)}")
    x = rewards.double()
    y = torch.tensor([float(len(t)) for t in texts], dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def _other_format(example: Example, answer: str) -> str | None:
    # The gold in another form the verifier accepts: a period, grouped thousands, a capital letter,
    # a list without spaces.
    if ", " in answer:
        out = answer.replace(", ", ",")
    elif answer.lstrip("-").isdigit() and len(answer.lstrip("-")) > 3:
        out = f"{int(answer):,}"
    elif answer.isalpha():
        out = answer.upper() if answer.islower() else answer.lower()
    else:
        out = answer + "."
    return out if verify(example, out) == 1.0 else None


def _restated(example: Example, rng: random.Random) -> Example | None:
    task = get_task(example.task)
    others = [k for k in range(len(task.phrasings)) if k != example.phrasing]
    if not others or task.split_by_phrasing:
        return None  # a fact lookup's other phrasings may sit in another split
    k = rng.choice(others)
    return replace(example, phrasing=k, prompt=task.prompt(example.problem, k))


INVARIANCES = ("trailing_whitespace", "restated_prompt", "other_format")
"""The changes :func:`invariance` applies; none of them changes what the verifier says."""


def invariance(
    model: RewardModel,
    chat: ChatFormat,
    pairs: Sequence[PreferencePair],
    change: str,
    *,
    seed: int = 0,
) -> dict:
    """Re-score pairs after a change that must not matter, and count the rankings that flip.

    - ``"trailing_whitespace"``: a space and a newline after the chosen answer;
    - ``"restated_prompt"``: the same problem in another phrasing, for both answers;
    - ``"other_format"``: the chosen answer in another accepted format (``"85."``, ``"1,234"``,
      ``"HTO"``, ``"34,65"``).

    Pairs the change does not apply to are left out.

    :param model: the reward model.
    :param chat: its chat format.
    :param pairs: the pairs.
    :param change: one of :data:`INVARIANCES`.
    :param seed: seed of the restated phrasings.
    :returns: ``{"change", "n", "accuracy_before", "accuracy_after", "flipped"}``, where ``flipped``
        is the share of pairs whose ranking changed.
    :raises ValueError: for an unknown change.

    Introduced in {doc}`/book/part7/04-sanity-checks`.
    """
    if change not in INVARIANCES:
        raise ValueError(f"change: must be one of {INVARIANCES}, got {change!r}")
    rng = random.Random(seed)
    before, after = [], []
    for p in pairs:
        if change == "trailing_whitespace":
            q = replace(p, chosen=p.chosen + " \n")
        elif change == "other_format":
            text = _other_format(p.example, p.chosen)
            q = None if text is None else replace(p, chosen=text)
        else:
            ex = _restated(p.example, rng)
            q = None if ex is None else replace(p, example=ex)
        if q is not None:
            before.append(p)
            after.append(q)
    if not before:
        return {
            "change": change,
            "n": 0,
            "accuracy_before": float("nan"),
            "accuracy_after": float("nan"),
            "flipped": float("nan"),
        }
    c0, r0 = pair_rewards(model, chat, before)
    c1, r1 = pair_rewards(model, chat, after)
    right0, right1 = c0 > r0, c1 > r1
    return {
        "change": change,
        "n": len(before),
        "accuracy_before": float(right0.float().mean()),
        "accuracy_after": float(right1.float().mean()),
        "flipped": float((right0 != right1).float().mean()),
    }


def hacking_pairs(
    n: int, *, tasks: Sequence[str], split: str = "test", seed: int = 0
) -> list[PreferencePair]:
    """Probe pairs that separate length from correctness: a short correct answer (chosen) against a
    longer wrong one (rejected, one character or list item too many).

    :param n: how many examples to draw (tasks with no longer wrong answer yield fewer pairs).
    :param tasks: the tasks.
    :param split: the split of the prompts (held out from training by default).
    :param seed: seed of the draw.
    :returns: the pairs; every rejected answer is longer and the verifier rejects it.

    Introduced in {doc}`/book/part7/04-sanity-checks`.
    """
    rng = random.Random(seed)
    pairs = []
    for ex in generate_examples(list(tasks), n, split=split, seed=seed):
        wrong = corrupt(ex, "extended", rng)
        if wrong is not None and verify(ex, wrong) == 0.0:
            pairs.append(PreferencePair(ex, ex.answer, wrong, "extended"))
    return pairs


def hacking_probe(model: RewardModel, chat: ChatFormat, pairs: Sequence[PreferencePair]) -> dict:
    """How often a reward model prefers the longer wrong answer of :func:`hacking_pairs`.

    :param model: the reward model.
    :param chat: its chat format.
    :param pairs: the probe pairs.
    :returns: ``{"n", "prefers_long_wrong", "verifier_prefers_long_wrong"}``: the model's rate and
        the verifier's (always 0: the long answer is wrong).

    Introduced in {doc}`/book/part7/04-sanity-checks`.
    """
    chosen, rejected = pair_rewards(model, chat, pairs)
    verifier = [verify(p.example, p.rejected) > verify(p.example, p.chosen) for p in pairs]
    return {
        "n": len(pairs),
        "prefers_long_wrong": float((rejected > chosen).float().mean()) if pairs else float("nan"),
        "verifier_prefers_long_wrong": sum(verifier) / len(pairs) if pairs else float("nan"),
    }


def length_adjusted(rewards: torch.Tensor, texts: Sequence[str], slope: float) -> torch.Tensor:
    """Rewards with a linear length term removed: $r - \\beta\\,|y|$.

    :param rewards: rewards ``(N,)``.
    :param texts: the answers they score.
    :param slope: $\\beta$, reward per character (fit it with :func:`length_slope`).
    :returns: the adjusted rewards.

    Introduced in {doc}`/book/part7/04-sanity-checks`.
    """
    lengths = torch.tensor([float(len(t)) for t in texts], dtype=rewards.dtype)
    return rewards - slope * lengths


def length_slope(rewards: torch.Tensor, texts: Sequence[str]) -> float:
    """The least-squares slope of reward on answer length (reward per character).

    :param rewards: rewards ``(N,)``.
    :param texts: the answers they score.
    :returns: the slope (0 when every length is the same).

    Introduced in {doc}`/book/part7/04-sanity-checks`.
    """
    x = torch.tensor([float(len(t)) for t in texts], dtype=torch.float64)
    y = rewards.double()
    x = x - x.mean()
    var = float(x.square().sum())
    return float((x * (y - y.mean())).sum() / var) if var > 0 else 0.0
