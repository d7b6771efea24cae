"""Verifiable tasks: seeded problems, their gold answers, phrasings, verifiers and disjoint splits.

A *task* (adding two numbers, reversing a word) is a recipe for *problems*: a problem is a small
canonical tuple of ints and strings (``(37, 48)`` for addition), from which the task computes the gold
answer in canonical form (``"85"``) and renders a prompt in one of several phrasings ("What is 37 plus
48?", "Add 37 and 48."). An :class:`Example` freezes one such draw.

The verifier is the contract the alignment chain leans on: SFT is scored by it, preference pairs are
built from its failure kinds, and RL takes its reward from it. A completion is first reduced to its
*answer part* (surrounding whitespace stripped, then one trailing period dropped); the task then maps
it to a canonical form, or to ``None`` when it is not a well-formed answer of that task's kind. The
reward is 1.0 exactly when that canonical form equals the gold's, and 0.0 otherwise.

Splits are decided by a hash of the problem (never of the phrasing, except for fact lookups), so the
test split asks problems that training never showed in any wording.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SPLITS = ("train", "val", "test")
"""The split names, in order."""
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
"""The share of problems (of split units) that each split of :data:`SPLITS` receives."""
FAILURE_KINDS = ("empty", "correct", "truncated", "format", "off_by_one", "wrong_digit", "wrong")
"""What :meth:`Task.classify` may return, in the order it checks them."""
MAX_REJECTIONS = 10_000
"""Draws :func:`generate_examples` may reject in a row before it decides a split cannot be filled."""
_MAX_INT_CHARS = 64  # past this, a "number" is garbage: never hand it to int()

_PLAIN_INT = re.compile(r"0|-?[1-9][0-9]*")
_GROUPED_INT = re.compile(r"-?[1-9][0-9]{0,2}(?:,[0-9]{3})+")


@dataclass(frozen=True)
class Example:
    """One drawn problem of a task, with its prompt and gold answer.

    :param task: the task's name (a key of :data:`TASKS`).
    :param problem: the canonical problem, a tuple of ints and strings (hashable, JSON-friendly).
    :param difficulty: the level the problem was drawn at.
    :param prompt: the problem in words, in phrasing number ``phrasing``.
    :param answer: the gold answer in canonical form.
    :param phrasing: the index of the phrasing in the task's ``phrasings``.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    task: str
    problem: tuple
    difficulty: int
    prompt: str
    answer: str
    phrasing: int


def completion_text(completion: str | bytes) -> str:
    """A completion as text: bytes are decoded as UTF-8, invalid bytes becoming U+FFFD.

    :param completion: the model's output, ``str`` or ``bytes``.
    :returns: the text.
    :raises TypeError: for anything else.

    Introduced in {doc}`/book/part6/04-evaluation`.
    """
    if isinstance(completion, (bytes, bytearray, memoryview)):
        return bytes(completion).decode("utf-8", errors="replace")
    if not isinstance(completion, str):
        raise TypeError(f"completion: expected str or bytes, got {type(completion).__name__}")
    return completion


def answer_part(text: str) -> str:
    """The answer part of a completion: surrounding whitespace stripped, then one trailing period.

    :param text: the completion text.
    :returns: the stripped text (``"85"`` for ``" 85.\\n"``).

    Introduced in {doc}`/book/part6/04-evaluation`.
    """
    text = text.strip()
    return text[:-1] if text.endswith(".") else text


def canonical_int(text: str) -> str | None:
    """An integer in canonical form: ASCII digits, a leading ``-`` when negative, no leading zeros.

    Thousands separators are accepted when correctly grouped (``"1,234"`` becomes ``"1234"``);
    ``"01"``, ``"-0"``, ``"+5"``, ``"1,23"`` and non-ASCII digits are not well-formed.

    :param text: an answer part.
    :returns: the canonical integer string, or ``None``.

    Introduced in {doc}`/book/part6/04-evaluation`.
    """
    if _PLAIN_INT.fullmatch(text):
        return text
    if _GROUPED_INT.fullmatch(text):
        return text.replace(",", "")
    return None


