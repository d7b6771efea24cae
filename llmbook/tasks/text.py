"""Tasks on letters and short lists: reversing a word, sorting letters, sorting numbers, counting a letter.

The words are random strings of lowercase letters, not dictionary words. A random string gives every
length an unlimited, evenly spread problem space (26**5, about 12 million words of five letters, each
as likely as any other), so the splits are large at every difficulty and no word is more familiar than
another; and the answer cannot be recalled from pretraining text, where "hello" next to "olleh" may
well occur: the model has to carry out the operation.

Words are compared case-insensitively (``"OLLEH"`` answers "reverse hello"), since the letters and
their order carry the answer; lists of numbers are written ``"2, 5, 9"``, and a comma followed by no
space or by one space is accepted.
"""

from __future__ import annotations

import random
import re
import string

from llmbook.tasks.base import Task, canonical_int, register

_WORD = re.compile(r"[A-Za-z]+")
_NUMBER_LIST = re.compile(r"(?:0|[1-9][0-9]*)(?:, ?(?:0|[1-9][0-9]*))*")


def random_word(rng: random.Random, length: int, alphabet: str = string.ascii_lowercase) -> str:
    """A string of letters drawn uniformly and independently.

    :param rng: the random source.
    :param length: the number of letters.
    :param alphabet: the letters to draw from.
    :returns: the word.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """
    return "".join(rng.choice(alphabet) for _ in range(length))


def canonical_word(text: str) -> str | None:
    """A word of ASCII letters, lowercased: words are compared case-insensitively.

    :param text: an answer part.
    :returns: the lowercased word, or ``None`` when ``text`` is not one or more ASCII letters.

    Introduced in {doc}`/book/part6/06-evaluation`.
    """
    return text.lower() if _WORD.fullmatch(text) else None


class _WordTask(Task):
    """Problems ``(word,)`` of random lowercase letters; difficulty is the word's length."""

    difficulties = (3, 4, 5, 6)
    ood_difficulties = (7, 8, 9, 10)

    def sample_problem(self, rng: random.Random, difficulty: int) -> tuple:
        """A random word of ``difficulty`` letters.

        :param rng: the random source.
        :param difficulty: the length.
        :returns: ``(word,)``.
        """
        return (random_word(rng, self.check_difficulty(difficulty)),)

    def prompt_fields(self, problem: tuple) -> dict[str, str]:
        """The word.

        :param problem: ``(word,)``.
        :returns: ``{"w": word}``.
        """
        return {"w": problem[0]}

    def canonical(self, problem: tuple, text: str) -> str | None:
        """A word of ASCII letters, lowercased.

        :param problem: the problem (unused).
        :param text: the answer part.
        :returns: the lowercased word, or ``None``.
        """
        return canonical_word(text)


class ReverseTask(_WordTask):
    """Reverse a random word; trained on 3–6 letters, tested beyond on 7–10.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    name = "reverse"
    phrasings = (
        "Reverse the word {w}.",
        "Spell {w} backwards.",
        "What is {w} reversed?",
        "Write {w} in reverse.",
        "Reverse {w}.",
    )

    def answer(self, problem: tuple) -> str:
        """The word backwards.

        :param problem: ``(word,)``.
        :returns: ``word[::-1]``.
        """
        return problem[0][::-1]


class SortLettersTask(_WordTask):
    """Sort the letters of a random word alphabetically; lengths as for :class:`ReverseTask`.

    Anagrams (``"cab"``, ``"bca"``) share a split: they have the same answer, and a test word whose
    letters training already sorted would test recall, not sorting.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    name = "sort_letters"
    phrasings = (
        "Sort the letters of {w}.",
        "Put the letters of {w} in alphabetical order.",
        "Arrange the letters {w} alphabetically.",
        "What is {w} with its letters sorted?",
    )

    def answer(self, problem: tuple) -> str:
        """The letters in alphabetical order.

        :param problem: ``(word,)``.
        :returns: ``"".join(sorted(word))``.
        """
        return "".join(sorted(problem[0]))

    def split_key(self, problem: tuple) -> tuple:
        """The multiset of letters, as the sorted word.

        :param problem: ``(word,)``.
        :returns: ``(sorted word,)``.
        """
        return ("".join(sorted(problem[0])),)


