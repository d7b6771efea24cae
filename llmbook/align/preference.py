r"""Preference pairs from the verifiable tasks: a correct answer (chosen) against a plausible wrong one.

A reward model learns from comparisons, "for this prompt, answer A is better than answer B". Real
preference data comes from human raters; here the verifier labels every pair, so each label is right
and every accuracy can be checked. The wrong answers are the mistakes a small model makes:

- ``off_by_one``: an integer one away from the gold (a lost carry);
- ``wrong_digit``: one digit or letter replaced by another;
- ``swap``: two neighbouring characters exchanged (``"148"`` for ``"184"``, ``"olleh"`` for ``"olelh"``);
- ``truncated``: the answer cut short (its last character, or its last list item, missing);
- ``dropped``: one inner character left out;
- ``extended``: one character too many (a repeated digit or letter, a repeated list item);
- ``format``: the right content in a form the task does not accept (``"085"``, ``"34 65"``);
- ``sample``: a completion sampled from the SFT model that the verifier rejects.

Pairs where both answers are correct, or both wrong, are never built: the verifier cannot say which
is better, so any label would be noise, and the reward model would learn a preference that no check
backs (the style of one correct form over another, or which wrong answer is "less wrong").

The *length relation* of a pair says whether the rejected answer is shorter, as long, or longer than
the chosen one. A clean set (``length_bias=0.5``) makes the chosen answer the longer one as often as
the shorter one, so length says nothing about the label. A biased set (``length_bias=0.9``) makes the
chosen answer the longer one in about 9 of 10 pairs whose lengths differ (a little fewer: a
one-character gold answer has no shorter wrong answer): the same kinds of mistakes, drawn
so that "longer wins" predicts the label, as raters' preference for long answers leaks into real
preference data. A reward model trained on it can learn the length instead of the correctness.

Held-out pairs are disjoint by prompt: their examples come from another split of
:mod:`llmbook.tasks.splits`, which never shares a problem (in any phrasing) with the training split,
except for fact lookups, which split by (fact, phrasing): a held-out lookup asks a trained fact in
an untrained wording, so its accuracy measures robustness to rewording, not new knowledge.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmbook.tasks import generate_examples, verify
from llmbook.tasks.base import Example

REJECTION_KINDS = (
    "off_by_one",
    "wrong_digit",
    "swap",
    "truncated",
    "dropped",
    "extended",
    "format",
    "sample",
)
"""How a rejected answer is made (see the module docstring)."""

CONSTRUCTED_KINDS = tuple(k for k in REJECTION_KINDS if k != "sample")
"""The rejection kinds :func:`corrupt` makes from the gold answer alone (no model needed)."""

RELATIONS = ("shorter", "equal", "longer")
"""The length of the rejected answer relative to the chosen one."""

PREFERENCE_TASKS = ("add", "compare", "count", "lookup", "reverse", "sort_letters", "sort_numbers")
"""The default task mixture of the preference data (the tasks whose mistakes a reward model of this
size can learn to spot; Part 7.1 says why multiplication and subtraction are left out)."""


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: for ``example``'s prompt, ``chosen`` is correct and ``rejected`` is not.

    :param example: the task example (prompt, gold answer).
    :param chosen: a completion the verifier accepts.
    :param rejected: a completion the verifier rejects.
    :param kind: how ``rejected`` was made, one of :data:`REJECTION_KINDS`.

    Introduced in {doc}`/book/part7/01-preference-data`.
    """

    example: Example
    chosen: str
    rejected: str
    kind: str

    @property
    def prompt(self) -> str:
        """The user's prompt."""
        return self.example.prompt

    @property
    def relation(self) -> str:
        """``"shorter"``, ``"equal"`` or ``"longer"``: the rejected answer's length against the chosen's."""
        return length_relation(self.chosen, self.rejected)


def length_relation(chosen: str, rejected: str) -> str:
    """Whether ``rejected`` is shorter than, as long as, or longer than ``chosen`` (in characters).

    :param chosen: the chosen completion.
    :param rejected: the rejected completion.
    :returns: one of :data:`RELATIONS`.

    Introduced in {doc}`/book/part7/01-preference-data`.
    """
    if len(rejected) < len(chosen):
        return "shorter"
    return "equal" if len(rejected) == len(chosen) else "longer"


def _is_list(answer: str) -> bool:
    return ", " in answer


def _is_int(answer: str) -> bool:
    return answer.lstrip("-").isdigit()


def _other_char(c: str, rng: random.Random) -> str:
    pool = "0123456789" if c.isdigit() else "abcdefghijklmnopqrstuvwxyz"
    choice = rng.choice([x for x in pool if x != c.lower()])
    return choice.upper() if c.isupper() else choice


def _positions(answer: str) -> list[int]:
    # Characters that carry content: digits and letters, never a sign, comma or space.
    return [i for i, c in enumerate(answer) if c.isalnum()]


