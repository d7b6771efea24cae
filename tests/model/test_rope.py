import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.model.rope import apply_rope, rope_cache, rope_frequencies, rotate_half


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 500), st.integers(1, 8).map(lambda n: 2 * n), st.integers(0, 2**16))
def test_rotation_preserves_norms(position, dim, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, 1, dim, generator=g, dtype=torch.float64)
    cos, sin = rope_cache(position + 1, dim)
    y = apply_rope(x, cos[position : position + 1].double(), sin[position : position + 1].double())
    torch.testing.assert_close(y.norm(), x.norm(), rtol=1e-6, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 200), st.integers(0, 200), st.integers(-50, 50), st.integers(0, 2**16))
def test_score_depends_only_on_relative_position(p, s, shift, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, 1, 16, generator=g)
    k = torch.randn(1, 1, 1, 16, generator=g)
    cos, sin = rope_cache(400, 16)

    def score(pq, pk):
        qr = apply_rope(q, cos[pq : pq + 1], sin[pq : pq + 1])
        kr = apply_rope(k, cos[pk : pk + 1], sin[pk : pk + 1])
        return float((qr * kr).sum())

    if min(p, s) + shift < 0:
        shift = -min(p, s)
    assert score(p, s) == pytest.approx(score(p + shift, s + shift), abs=1e-4)


def test_matches_complex_multiplication():
    # Pair (x_i, x_{i+D/2}) as the complex number x_i + i x_{i+D/2}, multiplied by e^{i p w_i}.
    D, p = 8, 7
    x = torch.randn(D, dtype=torch.float64)
    z = torch.complex(x[: D // 2], x[D // 2 :]) * torch.exp(1j * p * rope_frequencies(D))
    cos, sin = rope_cache(p + 1, D)
    y = apply_rope(x[None, None, None], cos[p : p + 1].double(), sin[p : p + 1].double())[0, 0, 0]
    torch.testing.assert_close(y, torch.cat([z.real, z.imag]))


def test_rotate_half_and_frequencies():
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]
    f = rope_frequencies(8, theta=10000.0)
    assert f[0] == 1.0 and f[1].item() == pytest.approx(10000 ** (-2 / 8))
    with pytest.raises(ValueError, match="head_dim"):
        rope_frequencies(7)


def test_position_zero_is_identity():
    x = torch.randn(2, 3, 5, 8)
    cos, sin = rope_cache(1, 8)
    torch.testing.assert_close(apply_rope(x, cos.expand(5, 8), sin.expand(5, 8)), x)
    assert math.isclose(cos[0].sum().item(), 8.0)


@pytest.mark.parametrize("theta", [math.nan, math.inf, -math.inf, 0.0, -10.0, True])
def test_non_finite_or_non_positive_theta_is_refused(theta):
    # theta = inf gave frequencies (1, 0, 0, ...): every pair but the first left unrotated, silently
    with pytest.raises(ValueError, match="^theta: must be a finite number > 0"):
        rope_frequencies(8, theta)
    with pytest.raises(ValueError, match="^theta: "):
        rope_cache(4, 8, theta)


def test_frequencies_by_hand():
    # D = 4, theta = 100: omega = (100^0, 100^(-2/4)) = (1, 0.1)
    torch.testing.assert_close(
        rope_frequencies(4, 100.0), torch.tensor([1.0, 0.1], dtype=torch.float64)
    )
