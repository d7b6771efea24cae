r"""Curriculum: the order in which training sees its examples.

A curriculum shows easy examples first, on the idea that what a model learns on short problems (the
digit-by-digit shape of an addition) makes longer ones cheaper to learn. It is a hypothesis, not a
law: the book measures it against a random order at the same number of tokens seen.

Every schedule here is a *permutation* of the examples it is given, so schedules compare at equal
data and equal tokens; only the order differs.

To order a mixture of tasks, difficulty has to be comparable across tasks whose levels mean different
things (digits, letters, list lengths). :func:`difficulty_score` puts each task's trained levels on
$[0, 1]$ by rank: level number $r$ (from 0) of a task with $n$ trained levels scores
$s = r / (n - 1)$, so the easiest trained level of every task scores 0 and the hardest 1.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from llmbook.tasks.base import Example, get_task

SCHEDULES = ("random", "easy_to_hard", "hard_to_easy", "mixed")
"""The schedules :func:`order_examples` knows."""


def difficulty_score(example: Example) -> float:
    r"""The example's difficulty on a scale shared by all tasks: its level's rank in the trained range.

    With the trained levels sorted, level number $r$ (from 0) of $n$ scores $r / (n - 1)$, in
    $[0, 1]$; a task with a single trained level (the fact lookup) scores 0, having nothing harder to
    come. Out-of-distribution levels continue the scale by rank: the $j$-th (from 1) scores
    $1 + j / \max(n - 1, 1)$.

    :param example: the example.
    :returns: the score.
    :raises ValueError: naming ``difficulty`` when the example's level is not one of its task's.

    Introduced in {doc}`/book/part6/05-curriculum`.
    """
    task = get_task(example.task)
    trained = sorted(task.difficulties)
    step = max(len(trained) - 1, 1)
    level = task.check_difficulty(example.difficulty)
    if level in trained:
        return trained.index(level) / step
    return 1.0 + (sorted(task.ood_difficulties).index(level) + 1) / step


def _mixed(items: list[Example], scores: dict[Example, float], rng, stages: int, replay: float):
    ordered = sorted(items, key=scores.__getitem__)
    n = len(ordered)
    chunks = [ordered[k * n // stages : (k + 1) * n // stages] for k in range(stages)]
    staged: list[list[Example]] = [[] for _ in range(stages)]
    for k, chunk in enumerate(chunks):
        held = set(rng.sample(range(len(chunk)), math.floor(replay * len(chunk))))
        if k == stages - 1:
            held = set()  # nothing comes after the last stage to defer to
        for i, example in enumerate(chunk):
            target = rng.randrange(k + 1, stages) if i in held else k
            staged[target].append(example)
    for stage in staged:
        rng.shuffle(stage)
    return [example for stage in staged for example in stage]


def order_examples(
    examples: Sequence[Example],
    schedule: str,
    *,
    seed: int,
    stages: int = 4,
    replay: float = 0.25,
) -> list[Example]:
    r"""Order examples by a schedule; the result is always a permutation of ``examples``.

    - ``"random"``: a shuffle seeded by ``seed``.
    - ``"easy_to_hard"``: non-decreasing :func:`difficulty_score`; examples with equal scores in a
      seeded random order (a shuffle, then a stable sort).
    - ``"hard_to_easy"``: the anti-curriculum, non-increasing score, ties shuffled.
    - ``"mixed"``: staged with review. Sort as for ``easy_to_hard`` and cut into ``stages`` chunks
      $C_1, \dots, C_S$ of sizes $\lfloor kN/S \rfloor - \lfloor (k-1)N/S \rfloor$ (easy to hard).
      From every chunk but the last, a random $\lfloor \rho |C_k| \rfloor$ examples
      ($\rho$ = ``replay``) are deferred, each to a stage drawn uniformly from the later ones
      $k+1, \dots, S$. Stage $k$ is then the rest of $C_k$ plus the easier examples deferred to it,
      shuffled together, and the stages follow one another. So stage 1 holds only the easiest
      material; each later stage mixes its new, harder material with easier examples, about
      $\sum_{j<k} \rho |C_j| / (S - j)$ of them, which keeps the early skills in use while the
      hard ones are learned. ``replay=0`` gives chunk-wise easy-to-hard with shuffled chunks.

    :param examples: the examples to order.
    :param schedule: one of :data:`SCHEDULES`.
    :param seed: the seed of every random choice (ties, shuffles, deferrals).
    :param stages: the number of stages of ``"mixed"``, at least 1.
    :param replay: the share $\rho \in [0, 1)$ of each stage's examples deferred by ``"mixed"``.
    :returns: the ordered examples (a new list).
    :raises ValueError: naming ``schedule``, ``stages`` or ``replay`` when it is invalid.

    Introduced in {doc}`/book/part6/05-curriculum`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: {schedule!r} is not one of {SCHEDULES}")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ValueError(f"stages: expected an int >= 1, got {stages!r}")
    if (
        isinstance(replay, bool)
        or not isinstance(replay, (int, float))
        or not math.isfinite(replay)
        or not 0 <= replay < 1
    ):
        raise ValueError(f"replay: expected a number in [0, 1), got {replay!r}")
    rng = random.Random(seed)
    items = list(examples)
    rng.shuffle(items)
    if schedule == "random":
        return items
    scores = {e: difficulty_score(e) for e in items}
    if schedule == "easy_to_hard":
        return sorted(items, key=scores.__getitem__)
    if schedule == "hard_to_easy":
        return sorted(items, key=lambda e: -scores[e])
    return _mixed(items, scores, rng, stages, replay)
