"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling."""

from __future__ import annotations

import math
from numbers import Integral

import torch


def check_sampling(
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> None:
    """Refuse sampling settings that have no meaning, with a message naming the parameter.

    :param temperature: must be finite and ``>= 0`` (0 is greedy); ``inf`` would silently sample
        uniformly and ``nan`` would give NaN probabilities.
    :param top_k: None, or an integer ``>= 1``.
    :param top_p: None, or a number in (0, 1].
    :raises ValueError: naming ``temperature``, ``top_k`` or ``top_p``.

    Introduced in {doc}`/book/part2/07-sampling`.
    """
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature: must be finite and >= 0 (0 is greedy), got {temperature}")
    if top_k is not None:
        _check_top_k(top_k)
    if top_p is not None:
        _check_top_p(top_p)


def _check_top_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"top_k: must be an integer >= 1, got {k!r}")


def _check_top_p(p: float) -> None:
    if not 0.0 < p <= 1.0:  # NaN fails the comparison too, so it lands here
        raise ValueError(f"top_p: must be a number in (0, 1], got {p!r}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row; set the rest to ``-inf``.

    Ties at the k-th value are all kept, so a row may keep more than ``k`` entries.

    :param logits: ``(..., V)``.
    :param k: how many to keep, ``1 <= k``; ``k >= V`` keeps everything.
    :returns: the filtered logits (a new tensor).
    :raises ValueError: when ``k`` is not an integer ``>= 1``.

    Introduced in {doc}`/book/part2/07-sampling`.
    """
    _check_top_k(k)
    if k >= logits.size(-1):
        return logits.clone()
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    r"""Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches ``p``.

    Sort the probabilities in decreasing order, $\pi_{(1)} \ge \pi_{(2)} \ge \dots$; keep the first $m$ with
    $m = \min\{j : \sum_{i \le j} \pi_{(i)} \ge p\}$ (Holtzman et al., 2020). The most likely token is
    always kept.

    :param logits: ``(..., V)``.
    :param p: the probability mass to keep, in (0, 1]; 1 keeps everything.
    :returns: the filtered logits (a new tensor).
    :raises ValueError: when ``p`` is not in (0, 1] (NaN included).

    Introduced in {doc}`/book/part2/07-sampling`.
    """
    _check_top_p(p)
    if p == 1.0:  # the float32 cumulative sum can reach 1.0 before the tail: keep it explicitly
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    cum = probs.cumsum(dim=-1)
    # Token i is dropped when the tokens before it already reach p (the mass strictly before it >= p).
    drop_sorted = (cum - probs) >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one next token per row.

    The logits are divided by ``temperature``, then filtered by top-k and top-p, then sampled. A
    temperature of 0 means greedy decoding (argmax), the limit of ever colder sampling.

    The returned log-probability is that of the chosen token under the *tempered but unfiltered*
    distribution ``log_softmax(logits / temperature)`` (at temperature 0: ``log_softmax(logits)``). That
    is the policy's own probability, which the RL objectives of Parts 8–9 need; it matches what
    :func:`~llmbook.generate.generation.sequence_logprobs` recomputes for the same tokens.

    :param logits: ``(B, V)`` scores for the next token.
    :param temperature: finite and ``>= 0``; 1 leaves the distribution as is, 0 is greedy.
    :param top_k: keep only the ``k`` most likely tokens (None: off).
    :param top_p: keep the nucleus of mass ``p`` (None: off).
    :param generator: random generator for reproducible samples.
    :returns: ``(ids (B,), logps (B,))``.
    :raises ValueError: for a sampling setting :func:`check_sampling` refuses.

    Introduced in {doc}`/book/part2/07-sampling`.
    """
    check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        ids = logits.argmax(dim=-1)
        logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, None]).squeeze(-1)
        return ids, logps
    scaled = logits / temperature
    filtered = scaled
    if top_k is not None:
        filtered = top_k_filter(filtered, top_k)
    if top_p is not None:
        filtered = top_p_filter(filtered, top_p)
    probs = torch.softmax(filtered, dim=-1)
    ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    logps = torch.log_softmax(scaled, dim=-1).gather(-1, ids[:, None]).squeeze(-1)
    return ids, logps
