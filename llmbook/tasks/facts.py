"""Fact lookup: capitals of countries and symbols of chemical elements, from a table in this module.

**Why this task splits differently.** A fact cannot be worked out: a model that never saw "the capital
of Peru is Lima" cannot answer it, however well it follows instructions. Holding out whole facts, as
the other tasks hold out whole problems, would make the test split measure nothing but luck. What *can*
be tested is whether a model answers a fact it learned when it is asked in words it never saw paired
with that fact. So for this task alone the split unit is the (fact, phrasing) pair: one phrasing of
every fact, chosen by hash, is always in train, and the other pairs are split 0.8/0.1/0.1 by their own
hash (see :func:`~llmbook.tasks.splits.split_of`). Every val or test pair therefore asks a fact that
training taught, in a phrasing training never used for it.

All facts have difficulty 1: there is no honest scale of how hard a fact is to recall, and no
out-of-distribution level.

Capitals are compared case-insensitively (``"paris"`` answers); element symbols are case-sensitive,
since chemistry's own convention makes ``"Co"`` (cobalt) and ``"CO"`` (carbon monoxide) different.
"""

from __future__ import annotations

import random
import re

from llmbook.tasks.base import Task, register

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Ireland": "Dublin",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Hungary": "Budapest",
    "Greece": "Athens",
    "Belgium": "Brussels",
    "Russia": "Moscow",
    "Turkey": "Ankara",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Japan": "Tokyo",
    "South Korea": "Seoul",
    "China": "Beijing",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Philippines": "Manila",
    "Indonesia": "Jakarta",
    "Australia": "Canberra",
    "New Zealand": "Wellington",
    "Canada": "Ottawa",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Venezuela": "Caracas",
    "Cuba": "Havana",
    "Argentina": "Buenos Aires",
    "Iran": "Tehran",
    "Iraq": "Baghdad",
    "Saudi Arabia": "Riyadh",
    "India": "New Delhi",
    "Ghana": "Accra",
    "Nigeria": "Abuja",
    "Ethiopia": "Addis Ababa",
    "Nepal": "Kathmandu",
}
"""Country to capital."""

SYMBOLS = {
    "hydrogen": "H",
    "helium": "He",
    "lithium": "Li",
    "carbon": "C",
    "nitrogen": "N",
    "oxygen": "O",
    "fluorine": "F",
    "neon": "Ne",
    "sodium": "Na",
    "magnesium": "Mg",
    "silicon": "Si",
    "sulfur": "S",
    "chlorine": "Cl",
    "potassium": "K",
    "calcium": "Ca",
    "iron": "Fe",
    "copper": "Cu",
    "silver": "Ag",
    "gold": "Au",
    "lead": "Pb",
    "mercury": "Hg",
    "tin": "Sn",
}
"""Element to chemical symbol."""

RELATIONS = {"capital": CAPITALS, "symbol": SYMBOLS}
"""Each relation's table; a problem is ``(relation, key)``."""
_RELATION_WORDS = {"capital": "capital", "symbol": "chemical symbol"}
_FACTS = tuple(sorted((rel, key) for rel, table in RELATIONS.items() for key in table))
_NAME = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")


class LookupTask(Task):
    """Look up a fact in :data:`CAPITALS` or :data:`SYMBOLS`; split by (fact, phrasing) pairs.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    name = "lookup"
    difficulties = (1,)
    ood_difficulties = ()
    split_by_phrasing = True
    phrasings = (
        "What is the {rel} of {key}?",
        "Name the {rel} of {key}.",
        "Tell me the {rel} of {key}.",
        "{key}: what is its {rel}?",
        "Give the {rel} of {key}.",
        "What's the {rel} of {key}?",
    )

    def sample_problem(self, rng: random.Random, difficulty: int) -> tuple:
        """A fact drawn uniformly from both tables together.

        :param rng: the random source.
        :param difficulty: 1.
        :returns: ``(relation, key)``.
        """
        self.check_difficulty(difficulty)
        return rng.choice(_FACTS)

    def answer(self, problem: tuple) -> str:
        """The value in the table.

        :param problem: ``(relation, key)``.
        :returns: the capital or symbol.
        :raises ValueError: naming ``problem`` when it is not in the tables.
        """
        relation, key = problem
        try:
            return RELATIONS[relation][key]
        except (KeyError, TypeError):
            raise ValueError(f"problem: no fact {problem!r} in the tables") from None

    def prompt_fields(self, problem: tuple) -> dict[str, str]:
        """The relation in words and the key.

        :param problem: ``(relation, key)``.
        :returns: ``{"rel": ..., "key": ...}``.
        """
        relation, key = problem
        return {"rel": _RELATION_WORDS[relation], "key": key}

    def prompt(self, problem: tuple, phrasing: int) -> str:
        """The question, with its first letter capitalised (element names are lowercase).

        :param problem: ``(relation, key)``.
        :param phrasing: the index of the phrasing to use.
        :returns: the prompt text.
        """
        text = super().prompt(problem, phrasing)
        return text[:1].upper() + text[1:]

    def canonical(self, problem: tuple, text: str) -> str | None:
        """A name of ASCII letters in words separated by single spaces; lowercased for capitals.

        :param problem: ``(relation, key)``; the relation decides whether case counts.
        :param text: the answer part.
        :returns: the canonical name, or ``None``.
        """
        if not _NAME.fullmatch(text):
            return None
        return text if problem[0] == "symbol" else text.lower()


LOOKUP = register(LookupTask())
