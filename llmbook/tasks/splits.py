"""Disjoint train/val/test splits of the task problems, and seeded drawing of examples from a split.

Splits are decided by a hash of the problem (never of the phrasing, except for fact lookups), so the
test split asks problems that training never showed in any wording. :func:`generate_examples` draws
a task mixture by rejection sampling against that hash, so no split ever sees another's problems;
:func:`task_examples` draws a balanced evaluation set, the same number of examples per (task,
difficulty) cell.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping, Sequence

from llmbook.tasks.base import TASKS, Example, Task, get_task

_POOL_DRAWS = 1000  # draws used to list every problem of a cell too small for distinct examples

SPLITS = ("train", "val", "test")
"""The split names, in order."""
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
"""The share of problems (of split units) that each split of :data:`SPLITS` receives."""
DIFFICULTY_SETS = ("trained", "ood", "all")
"""What :func:`task_examples` accepts as ``difficulties``."""
MAX_REJECTIONS = 10_000
"""Draws :func:`generate_examples` may reject in a row before it decides a split cannot be filled."""


def _unit_interval(*parts) -> float:
    """A stable hash of JSON-able parts, as a number in [0, 1) (Python's ``hash`` is salted)."""
    blob = json.dumps(parts, separators=(",", ":"), ensure_ascii=True).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") / 2.0**64


def _split_of_task(task: Task, problem: tuple, phrasing: int | None) -> str:
    key = list(task.split_key(tuple(problem)))
    if task.split_by_phrasing:
        if phrasing is None:
            raise ValueError(
                f"phrasing: task {task.name!r} splits by (problem, phrasing) pairs; pass phrasing"
            )
        task.check_phrasing(phrasing)
        # One phrasing per problem is always in train, so every test pair asks something trained.
        anchor = int(_unit_interval(task.name, key, "anchor") * len(task.phrasings))
        if phrasing == anchor:
            return "train"
        u = _unit_interval(task.name, key, phrasing)
    else:
        u = _unit_interval(task.name, key)
    edge = 0.0
    for split, share in zip(SPLITS, SPLIT_FRACTIONS):
        edge += share
        if u < edge:
            return split
    return SPLITS[-1]


def split_of(task_name: str, problem: tuple, phrasing: int | None = None) -> str:
    """The split a problem belongs to, decided by a SHA-256 hash of the task name and the problem.

    The hash sees :meth:`Task.split_key` of the problem, never its phrasing, so a problem keeps its
    split in every wording, and train, val and test (shares :data:`SPLIT_FRACTIONS`) are disjoint by
    problem. The exception is a task with ``split_by_phrasing`` (the fact lookup), whose unit is the
    (problem, phrasing) pair: one hash-chosen phrasing of each problem is always in train, and the
    other pairs are split by their own hash.

    :param task_name: the task.
    :param problem: a problem of that task.
    :param phrasing: the phrasing index; required only by tasks that split by phrasing.
    :returns: ``"train"``, ``"val"`` or ``"test"``.
    :raises ValueError: naming ``task`` or ``phrasing`` when either is unknown or missing.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """
    return _split_of_task(get_task(task_name), problem, phrasing)


def _mixture(tasks: Sequence[str] | Mapping[str, float]) -> tuple[list[str], list[float]]:
    if isinstance(tasks, str):
        raise ValueError(f"tasks: expected a sequence or mapping of task names, got {tasks!r}")
    if isinstance(tasks, Mapping):
        names, weights = list(tasks), [tasks[name] for name in tasks]
    else:
        names = list(tasks)
        weights = [1.0] * len(names)
    if not names:
        raise ValueError("tasks: no task given")
    for name, w in zip(names, weights):
        get_task(name)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"tasks: the weight of {name!r} must be finite and >= 0, got {w!r}")
    if sum(weights) <= 0:
        raise ValueError("tasks: the weights sum to zero")
    return names, [float(w) for w in weights]


def _levels(task: Task, difficulty) -> tuple[int, ...]:
    if difficulty is None:
        return task.difficulties
    if isinstance(difficulty, int):
        return (task.check_difficulty(difficulty),)
    if isinstance(difficulty, Sequence) and not isinstance(difficulty, str) and difficulty:
        return tuple(task.check_difficulty(d) for d in difficulty)
    raise ValueError(
        f"difficulty: expected None, an int or a non-empty sequence of ints, got {difficulty!r}"
    )


