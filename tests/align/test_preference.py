"""Preference pairs: every label verifier-checked, the length shares as asked, held-out by prompt."""

import math
import random

import pytest

from llmbook.align.preference import (
    PREFERENCE_TASKS,
    REJECTION_KINDS,
    RELATIONS,
    PreferencePair,
    build_pairs,
    corrupt,
    length_relation,
    pair_stats,
    preference_data,
)
from llmbook.tasks import TASKS, Example, generate_examples, get_task, split_of, verify

ALL_TASKS = sorted(TASKS)
MADE_KINDS = tuple(k for k in REJECTION_KINDS if k != "sample")


def _example(task: str, answer: str) -> Example:
    return Example(task=task, problem=(), difficulty=1, prompt="?", answer=answer, phrasing=0)


def _fake_samples(example: Example, rng: random.Random) -> list[str]:
    """What a model might write: the right answer in accepted forms, and wrong answers of every length."""
    gold = example.answer
    wrong = [gold + gold[-1], gold[:-1] or "x", "".join(reversed(gold)), "?", gold + " and more"]
    right = [gold, " " + gold, gold + ".", gold + " \n"]
    out = [s for s in right + wrong if rng.random() < 0.8]
    rng.shuffle(out)
    return out


@pytest.mark.parametrize(
    "kind, task, gold, allowed",
    [
        ("off_by_one", "add", "184", {"183", "185"}),
        ("off_by_one", "sub", "-7", {"-8", "-6"}),
        ("off_by_one", "reverse", "olleh", {None}),
        ("swap", "add", "184", {"814", "148"}),
        ("swap", "sort_numbers", "3, 3, 9", {"3, 9, 3"}),
        ("swap", "count", "7", {None}),
        ("truncated", "sort_numbers", "1, 2, 3", {"1, 2"}),
        ("truncated", "add", "13", {"1"}),
        ("truncated", "count", "7", {None}),
        ("dropped", "reverse", "abc", {"ac"}),
        ("dropped", "add", "13", {None}),
        ("extended", "reverse", "ab", {"aab", "abb"}),
        ("extended", "sort_numbers", "1, 2", {"1, 1, 2", "1, 2, 2"}),
        ("format", "add", "85", {"085"}),
        ("format", "sub", "-5", {"-05"}),
        ("format", "sort_numbers", "34, 65", {"34 65"}),
        ("format", "reverse", "olleh", {"olle-h"}),
        ("format", "count", "7", {"07"}),
    ],
)
def test_corrupt_by_hand(kind, task, gold, allowed):
    for seed in range(10):
        assert corrupt(_example(task, gold), kind, random.Random(seed)) in allowed


def test_wrong_digit_changes_exactly_one_content_character():
    for seed in range(50):
        gold = "12, 47, 90"
        out = corrupt(_example("sort_numbers", gold), "wrong_digit", random.Random(seed))
        assert len(out) == len(gold)
        diff = [i for i, (a, b) in enumerate(zip(gold, out)) if a != b]
        assert len(diff) == 1 and gold[diff[0]].isdigit() and out[diff[0]].isdigit()
    cap = corrupt(_example("lookup", "Paris"), "wrong_digit", random.Random(0))
    assert cap != "Paris" and len(cap) == 5 and cap[0].isupper()


def test_corrupt_refuses_unknown_kinds_and_sample_by_name():
    with pytest.raises(ValueError, match="^kind:"):
        corrupt(_example("add", "1"), "typo", random.Random(0))
    with pytest.raises(ValueError, match="^kind:.*build_pairs"):
        corrupt(_example("add", "1"), "sample", random.Random(0))


def test_length_relation_and_pair_properties():
    assert length_relation("abc", "ab") == "shorter"
    assert length_relation("abc", "abd") == "equal"
    assert length_relation("abc", "abcd") == "longer"
    ex = _example("reverse", "abc")
    pair = PreferencePair(ex, "abc", "abcc", "extended")
    assert pair.prompt == "?" and pair.relation == "longer"
    assert RELATIONS == ("shorter", "equal", "longer")


