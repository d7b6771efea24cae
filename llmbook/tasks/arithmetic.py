"""Arithmetic tasks: addition, subtraction, small multiplication and comparing two numbers.

The difficulty is the number of digits of the operands, the axis along which a small model's accuracy
falls (longer carry chains), and the one a curriculum climbs. An operand of ``d`` digits is drawn
uniformly from the ``d``-digit numbers (``0``–``9`` for one digit, ``10``–``99`` for two, ...).

Answers are integers in canonical form (:func:`~llmbook.tasks.base.canonical_int`): a leading ``-``
when negative, no leading zeros; correctly grouped thousands separators (``"1,234"``) are accepted.
"""

from __future__ import annotations

import random

from llmbook.tasks.base import Task, canonical_int, register


def random_operand(rng: random.Random, digits: int) -> int:
    """A uniform number with exactly ``digits`` digits (zero counts as a one-digit number).

    :param rng: the random source.
    :param digits: the number of digits, at least 1.
    :returns: the number.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """
    if digits == 1:
        return rng.randrange(10)
    return rng.randrange(10 ** (digits - 1), 10**digits)


class _TwoNumbers(Task):
    """Problems ``(a, b)`` of two integers with an integer answer."""

    def prompt_fields(self, problem: tuple) -> dict[str, str]:
        """The operands as text.

        :param problem: ``(a, b)``.
        :returns: ``{"a": ..., "b": ...}``.
        """
        a, b = problem
        return {"a": str(a), "b": str(b)}

    def canonical(self, problem: tuple, text: str) -> str | None:
        """An integer answer (see :func:`~llmbook.tasks.base.canonical_int`).

        :param problem: the problem (unused: the format is the same for all).
        :param text: the answer part.
        :returns: the canonical integer, or ``None``.
        """
        return canonical_int(text)

    def sample_problem(self, rng: random.Random, difficulty: int) -> tuple:
        """Two operands with ``difficulty`` digits each.

        :param rng: the random source.
        :param difficulty: the number of digits.
        :returns: ``(a, b)``.
        """
        d = self.check_difficulty(difficulty)
        return (random_operand(rng, d), random_operand(rng, d))


class AddTask(_TwoNumbers):
    """``a + b`` for two ``d``-digit numbers; trained on 1–3 digits, tested beyond on 4–5.

    ``(a, b)`` and ``(b, a)`` share a split: having learned ``37 + 48`` is no test of ``48 + 37``.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    name = "add"
    difficulties = (1, 2, 3)
    ood_difficulties = (4, 5)
    phrasings = (
        "What is {a} plus {b}?",
        "Add {a} and {b}.",
        "{a} + {b} = ?",
        "What is the sum of {a} and {b}?",
        "Compute {a} + {b}.",
    )

    def answer(self, problem: tuple) -> str:
        """The sum.

        :param problem: ``(a, b)``.
        :returns: ``str(a + b)``.
        """
        a, b = problem
        return str(a + b)

    def split_key(self, problem: tuple) -> tuple:
        """The operands in increasing order (addition commutes).

        :param problem: ``(a, b)``.
        :returns: ``(min, max)``.
        """
        return tuple(sorted(problem))


class SubTask(_TwoNumbers):
    """``a - b`` for two ``d``-digit numbers; the answer is negative when ``b > a`` (``"-11"``).

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    name = "sub"
    difficulties = (1, 2, 3)
    ood_difficulties = (4, 5)
    phrasings = (
        "What is {a} minus {b}?",
        "Subtract {b} from {a}.",
        "{a} - {b} = ?",
        "What is {a} take away {b}?",
        "Compute {a} - {b}.",
    )

    def answer(self, problem: tuple) -> str:
        """The difference.

        :param problem: ``(a, b)``.
        :returns: ``str(a - b)``.
        """
        a, b = problem
        return str(a - b)


class MulTask(_TwoNumbers):
    """``a × b``: level 1 is one digit by one digit, 2 is two digits by one, 3 (out of distribution)
    two by two.

    Factors are swapped freely by the split (``(a, b)`` and ``(b, a)`` share one).

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    name = "mul"
    difficulties = (1, 2)
    ood_difficulties = (3,)
    phrasings = (
        "What is {a} times {b}?",
        "Multiply {a} by {b}.",
        "{a} * {b} = ?",
        "What is the product of {a} and {b}?",
    )
    _DIGITS = {1: (1, 1), 2: (2, 1), 3: (2, 2)}

    def sample_problem(self, rng: random.Random, difficulty: int) -> tuple:
        """Factors with the level's digit counts, the longer first.

        :param rng: the random source.
        :param difficulty: 1, 2 or 3.
        :returns: ``(a, b)``.
        """
        da, db = self._DIGITS[self.check_difficulty(difficulty)]
        return (random_operand(rng, da), random_operand(rng, db))

    def answer(self, problem: tuple) -> str:
        """The product.

        :param problem: ``(a, b)``.
        :returns: ``str(a * b)``.
        """
        a, b = problem
        return str(a * b)

    def split_key(self, problem: tuple) -> tuple:
        """The factors in increasing order (multiplication commutes).

        :param problem: ``(a, b)``.
        :returns: ``(min, max)``.
        """
        return tuple(sorted(problem))


class CompareTask(_TwoNumbers):
    """Which of two different ``d``-digit numbers is larger; the answer is the larger number.

    Equal numbers are never drawn (the question would have no answer). The order of the two in the
    prompt does not change the split.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    name = "compare"
    difficulties = (1, 2, 3)
    ood_difficulties = (4, 5)
    phrasings = (
        "Which is larger, {a} or {b}?",
        "Which number is bigger: {a} or {b}?",
        "What is the larger of {a} and {b}?",
        "Name the larger number: {a} or {b}.",
    )

    def sample_problem(self, rng: random.Random, difficulty: int) -> tuple:
        """Two different numbers with ``difficulty`` digits each.

        :param rng: the random source.
        :param difficulty: the number of digits.
        :returns: ``(a, b)`` with ``a != b``.
        """
        d = self.check_difficulty(difficulty)
        a = random_operand(rng, d)
        b = random_operand(rng, d)
        while b == a:
            b = random_operand(rng, d)
        return (a, b)

    def answer(self, problem: tuple) -> str:
        """The larger number.

        :param problem: ``(a, b)``.
        :returns: ``str(max(a, b))``.
        """
        return str(max(problem))

    def split_key(self, problem: tuple) -> tuple:
        """The two numbers in increasing order.

        :param problem: ``(a, b)``.
        :returns: ``(min, max)``.
        """
        return tuple(sorted(problem))


ADD = register(AddTask())
SUB = register(SubTask())
MUL = register(MulTask())
COMPARE = register(CompareTask())
