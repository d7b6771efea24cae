import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.generate.sampling import sample_next, top_k_filter, top_p_filter


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=12),
    st.floats(0.01, 1.0),
)
def test_top_p_keeps_the_smallest_set_reaching_p(values, p):
    logits = torch.tensor(values, dtype=torch.float64)
    kept = torch.isfinite(top_p_filter(logits, p))
    probs = torch.softmax(logits, -1)
    order = torch.argsort(probs, descending=True, stable=True)
    sorted_probs = probs[order]
    cum = sorted_probs.cumsum(0)
    m = int((cum < p - 1e-12).sum()) + 1  # smallest m with cum[m-1] >= p
    m = min(m, len(values))
    # The kept set has mass >= p, and is exactly as large as the smallest such set (ties aside).
    assert probs[kept].sum() >= p - 1e-9
    assert int(kept.sum()) == m
    # Every kept token is at least as likely as every dropped one.
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max() - 1e-12


def test_top_p_example_by_hand():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = torch.isfinite(top_p_filter(probs.log(), 0.8))
    assert kept.tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    kept = torch.isfinite(top_p_filter(probs.log(), 0.81))
    assert kept.tolist() == [True, True, True, False]


def test_top_k():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, True, False]]
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_temperature_to_zero_equals_greedy():
    torch.manual_seed(0)
    logits = torch.randn(64, 50) * 3
    greedy, _ = sample_next(logits, temperature=0)
    assert torch.equal(greedy, logits.argmax(-1))
    cold, _ = sample_next(logits, temperature=1e-4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cold, greedy)


def test_sampling_is_seeded_and_follows_the_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 3)
    ids, logps = sample_next(logits, generator=torch.Generator().manual_seed(0))
    again, _ = sample_next(logits, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)
    freq = torch.bincount(ids, minlength=3).float() / len(ids)
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=0.015, rtol=0)
    torch.testing.assert_close(
        logps, torch.log_softmax(logits, -1).gather(-1, ids[:, None]).squeeze(-1)
    )


def test_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        sample_next(torch.zeros(1, 3), temperature=-1)


def test_top_p_one_keeps_everything():
    torch.manual_seed(0)
    logits = torch.randn(4, 259) * 8  # a peaked row whose float32 cumulative sum hits 1.0 early
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()
