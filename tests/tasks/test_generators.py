"""Each task's problems, prompts and gold answers, against answers computed here independently."""

from __future__ import annotations

import random
import string
from collections import Counter

import pytest

from llmbook.tasks import TASKS, generate_examples, get_task, verify
from llmbook.tasks.facts import CAPITALS, SYMBOLS

PROMPT_BUDGET = 50  # characters: the byte-level model has a 128-token context
ANSWER_BUDGET = 20


def examples(name, n=400, split="train", levels=None):
    task = TASKS[name]
    levels = levels or list(task.difficulties + task.ood_difficulties)
    return generate_examples([name], n, split=split, seed=11, difficulty=levels)


def expected(e):
    """The gold answer, computed without the task's code."""
    p = e.problem
    if e.task == "add":
        return str(p[0] + p[1])
    if e.task == "sub":
        return str(p[0] - p[1])
    if e.task == "mul":
        return str(p[0] * p[1])
    if e.task == "compare":
        return str(p[0] if p[0] > p[1] else p[1])
    if e.task == "reverse":
        return p[0][::-1]
    if e.task == "sort_letters":
        return "".join(sorted(p[0]))
    if e.task == "sort_numbers":
        return ", ".join(map(str, sorted(p)))
    if e.task == "count":
        return str(p[0].count(p[1]))
    if e.task == "lookup":
        return {"capital": CAPITALS, "symbol": SYMBOLS}[p[0]][p[1]]
    raise AssertionError(e.task)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_gold_answers_match_an_independent_computation(name):
    for e in examples(name):
        assert e.answer == expected(e), e
        assert verify(e, e.answer) == 1.0
        assert e.prompt == get_task(name).prompt(e.problem, e.phrasing)


def test_hand_worked_answers():
    assert get_task("add").answer((37, 48)) == "85"
    assert get_task("sub").answer((3, 14)) == "-11"
    assert get_task("mul").answer((12, 7)) == "84"
    assert get_task("compare").answer((91, 19)) == "91"
    assert get_task("reverse").answer(("hello",)) == "olleh"
    assert get_task("sort_letters").answer(("banana",)) == "aaabnn"
    assert get_task("sort_numbers").answer((9, 2, 5, 2)) == "2, 2, 5, 9"
    assert get_task("count").answer(("banana", "a")) == "3"
    assert get_task("lookup").answer(("capital", "France")) == "Paris"
    assert get_task("lookup").answer(("symbol", "iron")) == "Fe"
    with pytest.raises(ValueError, match="^problem"):
        get_task("lookup").answer(("capital", "Atlantis"))


def test_hand_worked_prompts():
    assert get_task("add").prompt((37, 48), 0) == "What is 37 plus 48?"
    assert get_task("add").prompt((37, 48), 1) == "Add 37 and 48."
    assert get_task("sort_numbers").prompt((9, 2, 5), 0) == "Sort these numbers: 9, 2, 5."
    assert get_task("lookup").prompt(("symbol", "iron"), 3) == "Iron: what is its chemical symbol?"
    with pytest.raises(ValueError, match="^phrasing"):
        get_task("add").prompt((37, 48), 5)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_prompts_and_answers_fit_the_context_at_trained_levels(name):
    task = TASKS[name]
    rng = random.Random(0)
    for level in task.difficulties:
        for _ in range(100):
            problem = task.sample_problem(rng, level)
            assert len(task.answer(problem)) <= ANSWER_BUDGET
            for phrasing in range(len(task.phrasings)):
                assert len(task.prompt(problem, phrasing)) <= PROMPT_BUDGET, (problem, phrasing)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_phrasings_are_distinct_and_all_used(name):
    task = TASKS[name]
    assert len(set(task.phrasings)) == len(task.phrasings) >= 3
    used = Counter(e.phrasing for e in examples(name, 600))
    assert set(used) == set(range(len(task.phrasings)))


@pytest.mark.parametrize("name", ["add", "sub", "compare"])
def test_operands_have_the_level_s_digits(name):
    for e in examples(name):
        assert all(len(str(x)) == e.difficulty for x in e.problem)
        assert f"{e.problem[0]}" in e.prompt and f"{e.problem[1]}" in e.prompt


def test_one_digit_operands_include_zero_and_sub_goes_negative():
    drawn = examples("add", 400, levels=[1])
    assert any(0 in e.problem for e in drawn)
    assert any(e.answer.startswith("-") for e in examples("sub", 200, levels=[2]))


def test_mul_levels():
    digits = {1: (1, 1), 2: (2, 1), 3: (2, 2)}
    for e in examples("mul"):
        assert tuple(len(str(x)) for x in e.problem) == digits[e.difficulty]


def test_compare_never_draws_equal_numbers():
    drawn = examples("compare", 600, levels=[1])
    assert all(e.problem[0] != e.problem[1] for e in drawn)
    assert {e.answer == str(e.problem[0]) for e in drawn} == {True, False}


@pytest.mark.parametrize("name", ["reverse", "sort_letters"])
def test_words_are_random_lowercase_of_the_level_s_length(name):
    drawn = examples(name)
    for e in drawn:
        (word,) = e.problem
        assert len(word) == e.difficulty and set(word) <= set(string.ascii_lowercase)
    assert len({e.problem for e in drawn}) > 0.95 * len(drawn)


def test_sort_numbers_levels_and_range():
    for e in examples("sort_numbers"):
        assert len(e.problem) == e.difficulty
        assert all(0 <= x <= 99 for x in e.problem)


def test_count_includes_zero_and_larger_counts():
    drawn = examples("count", 600)
    counts = Counter(int(e.answer) for e in drawn)
    assert counts[0] > 0.1 * len(drawn)
    assert counts[2] > 0 and counts[3] > 0
    for e in drawn:
        word, letter = e.problem
        assert len(word) == e.difficulty and letter in string.ascii_lowercase and len(letter) == 1
        assert f" {letter}" in e.prompt and word in e.prompt


def test_fact_table_is_facts():
    assert len(CAPITALS) >= 40 and len(SYMBOLS) >= 20
    assert CAPITALS["Japan"] == "Tokyo" and SYMBOLS["gold"] == "Au"
    drawn = examples("lookup", 800)
    assert {e.difficulty for e in drawn} == {1}
    assert {e.problem[0] for e in drawn} == {"capital", "symbol"}
