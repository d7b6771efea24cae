import math

import pytest
import torch

from llmbook.model.positional import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEmbedding,
    sinusoidal_rotation,
    sinusoidal_table,
)


def test_sinusoidal_table_matches_the_paper_formula_by_hand():
    dim = 8
    pe = sinusoidal_table(20, dim)
    for p in (0, 1, 7, 19):
        for i in range(dim // 2):
            angle = p / 10000 ** (2 * i / dim)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("offset", [1, 3, 10, -4])
def test_fixed_offset_is_a_rotation(offset):
    dim, n = 16, 64
    pe = sinusoidal_table(n, dim)
    rot = sinusoidal_rotation(offset, dim)
    torch.testing.assert_close(rot @ rot.T, torch.eye(dim), atol=1e-6, rtol=0)
    lo, hi = max(0, -offset), min(n, n - offset)
    p = torch.arange(lo, hi)
    torch.testing.assert_close(pe[p] @ rot.T, pe[p + offset], atol=1e-5, rtol=0)


def test_dot_product_depends_only_on_offset():
    pe = sinusoidal_table(100, 32)
    k = 5
    dots = (pe[:-k] * pe[k:]).sum(-1)
    torch.testing.assert_close(dots, dots[:1].expand_as(dots), atol=1e-4, rtol=0)


def test_bad_dims_raise():
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_table(4, 7)
    with pytest.raises(ValueError, match="n_positions"):
        sinusoidal_table(0, 8)


@pytest.mark.parametrize("base", [math.nan, math.inf, 0.0, -1.0])
def test_non_finite_or_non_positive_base_is_refused(base):
    # base = nan gave a table of NaN; base = inf one with every pair but the first frozen
    with pytest.raises(ValueError, match="^base: must be a finite number > 0"):
        sinusoidal_table(4, 8, base)
    with pytest.raises(ValueError, match="^base: "):
        sinusoidal_rotation(1, 8, base)


def test_modules_look_up_rows():
    learned = LearnedPositionalEmbedding(10, 6)
    fixed = SinusoidalPositionalEmbedding(10, 6)
    pos = torch.tensor([[0, 3], [9, 1]])
    assert learned(pos).shape == (2, 2, 6)
    torch.testing.assert_close(fixed(pos), sinusoidal_table(10, 6)[pos])
    assert len(list(fixed.parameters())) == 0
    assert "table" not in fixed.state_dict()  # derived from the config, never saved