@pytest.mark.parametrize("seed", range(6))
def test_a_correct_answer_is_never_rejected_and_the_chosen_one_always_verifies(seed):
    # Every task (those left out of the default mixture too), every kind, samples that mix correct
    # answers in accepted forms with wrong ones.
    examples = generate_examples(ALL_TASKS, 150, split="train", seed=seed)
    rng = random.Random(seed)
    samples = [_fake_samples(e, rng) for e in examples]
    pairs = build_pairs(
        examples,
        seed=seed,
        samples=samples,
        kinds=REJECTION_KINDS,
        length_bias=[0.5, 0.9, 1.0][seed % 3],
    )
    assert len(pairs) > 0.9 * len(examples)
    by_id = {id(e): k for k, e in enumerate(examples)}
    kinds = set()
    for p in pairs:
        assert verify(p.example, p.chosen) == 1.0, p
        assert verify(p.example, p.rejected) == 0.0, p
        assert p.chosen == p.example.answer
        assert p.kind in REJECTION_KINDS
        kinds.add(p.kind)
        if p.kind == "sample":
            assert p.rejected in samples[by_id[id(p.example)]]
    assert "sample" in kinds and len(kinds) >= 6


def test_pairs_keep_example_order_and_at_most_one_pair_per_example():
    examples = generate_examples(list(PREFERENCE_TASKS), 80, split="train", seed=0)
    pairs = build_pairs(examples, seed=0, kinds=MADE_KINDS)
    positions = [next(i for i, e in enumerate(examples) if e is p.example) for p in pairs]
    assert positions == sorted(set(positions))


def test_an_example_whose_only_candidates_are_correct_yields_no_pair():
    examples = generate_examples(["add"], 20, split="train", seed=0)
    right_only = [[e.answer, e.answer + ".", " " + e.answer] for e in examples]
    assert build_pairs(examples, seed=0, kinds=["sample"], samples=right_only) == []
    nothing = [[] for _ in examples]
    assert build_pairs(examples, seed=0, kinds=["sample"], samples=nothing) == []
    # One wrong sample each: one pair each, that sample rejected.
    one_wrong = [[e.answer, e.answer + "9"] for e in examples]
    pairs = build_pairs(examples, seed=0, kinds=["sample"], samples=one_wrong)
    assert [p.rejected for p in pairs] == [e.answer + "9" for e in examples]


@pytest.mark.parametrize("length_bias", [0.5, 0.9])
def test_the_relation_shares_hit_the_length_bias(length_bias):
    pairs = preference_data(1500, split="train", seed=7, length_bias=length_bias)
    stats = pair_stats(pairs)
    assert stats["n"] == 1500
    assert stats["chosen_longer"] == pytest.approx(length_bias, abs=0.02)
    assert stats["relations"]["equal"] / stats["n"] == pytest.approx(0.3, abs=0.02)
    assert set(stats["tasks"]) == set(PREFERENCE_TASKS)
    assert set(stats["kinds"]) == set(MADE_KINDS)


def test_extreme_shares_are_exact():
    only_longer_chosen = pair_stats(
        preference_data(400, split="train", seed=1, length_bias=1.0, equal_share=0.0)
    )
    assert only_longer_chosen["relations"] == {"shorter": 400, "equal": 0, "longer": 0}
    assert only_longer_chosen["chosen_longer"] == 1.0
    all_equal = pair_stats(preference_data(200, split="train", seed=1, equal_share=1.0))
    assert all_equal["relations"]["equal"] == 200 and math.isnan(all_equal["chosen_longer"])


def test_pair_stats_by_hand():
    ex_a, ex_b = _example("add", "12"), _example("reverse", "abc")
    pairs = [
        PreferencePair(ex_a, "12", "1", "truncated"),
        PreferencePair(ex_a, "12", "13", "off_by_one"),
        PreferencePair(ex_b, "abc", "abcc", "extended"),
        PreferencePair(ex_b, "abc", "ab", "truncated"),
        PreferencePair(ex_b, "abc", "a", "truncated"),
    ]
    assert pair_stats(pairs) == {
        "n": 5,
        "kinds": {"extended": 1, "off_by_one": 1, "truncated": 3},
        "tasks": {"add": 2, "reverse": 3},
        "relations": {"shorter": 3, "equal": 1, "longer": 1},
        "chosen_longer": 3 / 4,
    }


