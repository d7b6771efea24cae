"""Verifiers accept exactly the gold answer and its allowed formats, classify failures, never crash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.tasks import FAILURE_KINDS, TASKS, Example, classify_failure, generate_examples, verify
from llmbook.tasks.base import canonical_int


def example(task, problem, phrasing=0):
    t = TASKS[task]
    return Example(task, problem, 1, t.prompt(problem, phrasing), t.answer(problem), phrasing)


ADD = example("add", (37, 48))  # 85
SUB = example("sub", (3, 14))  # -11
BIG = example("add", (999, 999))  # 1998
CARRY = example("add", (999, 1))  # 1000
CMP = example("compare", (37, 48))  # 48
REV = example("reverse", ("hello",))  # olleh
SORTL = example("sort_letters", ("banana",))  # aaabnn
NUMS = example("sort_numbers", (9, 2, 5))  # 2, 5, 9
COUNT = example("count", ("banana", "a"))  # 3
ZERO = example("count", ("kiwi", "a"))  # 0
CAP = example("lookup", ("capital", "France"))  # Paris
CAP2 = example("lookup", ("capital", "India"))  # New Delhi
SYM = example("lookup", ("symbol", "iron"))  # Fe
SAMPLES = [ADD, SUB, BIG, CARRY, CMP, REV, SORTL, NUMS, COUNT, ZERO, CAP, CAP2, SYM]


@pytest.mark.parametrize(
    ("ex", "accepted"),
    [
        (ADD, ["85", " 85", "85\n", "\t85.\n", "85."]),
        (SUB, ["-11", "-11.", " -11 "]),
        (BIG, ["1998", "1,998", "1,998."]),
        (ZERO, ["0", "0."]),
        (CMP, ["48"]),
        (REV, ["olleh", "OLLEH", "Olleh.", " olleh\n"]),
        (SORTL, ["aaabnn", "AAABNN"]),
        (NUMS, ["2, 5, 9", "2,5,9", "2, 5,9", "2,5, 9.", " 2, 5, 9\n"]),
        (CAP, ["Paris", "paris", "PARIS.", " Paris\n"]),
        (CAP2, ["New Delhi", "new delhi", "NEW DELHI."]),
        (SYM, ["Fe", "Fe.", " Fe "]),
    ],
)
def test_allowed_formats_score_one(ex, accepted):
    for text in accepted:
        assert verify(ex, text) == 1.0, text
        assert verify(ex, text.encode()) == 1.0, text
        assert classify_failure(ex, text) == "correct"


@pytest.mark.parametrize(
    ("ex", "rejected"),
    [
        (ADD, ["84", "86", "8", "850", "085", "+85", "85..", "85 .", "85!", "The answer is 85",
               "85 85", "8 5", "eighty-five", "٨٥", "85\x00", "85\ufffd", ".85", "85,", "-85"]),
        (SUB, ["11", "- 11", "-10", "-12", "-1", "−11"]),
        (BIG, ["19,98", "1,9980", "1998.0", "1 998", "01,998", ",1998"]),
        (ZERO, ["-0", "00", "1", "zero", ""]),
        (CMP, ["37", "47", "49", "48 or 37"]),
        (REV, ["olle", "olleh!", "o l l e h", "hello", "olleho", "'olleh'"]),
        (NUMS, ["2 5 9", "2, 5", "9, 5, 2", "2,  5, 9", "2 ,5, 9", "[2, 5, 9]", "2, 5, 9,", "2, 5, 09"]),
        (CAP, ["Pari", "Lyon", "Paris, France", "Par is"]),
        (CAP2, ["New  Delhi", "NewDelhi", "Delhi"]),
        (SYM, ["fe", "FE", "F", "Iron", "Fe2"]),
    ],
)  # fmt: skip
def test_near_misses_score_zero(ex, rejected):
    for text in rejected:
        assert verify(ex, text) == 0.0, text
        assert classify_failure(ex, text) != "correct", text


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generated_gold_is_accepted_and_its_neighbours_are_not(name):
    for e in generate_examples([name], 200, split="test", seed=5):
        assert verify(e, e.answer) == 1.0
        assert verify(e, f"  {e.answer}.\n") == 1.0
        assert verify(e, e.answer + " and more") == 0.0
        assert verify(e, f"Answer: {e.answer}") == 0.0
        if len(e.answer) > 1:
            assert verify(e, e.answer[:-1]) == 0.0
            assert classify_failure(e, e.answer[:-1]) == "truncated"
        if canonical_int(e.answer) is not None:
            for wrong in (int(e.answer) + 1, int(e.answer) - 1):
                assert verify(e, str(wrong)) == 0.0
                assert classify_failure(e, str(wrong)) == "off_by_one"


@pytest.mark.parametrize(
    ("ex", "text", "kind"),
    [
        (ADD, "85", "correct"),
        (ADD, "", "empty"),
        (ADD, " \n\t", "empty"),
        (ADD, b"", "empty"),
        (ADD, "eighty", "format"),
        (ADD, "85 apples", "format"),
        (ADD, b"\xff\xfe", "format"),
        (ADD, ".", "format"),
        (ADD, "8", "truncated"),
        (ADD, "86", "off_by_one"),
        (ADD, "84", "off_by_one"),
        (ADD, "95", "wrong_digit"),
        (ADD, "35", "wrong_digit"),
        (ADD, "58", "wrong"),
        (ADD, "-85", "wrong"),
        (ADD, "1,234", "wrong"),
        (SUB, "-", "truncated"),
        (SUB, "-1", "truncated"),
        (SUB, "-12", "off_by_one"),
        (SUB, "-21", "wrong_digit"),
        (SUB, "11", "wrong"),
        (CARRY, "100", "truncated"),
        (CARRY, "999", "off_by_one"),
        (CARRY, "1100", "wrong_digit"),
        (CARRY, "2000", "wrong_digit"),
        (CMP, "37", "wrong"),
        (CMP, "47", "off_by_one"),
        (CMP, "38", "wrong_digit"),
        (REV, "oll", "truncated"),
        (REV, "OLL.", "truncated"),
        (REV, "ollhe", "wrong"),
        (REV, "olleh!", "format"),
        (REV, "12", "format"),
        (NUMS, "2, 5,", "truncated"),
        (NUMS, "2,5,", "truncated"),
        (NUMS, "2", "truncated"),
        (NUMS, "2, 5, 8", "wrong"),
        (NUMS, "2 5 9", "format"),
        (COUNT, "2", "off_by_one"),
        (COUNT, "5", "wrong_digit"),
        (COUNT, "three", "format"),
        (ZERO, "1", "off_by_one"),
        (ZERO, "-1", "off_by_one"),
        (SYM, "fe", "wrong"),
        (SYM, "F", "truncated"),
        (SYM, "26", "format"),
        (CAP, "par", "truncated"),
        (CAP, "Lyon", "wrong"),
    ],
)
def test_classify(ex, text, kind):
    assert kind in FAILURE_KINDS
    assert classify_failure(ex, text) == kind


def test_huge_and_odd_completions_do_not_crash():
    huge_number = "9" * 100_000  # past Python's int() digit limit: must never reach int()
    assert verify(ADD, huge_number) == 0.0
    assert classify_failure(ADD, huge_number) == "wrong"
    assert classify_failure(ADD, "1" + "0" * 5000) == "wrong"
    assert verify(NUMS, "2, " * 50_000) == 0.0
    assert classify_failure(REV, "a" * 200_000) == "wrong"
    assert verify(ADD, "85" + "\n" * 10_000) == 1.0
    assert classify_failure(ADD, "\x00\x01\ufffd") == "format"
    assert verify(ADD, bytearray(b"85")) == 1.0
    with pytest.raises(TypeError, match="completion"):
        verify(ADD, 85)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_garbage_never_crashes(completion):
    for ex in SAMPLES:
        reward = verify(ex, completion)
        kind = classify_failure(ex, completion)
        assert reward in (0.0, 1.0)
        assert kind in FAILURE_KINDS
        assert (reward == 1.0) == (kind == "correct")


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="0123456789-,. \n", max_size=12))
def test_number_like_text_scores_one_only_when_it_means_the_gold(completion):
    # an independent reading of the allowed formats: optional period, groups of three after commas
    part = completion.strip()
    part = part[:-1] if part.endswith(".") else part
    digits = part.replace(",", "")
    grouped_ok = "," not in part or (
        all(len(g) == 3 for g in part.lstrip("-").split(",")[1:])
        and 1 <= len(part.lstrip("-").split(",")[0]) <= 3
    )
    means_85 = digits == "85" and grouped_ok
    assert verify(ADD, completion) == (1.0 if means_85 else 0.0)
    means_1998 = digits == "1998" and grouped_ok
    assert verify(BIG, completion) == (1.0 if means_1998 else 0.0)
    assert classify_failure(ADD, completion) in FAILURE_KINDS