def _small_int(canonical: str | None) -> int | None:
    if canonical is None or len(canonical) > _MAX_INT_CHARS or not _PLAIN_INT.fullmatch(canonical):
        return None
    return int(canonical)


class Task:
    """A family of verifiable problems: a generator, the gold answer, phrasings and a verifier.

    A subclass sets the class attributes and implements :meth:`sample_problem`, :meth:`answer`,
    :meth:`prompt_fields` and :meth:`canonical`; it may override :meth:`split_key` to make problems
    that are the same in substance (``37 + 48`` and ``48 + 37``) share a split.

    :cvar name: the registry name.
    :cvar difficulties: the trained levels, easiest first.
    :cvar ood_difficulties: harder levels kept for out-of-distribution tests.
    :cvar phrasings: format strings whose fields :meth:`prompt_fields` fills.
    :cvar split_by_phrasing: split by (problem, phrasing) pairs instead of by problem (fact lookups).

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    name: str = ""
    difficulties: tuple[int, ...] = ()
    ood_difficulties: tuple[int, ...] = ()
    phrasings: tuple[str, ...] = ()
    split_by_phrasing: bool = False

    def sample_problem(self, rng: random.Random, difficulty: int) -> tuple:
        """Draw a problem at a level, using only ``rng``.

        :param rng: the random source.
        :param difficulty: a trained or out-of-distribution level.
        :returns: the canonical problem tuple.
        """
        raise NotImplementedError

    def answer(self, problem: tuple) -> str:
        """The gold answer in canonical form.

        :param problem: a problem of this task.
        """
        raise NotImplementedError

    def prompt_fields(self, problem: tuple) -> dict[str, str]:
        """The text each field of the phrasings takes for a problem.

        :param problem: a problem of this task.
        """
        raise NotImplementedError

    def canonical(self, problem: tuple, text: str) -> str | None:
        """The canonical form of an answer part, or ``None`` when it is not well-formed for this task.

        :param problem: the problem being answered (some tasks' formats depend on it).
        :param text: the answer part of a completion (see :func:`answer_part`).
        """
        raise NotImplementedError

    def split_key(self, problem: tuple) -> tuple:
        """What the split hash sees: the problem itself unless a subclass merges equivalent problems.

        :param problem: a problem of this task.
        :returns: a tuple of ints and strings.
        """
        return tuple(problem)

    def check_difficulty(self, difficulty: int) -> int:
        """Check that a level is one of the task's trained or out-of-distribution levels.

        :param difficulty: the level.
        :returns: the level.
        :raises ValueError: naming ``difficulty`` when it is not one of them.
        """
        levels = (*self.difficulties, *self.ood_difficulties)
        if isinstance(difficulty, bool) or difficulty not in levels:
            raise ValueError(
                f"difficulty: {difficulty!r} is not a level of task {self.name!r} "
                f"(trained {self.difficulties}, out-of-distribution {self.ood_difficulties})"
            )
        return difficulty

    def check_phrasing(self, phrasing: int) -> int:
        """Check that a phrasing index is in range.

        :param phrasing: the index.
        :returns: the index.
        :raises ValueError: naming ``phrasing`` when it is out of range.
        """
        if isinstance(phrasing, bool) or phrasing not in range(len(self.phrasings)):
            raise ValueError(
                f"phrasing: {phrasing!r} is out of range for task {self.name!r} "
                f"({len(self.phrasings)} phrasings)"
            )
        return phrasing

    def prompt(self, problem: tuple, phrasing: int) -> str:
        """The problem in words.

        :param problem: a problem of this task.
        :param phrasing: the index of the phrasing to use.
        :returns: the prompt text.
        """
        return self.phrasings[self.check_phrasing(phrasing)].format(**self.prompt_fields(problem))

    def verify(self, problem: tuple, completion: str | bytes) -> float:
        """The reward of a completion: 1.0 when its answer part is the gold answer, else 0.0.

        Never raises on the content of ``completion``: any string or byte string gets a reward.

        :param problem: the problem that was asked.
        :param completion: the model's output (``bytes`` are decoded with ``errors="replace"``).
        :returns: 1.0 or 0.0.

        Introduced in {doc}`/book/part6/04-evaluation`.
        """
        got = self.canonical(problem, answer_part(completion_text(completion)))
        gold = self.canonical(problem, self.answer(problem))
        return 1.0 if got is not None and got == gold else 0.0

    def prefix_form(self, problem: tuple, text: str) -> str:
        """The form in which a possibly cut-off answer part is compared with the gold's prefixes.

        :param problem: the problem that was asked.
        :param text: the answer part.
        :returns: its canonical form when it has one, else the text itself.
        """
        got = self.canonical(problem, text)
        return text if got is None else got

    def classify(self, problem: tuple, completion: str | bytes) -> str:
        """Name the kind of a completion, checking in the order of :data:`FAILURE_KINDS`.

        1. ``"empty"``: nothing but whitespace.
        2. ``"correct"``: :meth:`verify` gives 1.0.
        3. ``"truncated"``: the answer part (in :meth:`prefix_form`) is a non-empty strict prefix of
           the gold's canonical form: the model stopped too early. Checked before the format, since a
           cut-off list (``"2, 5,"``) is not well-formed.
        4. ``"format"``: not a well-formed answer of this task's kind (letters where a number is due).
        5. ``"off_by_one"``: integer answers one apart (a lost carry often does this).
        6. ``"wrong_digit"``: integers with the same sign and number of digits, differing in exactly
           one digit.
        7. ``"wrong"``: anything else well-formed.

        :param problem: the problem that was asked.
        :param completion: the model's output, ``str`` or ``bytes``.
        :returns: one of :data:`FAILURE_KINDS`.

        Introduced in {doc}`/book/part6/04-evaluation`.
        """
        text = completion_text(completion)
        if not text.strip():
            return "empty"
        if self.verify(problem, text) == 1.0:
            return "correct"
        part = answer_part(text)
        gold = self.canonical(problem, self.answer(problem))
        cut = self.prefix_form(problem, part)
        if cut and len(cut) < len(gold) and gold.startswith(cut):
            return "truncated"
        got = self.canonical(problem, part)
        if got is None:
            return "format"
        got_int, gold_int = _small_int(got), _small_int(gold)
        if got_int is not None and gold_int is not None:
            if abs(got_int - gold_int) == 1:
                return "off_by_one"
            if (got_int < 0) == (gold_int < 0) and len(got) == len(gold):
                if sum(a != b for a, b in zip(got, gold)) == 1:
                    return "wrong_digit"
        return "wrong"


TASKS: dict[str, Task] = {}
"""Every registered task by name; ``import llmbook.tasks`` fills it."""


def register(task: Task) -> Task:
    """Add a task to :data:`TASKS`.

    :param task: the task; its name must be new.
    :returns: the task.
    :raises ValueError: when the name is taken.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """
    if task.name in TASKS:
        raise ValueError(f"name: a task named {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task of a name.

    :param name: the task name.
    :returns: the task.
    :raises ValueError: naming ``task`` and listing the known names when there is none.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"task: unknown task {name!r}; known: {sorted(TASKS)}") from None


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


def verify(example: Example, completion: str | bytes) -> float:
    """The reward of a completion for an example (see :meth:`Task.verify`).

    :param example: the example that was asked.
    :param completion: the model's output, ``str`` or ``bytes``.
    :returns: 1.0 when the answer is the gold one in an allowed format, else 0.0.

    Introduced in {doc}`/book/part6/04-evaluation`.
    """
    return get_task(example.task).verify(example.problem, completion)


def classify_failure(example: Example, completion: str | bytes) -> str:
    """The kind of a completion for an example (see :meth:`Task.classify`).

    :param example: the example that was asked.
    :param completion: the model's output, ``str`` or ``bytes``.
    :returns: one of :data:`FAILURE_KINDS`.

    Introduced in {doc}`/book/part6/04-evaluation`.
    """
    return get_task(example.task).classify(example.problem, completion)
