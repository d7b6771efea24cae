"""The exercise checker: right functions pass, wrong ones fail on the case that exposes them."""

from __future__ import annotations

import math

import pytest
import torch

from llmbook.align.reward_loss import bradley_terry_loss
from llmbook.exercises import EXERCISES, Case, CheckResult, Exercise, check
from llmbook.exercises.compare import compare, describe, tolerance
from llmbook.exercises.draw import Draw
from llmbook.generate.sampling import top_k_filter


def sorted_top_k(logits, k):
    """An independent top-k: sort each row, keep what is at least the k-th value."""
    out = torch.full_like(logits, float("-inf"))
    for b in range(logits.size(0)):
        ranked = sorted(logits[b].tolist(), reverse=True)
        kth = ranked[min(k, len(ranked)) - 1]
        keep = logits[b] >= kth
        out[b, keep] = logits[b, keep]
    return out


def exactly_k(logits, k):
    """Right except on ties: keeps exactly k entries per row."""
    out = torch.full_like(logits, float("-inf"))
    for b in range(logits.size(0)):
        order = sorted(range(logits.size(1)), key=lambda i: logits[b, i].item(), reverse=True)
        for i in order[:k]:
            out[b, i] = logits[b, i]
    return out


def test_a_correct_function_passes_every_case():
    result = check(sorted_top_k, "top_k", n_random=15)
    n_edge = len(EXERCISES["top_k"].edge_cases())
    assert result.passed and result.failure is None
    assert result.n_run == result.n_cases == n_edge + 15
    assert str(result) == (
        f"✓ top_k: {n_edge + 15}/{n_edge + 15} cases agree with "
        "llmbook.generate.sampling.top_k_filter"
    )
    assert result.assert_passed() is result


def test_a_function_wrong_only_on_ties_fails_on_the_tie_case():
    result = check(exactly_k, "top_k")
    names = [c.name for c in EXERCISES["top_k"].edge_cases()]
    tie = "a tie at the k-th value (every tied entry is kept)"
    assert not result.passed
    assert result.failure.case == tie
    assert result.failure.number == names.index(tie) + 1 == result.n_run
    assert result.failure.where == "output"
    assert "[[3.0, -inf, 2.0, 2.0, -inf, 2.0]]" in result.failure.expected
    assert "index (0, 3)" in result.failure.detail
    report = str(result)
    assert report.startswith(f"✗ top_k: first mismatch on case '{tie}'")
    with pytest.raises(AssertionError, match="first mismatch on case"):
        result.assert_passed()


def test_an_exception_is_reported_on_its_case():
    def breaks_on_one_row(logits, k):
        if logits.size(0) == 1:
            raise IndexError("only batches, please")
        return top_k_filter(logits, k)

    result = check(breaks_on_one_row, "top_k")
    assert result.failure.case == "one row" and result.failure.where == "call"
    assert result.failure.got == "raised IndexError: only batches, please"
    assert (
        "breaks_on_one_row" in result.failure.detail and "raise IndexError" in result.failure.detail
    )


def test_an_exception_on_a_later_case_lets_the_earlier_ones_pass():
    def breaks_on_bf16(logits, k):
        if logits.dtype == torch.bfloat16:
            raise TypeError("no bf16")
        return top_k_filter(logits, k)

    result = check(breaks_on_bf16, "top_k")
    assert result.failure.case == "bfloat16 logits" and result.n_run > 1


def test_a_wrong_signature_is_a_clear_failure():
    result = check(lambda logits: logits, "top_k")
    assert not result.passed and result.failure.where == "call"
    assert "cannot be called as naive_top_k(logits, k)" in result.failure.detail


def test_optional_parameters_may_be_keyword_only():
    def keyword_margin(chosen, rejected, *, margin=None):
        return bradley_terry_loss(chosen, rejected, margin=margin)

    assert check(keyword_margin, "bradley_terry_loss", n_random=3).passed


