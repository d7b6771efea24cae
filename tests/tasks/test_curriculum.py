"""Curriculum schedules are permutations ordered as their docstrings promise."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from llmbook.tasks import SCHEDULES, Example, difficulty_score, generate_examples, order_examples


def mixture(n=600, seed=0):
    return generate_examples(
        ["add", "reverse", "sort_numbers", "lookup"], n, split="train", seed=seed
    )


def make(task, difficulty):
    return Example(task, (), difficulty, "", "", 0)


def test_difficulty_score_by_rank():
    assert [difficulty_score(make("add", d)) for d in (1, 2, 3)] == [0.0, 0.5, 1.0]
    assert [difficulty_score(make("add", d)) for d in (4, 5)] == [1.5, 2.0]
    reverse = [difficulty_score(make("reverse", d)) for d in (3, 4, 5, 6, 7)]
    assert reverse == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3])
    assert [difficulty_score(make("mul", d)) for d in (1, 2, 3)] == [0.0, 1.0, 2.0]
    assert difficulty_score(make("lookup", 1)) == 0.0
    with pytest.raises(ValueError, match="^difficulty"):
        difficulty_score(make("add", 7))
    with pytest.raises(ValueError, match="^task"):
        difficulty_score(make("nope", 1))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_is_a_permutation(schedule):
    examples = mixture()
    ordered = order_examples(examples, schedule, seed=3)
    assert Counter(ordered) == Counter(examples)
    assert examples == mixture()  # the input is not reordered in place


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_seeds_matter_and_repeat(schedule):
    examples = mixture()
    assert order_examples(examples, schedule, seed=1) == order_examples(examples, schedule, seed=1)
    assert order_examples(examples, schedule, seed=1) != order_examples(examples, schedule, seed=2)


def test_random_is_a_shuffle():
    examples = mixture()
    ordered = order_examples(examples, "random", seed=0)
    assert ordered != examples
    scores = [difficulty_score(e) for e in ordered]
    assert scores != sorted(scores)


def test_easy_to_hard_and_back():
    examples = mixture()
    up = [difficulty_score(e) for e in order_examples(examples, "easy_to_hard", seed=0)]
    down = [difficulty_score(e) for e in order_examples(examples, "hard_to_easy", seed=0)]
    assert up == sorted(up) and up[0] < up[-1]
    assert down == sorted(down, reverse=True)
    # ties are shuffled: the easiest block does not keep the input order
    easiest = [e for e in examples if difficulty_score(e) == 0.0]
    ordered = order_examples(examples, "easy_to_hard", seed=0)[: len(easiest)]
    assert Counter(ordered) == Counter(easiest) and ordered != easiest


def test_mixed_without_replay_is_chunkwise_easy_to_hard():
    examples = mixture(800)
    stages = 4
    ordered = order_examples(examples, "mixed", seed=0, stages=stages, replay=0)
    chunk_scores = [
        [difficulty_score(e) for e in ordered[k * 200 : (k + 1) * 200]] for k in range(stages)
    ]
    for lower, upper in zip(chunk_scores, chunk_scores[1:]):
        assert max(lower) <= min(upper)
    assert any(c != sorted(c) for c in chunk_scores)  # shuffled inside a stage


def test_mixed_defers_easy_examples_into_later_stages():
    examples = mixture(800)
    n, stages, replay = 800, 4, 0.25
    ordered = order_examples(examples, "mixed", seed=0, stages=stages, replay=replay)
    easy_sorted = sorted(difficulty_score(e) for e in examples)
    first_chunk_max = easy_sorted[n // stages - 1]
    # stage 1 keeps floor((1 - replay) * 200) = 150 of the easiest chunk and nothing else
    first_stage = ordered[: n // stages - math.floor(replay * n // stages)]
    assert all(difficulty_score(e) <= first_chunk_max for e in first_stage)
    # the last stage is the hardest chunk plus deferred easier examples
    last_start = n - n // stages
    hardest_min = easy_sorted[last_start]
    last = [difficulty_score(e) for e in ordered[-(n // stages) :]]
    assert any(s < hardest_min for s in last)


def test_mixed_with_one_stage_is_a_shuffle_of_everything():
    examples = mixture(100)
    ordered = order_examples(examples, "mixed", seed=0, stages=1, replay=0.5)
    assert Counter(ordered) == Counter(examples)


def test_short_and_empty_inputs():
    assert order_examples([], "mixed", seed=0) == []
    one = mixture(1)
    assert order_examples(one, "mixed", seed=0, stages=4) == one


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(schedule="curriculum"), "schedule"),
        (dict(stages=0), "stages"),
        (dict(stages=2.5), "stages"),
        (dict(replay=1.0), "replay"),
        (dict(replay=-0.1), "replay"),
        (dict(replay=float("nan")), "replay"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    args = dict(schedule="mixed", seed=0) | kwargs
    with pytest.raises(ValueError, match=f"^{field}"):
        order_examples(mixture(10), args.pop("schedule"), **args)
