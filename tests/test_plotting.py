import numpy as np
import pytest
import torch

from llmbook.plotting import smooth


def naive(values, window):
    return [float(np.mean(values[max(0, i - window + 1) : i + 1])) for i in range(len(values))]


@pytest.mark.parametrize("window", [1, 2, 5, 50])
def test_smooth_is_the_trailing_mean(window):
    values = np.random.default_rng(0).normal(size=37).tolist()
    np.testing.assert_allclose(
        smooth(values, window), naive(values, window), rtol=1e-12, atol=1e-12
    )


def test_smooth_keeps_length_and_accepts_arrays_and_tensors():
    values = torch.arange(10, dtype=torch.float32)
    out = smooth(values, 3)
    assert out.shape == (10,) and out.dtype == np.float64
    np.testing.assert_allclose(out, smooth(values.numpy(), 3))
    assert out[0] == 0.0 and out[-1] == pytest.approx(8.0)
    assert smooth([], 5).shape == (0,)
    np.testing.assert_allclose(smooth([4.0] * 6, 4), [4.0] * 6)  # all-equal values stay put


@pytest.mark.parametrize("window", [0, -1, 2.5, True])
def test_smooth_rejects_a_bad_window(window):
    with pytest.raises(ValueError, match="window"):
        smooth([1.0, 2.0], window)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_smooth_rejects_non_finite_values(bad):
    with pytest.raises(ValueError, match=r"values\[1\]"):
        smooth([1.0, bad, 2.0], 2)


def test_smooth_rejects_2d_input():
    with pytest.raises(ValueError, match="1-D"):
        smooth(np.zeros((2, 3)), 2)