def test_changing_an_input_in_place_is_a_mismatch():
    def in_place(logits, k):
        kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[..., -1:]
        return logits.masked_fill_(logits < kth, float("-inf"))

    result = check(in_place, "top_k")
    assert result.failure.where == "logits" and "in place" in result.failure.detail


def test_a_detached_loss_fails_the_gradient_check():
    def detached(chosen, rejected, margin=None):
        loss, metrics = bradley_terry_loss(chosen, rejected, margin=margin)
        return loss.detach(), metrics

    result = check(detached, "bradley_terry_loss")
    assert result.failure.case == "one pair"
    assert result.failure.where == "gradient of loss with respect to chosen"


def test_a_wrong_gradient_with_the_right_value_is_caught():
    def wrong_grad(chosen, rejected, margin=None):
        loss, metrics = bradley_terry_loss(chosen, rejected, margin=margin)
        return loss + 0.5 * (rejected - rejected.detach()).sum(), metrics  # same value

    result = check(wrong_grad, "bradley_terry_loss")
    assert result.failure.where == "gradient of loss with respect to rejected"


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="did you mean 'top_k'") as info:
        check(sorted_top_k, "topk")
    for name in EXERCISES:
        assert name in str(info.value)


def test_not_a_function_and_negative_counts_are_refused():
    with pytest.raises(TypeError, match="expected your function"):
        check(3, "top_k")
    with pytest.raises(ValueError, match="n_random"):
        check(sorted_top_k, "top_k", n_random=-1)


def test_the_global_random_state_is_left_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check(EXERCISES["mean_pool_reward"].expected, "mean_pool_reward", n_random=2)
    assert torch.equal(torch.get_rng_state(), before)


def test_random_cases_depend_on_the_seed_only():
    spec = EXERCISES["top_k"]
    a, b, c = (spec.random_case(Draw(s)).args[0] for s in (0, 0, 1))
    assert torch.equal(a, b) and not (a.shape == c.shape and torch.equal(a, c))


def test_a_custom_exercise_and_the_html_report():
    spec = Exercise(
        name="double",
        chapter="book/part0/02-preferences",
        signature="double(x)",
        reference=torch.mul,
        expected=lambda x: 2 * x,
        edge_cases=lambda: [Case("a <tag>", (torch.tensor([1.0]),))],
        random_case=lambda d: Case("", (d.randn(d.integer(1, 5)),)),
    )
    good = check(lambda x: x + x, spec, n_random=4)
    assert good.passed and good.n_cases == 5 and "✓ double: 5/5" in good._repr_html_()
    bad = check(lambda x: x * 3, spec)
    assert bad.failure.case == "a <tag>"
    assert "a &lt;tag&gt;" in bad._repr_html_() and "<tag>" not in bad._repr_html_()
    assert isinstance(bad, CheckResult) and "expected 2.0, got 3.0" in bad.failure.detail


# ---- every catalog entry --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_reference_passes_its_own_check(name):
    result = check(EXERCISES[name].expected, name)
    assert result.passed, str(result)
    assert result.n_cases == len(EXERCISES[name].edge_cases()) + EXERCISES[name].n_random


def _perturb(value):
    """The same value with one visible change (the first element that can change)."""
    if isinstance(value, torch.Tensor):
        out = value.detach().clone()
        flat = out.view(-1)
        if out.dtype == torch.bool:
            flat[0] = ~flat[0]
        elif out.is_floating_point():
            finite = torch.isfinite(flat).nonzero()
            i = int(finite[0]) if len(finite) else 0
            flat[i] = flat[i] + 0.01 * (1 + flat[i].abs()) if len(finite) else 0.0
        else:
            flat[0] += 1
        return out
    if isinstance(value, dict):
        key = next(iter(value))
        return {**value, key: _perturb(value[key])}
    if isinstance(value, list):
        return [value[0] + 1, *value[1:]] if value else [0]
    if isinstance(value, float):
        return value * 1.01 + 0.01
    if isinstance(value, int):
        return value + 1
    raise TypeError(type(value))