class SortNumbersTask(Task):
    """Sort ``k`` numbers from 0 to 99 in increasing order (repeats possible); difficulty is ``k``.

    Trained on 2–5 numbers, tested beyond on 6–8. The answer is ``"2, 5, 9"``; ``"2,5,9"`` is
    accepted too. Lists with the same numbers in another order share a split.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    name = "sort_numbers"
    difficulties = (2, 3, 4, 5)
    ood_difficulties = (6, 7, 8)
    phrasings = (
        "Sort these numbers: {nums}.",
        "Put {nums} in increasing order.",
        "Arrange in ascending order: {nums}.",
        "Sort from smallest to largest: {nums}.",
    )

    def sample_problem(self, rng: random.Random, difficulty: int) -> tuple:
        """``difficulty`` numbers drawn uniformly from 0–99.

        :param rng: the random source.
        :param difficulty: how many numbers.
        :returns: the numbers, in drawn order.
        """
        return tuple(rng.randrange(100) for _ in range(self.check_difficulty(difficulty)))

    def answer(self, problem: tuple) -> str:
        """The numbers sorted, joined by ``", "``.

        :param problem: the numbers.
        :returns: for example ``"2, 5, 9"``.
        """
        return ", ".join(str(x) for x in sorted(problem))

    def prompt_fields(self, problem: tuple) -> dict[str, str]:
        """The numbers as a list.

        :param problem: the numbers.
        :returns: ``{"nums": "9, 2, 5"}``.
        """
        return {"nums": ", ".join(str(x) for x in problem)}

    def canonical(self, problem: tuple, text: str) -> str | None:
        """Integers separated by commas with at most one space after each, in the ``", "`` form.

        :param problem: the problem (unused).
        :param text: the answer part.
        :returns: the canonical list, or ``None``.
        """
        if not _NUMBER_LIST.fullmatch(text):
            return None
        return ", ".join(part.strip(" ") for part in text.split(","))

    def prefix_form(self, problem: tuple, text: str) -> str:
        """A cut-off list with its separators made canonical (``"2,5,"`` becomes ``"2, 5, "``).

        :param problem: the problem (unused).
        :param text: the answer part.
        :returns: the text with every comma followed by one space.
        """
        return re.sub(r", ?", ", ", text)

    def split_key(self, problem: tuple) -> tuple:
        """The multiset of numbers, sorted.

        :param problem: the numbers.
        :returns: the sorted tuple.
        """
        return tuple(sorted(problem))


class CountTask(Task):
    """How many times a letter occurs in a random word; difficulty is the word's length.

    The count is drawn first, uniformly from 0 to ``ceil(length / 2)``, and the letter placed at that
    many random positions (the other letters differ from it). Uniform random letters would make the
    count almost always 0 or 1; this way zero counts appear about as often as each other count.
    Trained on 3–8 letters, tested beyond on 9–12.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    name = "count"
    difficulties = (3, 4, 5, 6, 7, 8)
    ood_difficulties = (9, 10, 11, 12)
    phrasings = (
        "How many times does {c} occur in {w}?",
        "Count the letter {c} in {w}.",
        "How many {c}'s are in {w}?",
        "In {w}, how often does {c} appear?",
    )

    def sample_problem(self, rng: random.Random, difficulty: int) -> tuple:
        """A word of ``difficulty`` letters and a letter to count in it.

        :param rng: the random source.
        :param difficulty: the word's length.
        :returns: ``(word, letter)``.
        """
        length = self.check_difficulty(difficulty)
        letter = rng.choice(string.ascii_lowercase)
        count = rng.randint(0, (length + 1) // 2)
        others = string.ascii_lowercase.replace(letter, "")
        letters = [rng.choice(others) for _ in range(length)]
        for i in rng.sample(range(length), count):
            letters[i] = letter
        return ("".join(letters), letter)

    def answer(self, problem: tuple) -> str:
        """The number of occurrences.

        :param problem: ``(word, letter)``.
        :returns: ``str(word.count(letter))``.
        """
        word, letter = problem
        return str(word.count(letter))

    def prompt_fields(self, problem: tuple) -> dict[str, str]:
        """The word and the letter.

        :param problem: ``(word, letter)``.
        :returns: ``{"w": word, "c": letter}``.
        """
        word, letter = problem
        return {"w": word, "c": letter}

    def canonical(self, problem: tuple, text: str) -> str | None:
        """An integer answer.

        :param problem: the problem (unused).
        :param text: the answer part.
        :returns: the canonical integer, or ``None``.
        """
        return canonical_int(text)


REVERSE = register(ReverseTask())
SORT_LETTERS = register(SortLettersTask())
SORT_NUMBERS = register(SortNumbersTask())
COUNT = register(CountTask())