def corrupt(example: Example, kind: str, rng: random.Random) -> str | None:
    """A plausible wrong answer of one kind for an example, or None when the kind does not apply.

    The result is not checked here: :func:`build_pairs` keeps only what the verifier rejects (a swap
    of two equal letters, for instance, changes nothing).

    :param example: the example; its gold ``answer`` is corrupted.
    :param kind: one of :data:`REJECTION_KINDS` except ``"sample"``.
    :param rng: the random source.
    :returns: the corrupted answer, or None.
    :raises ValueError: for an unknown kind.

    Introduced in {doc}`/book/part7/01-preference-data`.
    """
    gold = example.answer
    pos = _positions(gold)
    if kind == "off_by_one":
        return str(int(gold) + rng.choice((-1, 1))) if _is_int(gold) else None
    if kind == "wrong_digit":
        if not pos:
            return None
        i = rng.choice(pos)
        return gold[:i] + _other_char(gold[i], rng) + gold[i + 1 :]
    if kind == "swap":
        pairs = [i for i in pos if i + 1 in pos and gold[i] != gold[i + 1]]
        if _is_list(gold):
            items = gold.split(", ")
            swaps = [i for i in range(len(items) - 1) if items[i] != items[i + 1]]
            if not swaps:
                return None
            i = rng.choice(swaps)
            items[i], items[i + 1] = items[i + 1], items[i]
            return ", ".join(items)
        if not pairs:
            return None
        i = rng.choice(pairs)
        return gold[:i] + gold[i + 1] + gold[i] + gold[i + 2 :]
    if kind == "truncated":
        if _is_list(gold):
            return gold.rsplit(", ", 1)[0]
        return gold[:-1] if len(gold) > 1 and gold[-2:-1].isalnum() else None
    if kind == "dropped":
        inner = [i for i in pos if 0 < i < len(gold) - 1]
        if not inner or _is_list(gold):
            return None
        i = rng.choice(inner)
        return gold[:i] + gold[i + 1 :]
    if kind == "extended":
        if _is_list(gold):
            items = gold.split(", ")
            i = rng.randrange(len(items))
            return ", ".join(items[: i + 1] + items[i:])
        if not pos:
            return None
        i = rng.choice(pos)
        return gold[: i + 1] + gold[i:]  # the character at i, repeated
    if kind == "format":
        if _is_list(gold):
            return gold.replace(", ", " ")
        if _is_int(gold):
            return ("-0" + gold[1:]) if gold.startswith("-") else "0" + gold
        return gold[:-1] + "-" + gold[-1] if len(gold) > 1 else None
    if kind == "sample":
        raise ValueError("kind: 'sample' answers come from a model, pass them to build_pairs")
    raise ValueError(f"kind: unknown rejection kind {kind!r}; known: {REJECTION_KINDS}")


