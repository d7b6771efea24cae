import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.generate.sampling import check_sampling, sample_next, top_k_filter, top_p_filter


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


# Independent references: Hugging Face's logits processors, the ones `model.generate` chains.


def _hf():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    return TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def _random_logits(seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.randn(64, 50, generator=g) * 3  # no ties (almost surely)
    tied = (torch.randn(64, 12, generator=g) * 2).round() / 2  # many ties, incl. at the cut
    edge = torch.tensor(
        [
            [1e4, -1e4, 0.0, 1e4, -float("inf"), 5.0],  # huge values, a tie at the top, a -inf
            [0.0] * 6,  # uniform: every entry tied
            [-float("inf")] * 5 + [1.0],  # one finite entry
        ]
    )
    return smooth, tied, edge


@pytest.mark.parametrize("k", [1, 2, 5, 11, 12, 50, 57])  # 1, and k >= V for some rows
def test_top_k_equals_transformers(k):
    _, TopK, _ = _hf()
    for logits in _random_logits():
        expected = TopK(top_k=k)(None, logits.clone())
        assert torch.equal(top_k_filter(logits, k), expected), k


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_top_p_equals_transformers(p):
    _, _, TopP = _hf()
    smooth, tied, edge = _random_logits()
    assert torch.equal(top_p_filter(smooth, p), TopP(top_p=p)(None, smooth.clone())), p
    # Ties straddling the cut: both keep the same number of tied tokens but may pick different ones
    # (their sort orders differ), so compare each row's kept values as a sorted list.
    ours = top_p_filter(tied, p).sort(dim=-1).values
    theirs = TopP(top_p=p)(None, tied.clone()).sort(dim=-1).values
    assert torch.equal(ours, theirs), p
    ours, theirs = top_p_filter(edge, p), TopP(top_p=p)(None, edge.clone())
    if p < 1.0:
        assert torch.equal(ours.sort(dim=-1).values, theirs.sort(dim=-1).values), p
    else:
        # At p = 1 transformers also drops tokens whose probability underflows to exactly 0 (the
        # -1e4 logit); we keep every token. The distributions sampled from are identical.
        assert torch.equal(ours, edge)
        assert torch.equal(torch.softmax(ours, -1), torch.softmax(theirs, -1))


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [
        (1.0, None, None),
        (0.3, None, None),
        (2.5, None, None),
        (0.7, 10, None),
        (1.3, None, 0.8),
        (0.9, 20, 0.9),
        (1.0, 1, None),
    ],
)
def test_sample_next_equals_the_transformers_warper_chain(temperature, top_k, top_p):
    # generate() applies temperature, then top-k, then top-p, then samples from the softmax.
    Temperature, TopK, TopP = _hf()
    logits, _, _ = _random_logits(seed=1)
    scores = Temperature(temperature)(None, logits.clone())
    torch.testing.assert_close(scores, logits / temperature, rtol=0, atol=0)
    if top_k is not None:
        scores = TopK(top_k=top_k)(None, scores)
    if top_p is not None:
        scores = TopP(top_p=top_p)(None, scores)
    expected = torch.multinomial(
        torch.softmax(scores, -1), 1, generator=torch.Generator().manual_seed(7)
    ).squeeze(-1)
    ids, logps = sample_next(
        logits,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=torch.Generator().manual_seed(7),
    )
    assert torch.equal(ids, expected)
    # The log-probability is the tempered, unfiltered one.
    tempered = torch.log_softmax(Temperature(temperature)(None, logits.clone()), -1)
    torch.testing.assert_close(logps, tempered.gather(-1, ids[:, None]).squeeze(-1))


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -float("inf"), -0.5])
def test_non_finite_or_negative_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="^temperature"):
        sample_next(torch.zeros(2, 3), temperature=temperature)
    with pytest.raises(ValueError, match="^temperature"):
        check_sampling(temperature)


@pytest.mark.parametrize("p", [float("nan"), float("inf"), 0.0, -0.1, 1.5])
def test_bad_top_p_is_refused(p):
    with pytest.raises(ValueError, match="^top_p"):
        top_p_filter(torch.zeros(2, 3), p)
    with pytest.raises(ValueError, match="^top_p"):
        sample_next(torch.zeros(2, 3), top_p=p)


@pytest.mark.parametrize("k", [0, -1, 2.5, float("nan"), float("inf"), True])
def test_bad_top_k_is_refused(k):
    with pytest.raises(ValueError, match="^top_k"):
        top_k_filter(torch.zeros(2, 3), k)
    with pytest.raises(ValueError, match="^top_k"):
        sample_next(torch.zeros(2, 3), top_k=k)


def test_temperature_zero_is_greedy_whatever_the_filters():
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, -1.0, 4.9]])
    ids, logps = sample_next(logits, temperature=0, top_k=2, top_p=0.5)
    assert ids.tolist() == [1, 0]
    torch.testing.assert_close(logps, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])