PARTS = [
    (name, part)
    for name, spec in sorted(EXERCISES.items())
    for part in (range(len(spec.outputs)) if spec.outputs else [None])
]


@pytest.mark.parametrize(("name", "part"), PARTS)
def test_a_perturbed_reference_fails(name, part):
    spec = EXERCISES[name]

    def perturbed(*args):
        out = spec.expected(*args)
        if part is None:
            return _perturb(out)
        return tuple(_perturb(o) if k == part else o for k, o in enumerate(out))

    result = check(perturbed, name, n_random=2)
    assert not result.passed
    assert result.failure.number == 1
    expected_where = "output" if part is None else spec.outputs[part]
    assert result.failure.where.startswith(expected_where)


@pytest.mark.parametrize("name", sorted(n for n, s in EXERCISES.items() if s.grad_wrt))
def test_a_reference_with_a_changed_gradient_fails(name):
    spec = EXERCISES[name]
    i = spec.grad_wrt[-1]

    def bent(*args):
        out = spec.expected(*args)
        tilt = 0.5 * (args[i] - args[i].detach()).nan_to_num().sum()  # zero, with a gradient
        if spec.grad_of is None:
            return out + tilt
        return tuple(o + tilt if k == spec.grad_of else o for k, o in enumerate(out))

    result = check(bent, name, n_random=2)
    assert result.failure is not None and result.failure.where.startswith("gradient of")


def test_every_exercise_names_an_existing_chapter():
    from tests.book.chapters import ROOT

    for spec in EXERCISES.values():
        assert (ROOT / f"{spec.chapter}.md").is_file(), spec.chapter
        names, n_required = spec.params
        assert 1 <= n_required <= len(names)


# ---- comparison rules -----------------------------------------------------------------------


def test_compare_follows_torch_testing():
    x = torch.tensor([1.0, float("nan"), float("-inf")])
    assert compare(x, x.clone()) is None  # NaN matches NaN, -inf matches -inf
    assert compare(x, x.double()).detail.startswith("dtype")
    assert compare(x, x[:2]).detail.startswith("shape")
    assert "expected a tensor" in compare(x, [1.0, 0.0, 0.0]).detail
    assert compare(torch.tensor([1.0]), torch.tensor([1.0 + 1e-7])) is None
    assert compare(torch.tensor([1.0]), torch.tensor([1.001])) is not None
    bf = torch.tensor([1.0], dtype=torch.bfloat16)
    assert compare(bf, bf + 0.0078125) is None  # one bf16 ulp at 1.0 is within its tolerance
    assert tolerance(torch.float32, torch.bfloat16) == (1.6e-2, 1e-5)
    assert tolerance(torch.float64) == (1e-7, 1e-7)


def test_compare_nested_outputs():
    expected = (torch.tensor(1.0), {"a": 0.5, "b": 2})
    assert compare(expected, (torch.tensor(1.0), {"a": 0.5, "b": 2, "extra": 1})) is None
    missing = compare(expected, (torch.tensor(1.0), {"a": 0.5}))
    assert "missing key 'b'" in missing.detail
    wrong = compare(expected, (torch.tensor(1.0), {"a": 0.6, "b": 2}))
    assert wrong.where == "output[1]['a']"
    assert compare([1, 2, 3], [1, 2, 4]).detail == "first difference at index 2: expected 3, got 4"
    assert "length" in compare([1, 2, 3], [1, 2]).detail
    assert compare(3, 3.0).detail == "expected a Python int"
    assert compare(True, 1) is not None
    assert math.isclose(float(describe(0.25)), 0.25)
    assert (
        describe(torch.zeros(2, 3, dtype=torch.bool))
        == "bool (2, 3) [[False, False, False], [False, False, False]]"
    )
    assert describe(torch.ones(20)) == "float32 (20,)"
