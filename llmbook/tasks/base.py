"""Verifiable tasks: seeded problems, their gold answers, phrasings and verifiers.

A *task* (adding two numbers, reversing a word) is a recipe for *problems*: a problem is a small
canonical tuple of ints and strings (``(37, 48)`` for addition), from which the task computes the gold
answer in canonical form (``"85"``) and renders a prompt in one of several phrasings ("What is 37 plus
48?", "Add 37 and 48."). An :class:`Example` freezes one such draw.

The verifier is the contract the alignment chain leans on: SFT is scored by it, preference pairs are
built from its failure kinds, and RL takes its reward from it. A completion is first reduced to its
*answer part* (surrounding whitespace stripped, then one trailing period dropped); the task then maps
it to a canonical form, or to ``None`` when it is not a well-formed answer of that task's kind. The
reward is 1.0 exactly when that canonical form equals the gold's, and 0.0 otherwise.

Which split a problem belongs to, and drawing examples of a split, live in :mod:`llmbook.tasks.splits`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

FAILURE_KINDS = ("empty", "correct", "truncated", "format", "off_by_one", "wrong_digit", "wrong")
"""What :meth:`Task.classify` may return, in the order it checks them."""
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

    Introduced in {doc}`/book/part6/06-evaluation`.
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

    Introduced in {doc}`/book/part6/06-evaluation`.
    """
    text = text.strip()
    return text[:-1] if text.endswith(".") else text


def canonical_int(text: str) -> str | None:
    """An integer in canonical form: ASCII digits, a leading ``-`` when negative, no leading zeros.

    Thousands separators are accepted when correctly grouped (``"1,234"`` becomes ``"1234"``);
    ``"01"``, ``"-0"``, ``"+5"``, ``"1,23"`` and non-ASCII digits are not well-formed.

    :param text: an answer part.
    :returns: the canonical integer string, or ``None``.

    Introduced in {doc}`/book/part6/06-evaluation`.
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

        Introduced in {doc}`/book/part6/06-evaluation`.
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

        Introduced in {doc}`/book/part6/06-evaluation`.
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


def verify(example: Example, completion: str | bytes) -> float:
    """The reward of a completion for an example (see :meth:`Task.verify`).

    :param example: the example that was asked.
    :param completion: the model's output, ``str`` or ``bytes``.
    :returns: 1.0 when the answer is the gold one in an allowed format, else 0.0.

    Introduced in {doc}`/book/part6/06-evaluation`.
    """
    return get_task(example.task).verify(example.problem, completion)


def classify_failure(example: Example, completion: str | bytes) -> str:
    """The kind of a completion for an example (see :meth:`Task.classify`).

    :param example: the example that was asked.
    :param completion: the model's output, ``str`` or ``bytes``.
    :returns: one of :data:`FAILURE_KINDS`.

    Introduced in {doc}`/book/part6/07-failures`.
    """
    return get_task(example.task).classify(example.problem, completion)