def generate_examples(
    tasks: Sequence[str] | Mapping[str, float],
    n: int,
    *,
    split: str,
    seed: int,
    difficulty: int | Sequence[int] | None = None,
    distinct: bool = False,
) -> list[Example]:
    """Draw ``n`` examples of a split, deterministically from ``seed``.

    Each example picks a task (uniformly, or by the weights of a mapping), a level (uniformly from
    ``difficulty``, or from the task's trained range when it is ``None``), then draws problems and a
    uniform phrasing until :func:`split_of` puts one in ``split`` (rejection sampling: the split
    shares stay those of the hash, and no split ever sees another's problems).

    Examples are drawn with replacement, so a small problem space (one-digit addition has 100
    problems, about 10 per evaluation split) yields repeats; ``distinct=True`` forbids them (by
    problem, or by (problem, phrasing) pair for tasks that split by phrasing). When
    :data:`MAX_REJECTIONS` draws in a row fail, the split has no (new) problem at that level, and a
    ``ValueError`` says so instead of looping forever.

    Only ``random.Random(seed)`` is used, never the global random state.

    :param tasks: task names for a uniform mixture, or a mapping of name to non-negative weight.
    :param n: the number of examples.
    :param split: ``"train"``, ``"val"`` or ``"test"``.
    :param seed: the seed of the draw.
    :param difficulty: ``None`` (each task's trained range), a level, or a sequence of levels; every
        level must belong to every task in the mixture (trained or out-of-distribution).
    :param distinct: forbid repeated problems.
    :returns: the examples, in draw order.
    :raises ValueError: naming the field (``tasks``, ``n``, ``split``, ``difficulty``) when it is
        invalid, or when a split cannot be filled.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {SPLITS}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    names, weights = _mixture(tasks)
    levels = {name: _levels(TASKS[name], difficulty) for name in names}
    rng = random.Random(seed)
    examples: list[Example] = []
    seen: set[tuple] = set()
    for _ in range(n):
        name = rng.choices(names, weights)[0]
        task = TASKS[name]
        level = rng.choice(levels[name])
        for _attempt in range(MAX_REJECTIONS):
            problem = tuple(task.sample_problem(rng, level))
            phrasing = rng.randrange(len(task.phrasings))
            if _split_of_task(task, problem, phrasing) != split:
                continue
            unit = (name, problem, phrasing if task.split_by_phrasing else None)
            if distinct and unit in seen:
                continue
            seen.add(unit)
            examples.append(
                Example(
                    task=name,
                    problem=problem,
                    difficulty=level,
                    prompt=task.prompt(problem, phrasing),
                    answer=task.answer(problem),
                    phrasing=phrasing,
                )
            )
            break
        else:
            what = "new problem" if distinct else "problem"
            raise ValueError(
                f"split: no {what} of task {name!r} at difficulty {level} fell in split {split!r} "
                f"in {MAX_REJECTIONS} draws; the problem space is too small for {len(examples) + 1} "
                "examples"
            )
    return examples


def _cell_seed(seed: int, task: str, difficulty: int) -> int:
    # Each cell has its own stream, so adding a task or a level leaves the other cells unchanged.
    blob = f"{seed}/{task}/{difficulty}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def _cell(task: str, level: int, n: int, split: str, seed: int) -> list[Example]:
    try:
        return generate_examples([task], n, split=split, seed=seed, difficulty=level, distinct=True)
    except ValueError:
        pass
    # Fewer distinct problems than n: list those a large draw finds, and repeat them in turn, so
    # that each weighs about the same in the cell's accuracy.
    pool = generate_examples(
        [task], max(_POOL_DRAWS, 10 * n), split=split, seed=seed, difficulty=level
    )
    by_phrasing = TASKS[task].split_by_phrasing
    unique: dict[tuple, Example] = {}
    for ex in pool:
        unique.setdefault((ex.problem, ex.phrasing if by_phrasing else None), ex)
    found = list(unique.values())
    return [found[i % len(found)] for i in range(n)]


def task_examples(
    tasks: Sequence[str] | None,
    n_per_cell: int,
    *,
    split: str = "test",
    seed: int = 0,
    difficulties: str = "trained",
) -> list[Example]:
    """A balanced evaluation set: ``n_per_cell`` examples of every (task, difficulty) cell.

    Each cell is drawn with :func:`~llmbook.tasks.generate_examples` from its own seed (derived from
    ``seed``, the task and the level), with distinct problems. A cell whose split holds fewer than
    ``n_per_cell`` distinct problems (one-digit addition has about 17 in test) gets every distinct
    problem that 1,000 draws find, repeated in turn: its accuracy is then an (almost) exact average
    over the cell rather than a noisy estimate.

    :param tasks: task names, or None for every registered task (sorted by name).
    :param n_per_cell: examples per cell, ``>= 1``.
    :param split: ``"train"``, ``"val"`` or ``"test"``.
    :param seed: seed of the draw.
    :param difficulties: ``"trained"`` (each task's trained levels), ``"ood"`` (its harder,
        out-of-distribution levels; a task without any contributes nothing) or ``"all"``.
    :returns: the examples, cell by cell (tasks in the given order, levels ascending).
    :raises ValueError: naming ``tasks``, ``n_per_cell``, ``split`` or ``difficulties`` when invalid.

    Introduced in {doc}`/book/part6/06-evaluation`.
    """
    if tasks is None:
        tasks = sorted(TASKS)
    if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
        raise ValueError(f"tasks: expected a non-empty sequence of task names, got {tasks!r}")
    for name in tasks:
        if name not in TASKS:
            raise ValueError(f"tasks: unknown task {name!r}; known: {sorted(TASKS)}")
    if isinstance(n_per_cell, bool) or not isinstance(n_per_cell, int) or n_per_cell < 1:
        raise ValueError(f"n_per_cell: expected an int >= 1, got {n_per_cell!r}")
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {SPLITS}")
    if difficulties not in DIFFICULTY_SETS:
        raise ValueError(f"difficulties: {difficulties!r} is not one of {DIFFICULTY_SETS}")
    examples: list[Example] = []
    for name in tasks:
        task = TASKS[name]
        levels = {
            "trained": task.difficulties,
            "ood": task.ood_difficulties,
            "all": (*task.difficulties, *task.ood_difficulties),
        }[difficulties]
        for level in sorted(levels):
            examples.extend(_cell(name, level, n_per_cell, split, _cell_seed(seed, name, level)))
    return examples