def test_preference_data_is_deterministic_exact_in_size_and_from_its_split():
    a = preference_data(300, split="val", seed=3, tasks=["add", "reverse"])
    assert a == preference_data(300, split="val", seed=3, tasks=["add", "reverse"])
    assert a != preference_data(300, split="val", seed=4, tasks=["add", "reverse"])
    assert len(a) == 300 and {p.example.task for p in a} == {"add", "reverse"}
    for p in a:
        assert split_of(p.example.task, p.example.problem, p.example.phrasing) == "val"
    assert preference_data(0, split="train", seed=0) == []


def test_preference_data_hands_examples_to_the_sampler():
    calls = []

    def samples_for(examples):
        calls.append(len(examples))
        return [[e.answer + "0"] for e in examples]

    pairs = preference_data(
        50, split="train", seed=0, tasks=["add"], kinds=["sample"], samples_for=samples_for
    )
    assert calls and len(pairs) == 50
    assert all(p.kind == "sample" and p.rejected == p.example.answer + "0" for p in pairs)


def _units(pairs, *, by_problem):
    if by_problem:
        return {(p.example.task, p.example.problem) for p in pairs}
    return {p.prompt for p in pairs}


@pytest.mark.parametrize("split", ["val", "test"])
def test_held_out_pairs_share_no_prompt_and_no_problem_with_training(split):
    train = preference_data(3000, split="train", seed=0)
    held = preference_data(600, split=split, seed=1)
    assert not _units(held, by_problem=False) & _units(train, by_problem=False)
    # By problem, for every task whose split is by problem (all but the fact lookup, which Part 6
    # splits by (problem, phrasing): its held-out facts are trained in another phrasing).
    by_problem = [p for p in held if not get_task(p.example.task).split_by_phrasing]
    assert len(by_problem) > 400
    assert not _units(by_problem, by_problem=True) & _units(train, by_problem=True)


def test_held_out_lookup_pairs_reword_trained_facts_only():
    # Lookups split by (fact, phrasing), as the module docstring says: a held-out lookup asks a
    # trained fact in a wording training never used; every other task shares no problem at all.
    train = preference_data(3000, split="train", seed=0)
    held = preference_data(600, split="test", seed=1)
    lookups = [p for p in held if p.example.task == "lookup"]
    others = [p for p in held if p.example.task != "lookup"]
    assert lookups and others
    assert _units(lookups, by_problem=True) & _units(train, by_problem=True)
    assert not {(p.example.problem, p.example.phrasing) for p in lookups} & {
        (p.example.problem, p.example.phrasing) for p in train if p.example.task == "lookup"
    }
    assert not _units(others, by_problem=True) & _units(train, by_problem=True)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"length_bias": 1.5}, "length_bias"),
        ({"length_bias": float("nan")}, "length_bias"),
        ({"length_bias": True}, "length_bias"),
        ({"length_bias": "0.5"}, "length_bias"),
        ({"equal_share": -0.1}, "equal_share"),
        ({"equal_share": float("inf")}, "equal_share"),
        ({"kinds": []}, "kinds"),
        ({"kinds": ["typo"]}, "kinds"),
        ({"kinds": ["sample"]}, "samples"),
        ({"samples": [["1"]]}, "samples"),
    ],
)
def test_build_pairs_refuses_bad_fields_by_name(kwargs, field):
    examples = generate_examples(["add"], 3, split="train", seed=0)
    with pytest.raises(ValueError, match=f"^{field}:"):
        build_pairs(examples, seed=0, **kwargs)


@pytest.mark.parametrize("n", [-1, 2.0, True])
def test_preference_data_refuses_a_bad_n(n):
    with pytest.raises(ValueError, match="^n:"):
        preference_data(n, split="train", seed=0)


def test_preference_data_says_when_it_cannot_fill_n():
    # A sampler that never writes a wrong answer: no pair can be built.
    with pytest.raises(ValueError, match="^n:"):
        preference_data(
            5,
            split="train",
            seed=0,
            tasks=["add"],
            kinds=["sample"],
            samples_for=lambda examples: [[e.answer] for e in examples],
        )