def _check_share(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def build_pairs(
    examples: Sequence[Example],
    *,
    seed: int,
    length_bias: float = 0.5,
    equal_share: float = 0.3,
    kinds: Sequence[str] = CONSTRUCTED_KINDS,
    samples: Sequence[Sequence[str]] | None = None,
) -> list[PreferencePair]:
    """Turn examples into verifier-checked preference pairs with a chosen length relation.

    Every kind in ``kinds`` proposes a wrong answer for the example; those the verifier accepts (a
    pair of two correct answers) are dropped. The relation of the pair is then chosen by quota: the target shares are ``equal_share`` for ``"equal"``, and of the rest ``length_bias`` for
    ``"shorter"`` (the chosen answer is the longer one) and ``1 - length_bias`` for ``"longer"``;
    the feasible relation furthest below its share is taken, and one candidate of it picked
    uniformly. An example with no candidate yields no pair. The chosen answer is always the gold
    answer, which the verifier accepts.

    :param examples: the examples (one pair at most each, in order).
    :param seed: seed of the draws (only ``random.Random(seed)`` is used).
    :param length_bias: among pairs whose lengths differ, the share in which the chosen answer is
        the longer one: 0.5 for a clean set, near 1 for a length-biased one.
    :param equal_share: the share of pairs of equal length.
    :param kinds: the rejection kinds to use (a subset of :data:`REJECTION_KINDS`; by default all
        but ``"sample"``, which needs ``samples``).
    :param samples: optional completions sampled from a model, one list per example; the wrong ones
        are candidates of kind ``"sample"`` (which needs them).
    :returns: the pairs, in example order.
    :raises ValueError: naming ``length_bias``, ``equal_share``, ``kinds`` or ``samples`` when invalid.

    Introduced in {doc}`/book/part7/01-preference-data`.
    """
    length_bias = _check_share("length_bias", length_bias)
    equal_share = _check_share("equal_share", equal_share)
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in REJECTION_KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds: expected a non-empty subset of {REJECTION_KINDS}, got {kinds!r}")
    if samples is not None and len(samples) != len(examples):
        raise ValueError(
            f"samples: expected one list per example ({len(examples)}), got {len(samples)}"
        )
    if "sample" in kinds and samples is None:
        raise ValueError("samples: the 'sample' kind needs the model's completions")
    rng = random.Random(seed)
    target = {
        "equal": equal_share,
        "shorter": (1.0 - equal_share) * length_bias,
        "longer": (1.0 - equal_share) * (1.0 - length_bias),
    }
    made: Counter = Counter()  # pairs built of each relation
    pairs: list[PreferencePair] = []
    for k, example in enumerate(examples):
        by_relation: dict[str, list[tuple[str, str]]] = {r: [] for r in RELATIONS}
        for kind in kinds:
            if kind == "sample":
                wrong = sorted({s for s in samples[k] if s.strip() and verify(example, s) == 0.0})
                for relation in RELATIONS:
                    options = [s for s in wrong if length_relation(example.answer, s) == relation]
                    if options:
                        by_relation[relation].append(("sample", rng.choice(options)))
                continue
            text = corrupt(example, kind, rng)
            if text is not None and verify(example, text) == 0.0:
                by_relation[length_relation(example.answer, text)].append((kind, text))
        feasible = [r for r in RELATIONS if by_relation[r] and target[r] > 0]
        if not feasible:
            continue
        # Quotas, not independent draws: a one-character answer cannot be cut shorter, so drawing
        # the relation first would skew the shares; taking the feasible relation furthest below its
        # share (ties broken at random) keeps the shares of the whole set as close to the targets as
        # the examples allow (a set rich in one-character answers falls a little short).
        total = sum(made.values()) + 1
        deficit = {r: target[r] * total - made[r] for r in feasible}
        best = max(deficit.values())
        relation = rng.choice([r for r in feasible if deficit[r] == best])
        kind, rejected = rng.choice(by_relation[relation])
        made[relation] += 1
        pairs.append(PreferencePair(example, example.answer, rejected, kind))
    return pairs


def preference_data(
    n: int,
    *,
    split: str,
    seed: int,
    tasks: Sequence[str] | Mapping[str, float] = PREFERENCE_TASKS,
    length_bias: float = 0.5,
    equal_share: float = 0.3,
    kinds: Sequence[str] = CONSTRUCTED_KINDS,
    samples_for=None,
) -> list[PreferencePair]:
    """About ``n`` preference pairs of one split: examples drawn, then :func:`build_pairs`.

    Draws examples in rounds until ``n`` pairs exist (an example may yield none), so the result has
    exactly ``n`` pairs.

    :param n: the number of pairs.
    :param split: ``"train"``, ``"val"`` or ``"test"`` (disjoint by problem, hence by prompt).
    :param seed: the seed of the examples and of the pairs.
    :param tasks: the task mixture (names, or name to weight).
    :param length_bias: see :func:`build_pairs`.
    :param equal_share: see :func:`build_pairs`.
    :param kinds: see :func:`build_pairs`.
    :param samples_for: with the kind ``"sample"``, a function from a list of examples to one list
        of model completions per example (see :func:`llmbook.align.reward.sft_samples`).
    :returns: ``n`` pairs.
    :raises ValueError: for invalid fields, or when 20 rounds cannot fill ``n`` pairs.

    Introduced in {doc}`/book/part7/01-preference-data`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    pairs: list[PreferencePair] = []
    for round_ in range(20):
        if len(pairs) >= n:
            break
        want = max(16, int(1.3 * (n - len(pairs))))
        examples = generate_examples(tasks, want, split=split, seed=seed * 1000 + round_)
        samples = samples_for(examples) if samples_for is not None and "sample" in kinds else None
        pairs.extend(
            build_pairs(
                examples,
                seed=seed * 1000 + round_,
                length_bias=length_bias,
                equal_share=equal_share,
                kinds=kinds,
                samples=samples,
            )
        )
    if len(pairs) < n:
        raise ValueError(f"n: only {len(pairs)} pairs could be built, {n} were asked for")
    return pairs[:n]


def pair_stats(pairs: Sequence[PreferencePair]) -> dict:
    """Counts that describe a preference set: kinds, tasks, length relations.

    :param pairs: the pairs.
    :returns: ``{"n", "kinds", "tasks", "relations", "chosen_longer"}``, where ``chosen_longer`` is
        the share of pairs of unequal length in which the chosen answer is the longer one (how well
        "longer wins" predicts the label).

    Introduced in {doc}`/book/part7/01-preference-data`.
    """
    relations = Counter(p.relation for p in pairs)
    unequal = relations["shorter"] + relations["longer"]
    return {
        "n": len(pairs),
        "kinds": dict(sorted(Counter(p.kind for p in pairs).items())),
        "tasks": dict(sorted(Counter(p.example.task for p in pairs).items())),
        "relations": {r: relations[r] for r in RELATIONS},
        "chosen_longer": relations["shorter"] / unequal if unequal else float("nan"),
    }
