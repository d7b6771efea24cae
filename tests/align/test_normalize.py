"""Masked statistics and running moments: values by hand, padding that cannot leak, refusals by
name, parity with numpy and with TRL's formulas."""

import json
import math

import numpy as np
import pytest
import torch

from llmbook.align.normalize import RunningMoments, masked_mean, masked_var, masked_whiten

INF, NAN = float("inf"), float("nan")


def _example():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, INF, NAN]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    return x, mask


def test_masked_mean_by_hand_ignores_whatever_padding_holds():
    x, mask = _example()
    x.requires_grad_(True)
    mean = masked_mean(x, mask)
    assert mean.item() == pytest.approx(2.0)
    mean.backward()
    expected = torch.tensor([[1 / 3, 1 / 3, 0.0], [1 / 3, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(x.grad, expected)  # no NaN from the inf and NaN in the padding
    rows = masked_mean(x.detach(), mask, dim=1)
    torch.testing.assert_close(rows, torch.tensor([1.5, 3.0], dtype=torch.float64))
    cols = masked_mean(x.detach(), mask, dim=0)
    torch.testing.assert_close(cols, torch.tensor([2.0, 2.0, 0.0], dtype=torch.float64))


def test_masked_mean_broadcasts_the_mask_and_an_empty_slice_gives_zero():
    x = torch.arange(6.0).view(2, 3)
    row_mask = torch.tensor([[False], [True]])  # (B, 1): the whole second row
    assert masked_mean(x, row_mask).item() == pytest.approx((3 + 4 + 5) / 3)
    torch.testing.assert_close(masked_mean(x, row_mask, dim=1), torch.tensor([0.0, 4.0]))
    empty = torch.zeros(2, 3, dtype=torch.bool)
    torch.testing.assert_close(masked_mean(x, empty, dim=1), torch.zeros(2))
    with pytest.raises(ValueError, match="^mask: no position is True"):
        masked_mean(x, empty)


def test_masked_var_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 1e6]])
    mask = torch.tensor([[True, True, True, True, False]])
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(1.25)
    assert masked_var(x, mask).item() == pytest.approx(1.25 * 4 / 3)
    assert masked_var(x, mask).item() == pytest.approx(float(x[mask].var()))
    one = torch.tensor([[True, False, False, False, False]])
    assert masked_var(x, one, unbiased=False).item() == 0.0
    with pytest.raises(ValueError, match="^mask: the unbiased variance needs at least 2"):
        masked_var(x, one)


def test_masked_whiten_standardises_the_counted_positions_and_zeros_the_rest():
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 5.0 * torch.randn(4, 7, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 1, 5])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    w = masked_whiten(x, mask)
    assert float(w[mask].mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(w[mask].std()) == pytest.approx(1.0, abs=1e-6)  # unbiased std, eps aside
    assert bool((w[~mask] == 0).all())
    # Without the shift the mean survives: (x - mean) / std + mean.
    kept = masked_whiten(x, mask, shift_mean=False)
    mean, std = x[mask].mean(), x[mask].std()
    torch.testing.assert_close(kept[mask], (x[mask] - mean) / std + mean, rtol=1e-6, atol=1e-6)
    assert bool((kept[~mask] == 0).all())


def test_padding_values_change_neither_whitening_nor_its_gradient():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    weights = torch.randn(3, 5, generator=g, dtype=torch.float64)
    results = []
    for pad in (0.0, 1e300, -1e300, INF, NAN):
        leaf = torch.where(mask, x, torch.tensor(pad, dtype=x.dtype)).requires_grad_(True)
        for shift_mean in (True, False):
            out = masked_whiten(leaf, mask, shift_mean=shift_mean)
            (out * weights).sum().backward()
            results.append((shift_mean, out.detach(), leaf.grad.clone()))
            leaf.grad = None
    for shift_mean, out, grad in results:
        ref_out, ref_grad = next((o, gr) for s, o, gr in results if s == shift_mean)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(grad, ref_grad)
        assert bool((grad[~mask] == 0).all()) and bool(torch.isfinite(grad).all())


BAD_MASKS = [
    (torch.zeros(2, 3), torch.ones(2, 3), "^mask: expected a bool tensor"),
    (torch.zeros(2, 3), torch.ones(3, 3, dtype=torch.bool), "^mask: shape"),
    (torch.zeros(2, 3), torch.ones(2, 3, 1, dtype=torch.bool), "^mask: shape"),
    (torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), "^x: expected a"),
]


@pytest.mark.parametrize("x, mask, message", BAD_MASKS)
def test_masked_statistics_refuse_bad_inputs_by_name(x, mask, message):
    for fn in (masked_mean, masked_var, masked_whiten):
        with pytest.raises(ValueError, match=message):
            fn(x, mask)


@pytest.mark.parametrize("eps", [-1e-8, INF, NAN])
def test_masked_whiten_refuses_a_bad_eps(eps):
    with pytest.raises(ValueError, match="^eps:"):
        masked_whiten(torch.zeros(4), torch.ones(4, dtype=torch.bool), eps=eps)


# --- parity with TRL's masked statistics ------------------------------------------------------------
# TRL 1.16 (installed) no longer ships masked_mean / masked_var / masked_whiten; these are the
# formulas of trl/core.py in TRL 0.11, which PPOTrainer and PPOv2Trainer used.


def _trl_masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def _trl_masked_var(values, mask):
    mean = _trl_masked_mean(values, mask)
    variance = _trl_masked_mean((values - mean) ** 2, mask)
    n = mask.sum()
    return variance * (n / (n - 1))


def _trl_masked_whiten(values, mask, shift_mean=True):
    mean, var = _trl_masked_mean(values, mask), _trl_masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_trl_0_11_masked_statistics(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 9, generator=g) * 4 + 1  # finite padding: TRL multiplies by the mask
    lengths = torch.randint(0, 10, (6,), generator=g)
    lengths[0] = 9
    mask = torch.arange(9)[None, :] < lengths[:, None]
    m = mask.float()
    torch.testing.assert_close(masked_mean(x, mask), _trl_masked_mean(x, m))
    torch.testing.assert_close(masked_var(x, mask), _trl_masked_var(x, m))
    for shift_mean in (True, False):
        ours = masked_whiten(x, mask, shift_mean=shift_mean)
        theirs = _trl_masked_whiten(x, m, shift_mean=shift_mean)
        torch.testing.assert_close(ours[mask], theirs[mask])  # TRL leaves padding non-zero


# --- running moments ---------------------------------------------------------------------------------


def _stream(seed, sizes, loc=2.0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [loc + scale * torch.randn(n, generator=g, dtype=torch.float64) for n in sizes]


def test_running_moments_match_numpy_on_the_concatenated_stream():
    batches = _stream(0, [5, 1, 17, 2, 64, 3])
    moments = RunningMoments()
    seen = []
    for b in batches:
        batch_mean, batch_std = moments.update(b)
        seen.append(b.numpy())
        whole = np.concatenate(seen)
        assert batch_mean == pytest.approx(float(np.mean(b.numpy())), rel=1e-12)
        if b.numel() > 1:
            assert batch_std == pytest.approx(float(np.std(b.numpy(), ddof=1)), rel=1e-12)
        else:
            assert math.isnan(batch_std)
        assert moments.count == whole.size
        assert moments.mean == pytest.approx(float(np.mean(whole)), rel=1e-12)
        assert moments.std == pytest.approx(float(np.std(whole, ddof=1)), rel=1e-12)


def test_running_moments_take_any_shape_and_dtype():
    a, b = RunningMoments(), RunningMoments()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    a.update(x)
    b.update(x.flatten().double())
    assert a.count == b.count == 24
    assert a.mean == pytest.approx(b.mean) and a.std == pytest.approx(b.std)


def test_running_moments_stay_accurate_far_from_zero():
    # Summing x and x**2 would cancel catastrophically here (x**2 ~ 1e16, variance ~ 1).
    batches = _stream(1, [100] * 10, loc=1e8, scale=1.0)
    moments = RunningMoments()
    for b in batches:
        moments.update(b)
    whole = torch.cat(batches).numpy()
    assert moments.std == pytest.approx(float(np.std(whole, ddof=1)), rel=1e-6)
    assert moments.mean == pytest.approx(float(np.mean(whole)), rel=1e-14)


def test_running_moments_before_two_values_have_a_neutral_scale():
    moments = RunningMoments()
    assert (moments.count, moments.mean, moments.std) == (0, 0.0, 1.0)
    moments.update(torch.tensor([5.0]))
    assert (moments.count, moments.mean, moments.std) == (1, 5.0, 1.0)
    moments.update(torch.tensor([7.0]))
    assert moments.std == pytest.approx(math.sqrt(2.0))
    assert "count=2" in repr(moments)


def test_running_moments_resume_from_a_state_dict():
    batches = _stream(2, [8, 3, 12, 5, 9])
    straight = RunningMoments()
    for b in batches:
        straight.update(b)
    first = RunningMoments()
    for b in batches[:2]:
        first.update(b)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = RunningMoments()
    resumed.load_state_dict(state)
    for b in batches[2:]:
        resumed.update(b)
    assert resumed.state_dict() == pytest.approx(straight.state_dict(), rel=1e-12)
    assert resumed.count == straight.count == 37


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(0), "^x: expected at least one value"),
        (torch.tensor([1.0, NAN]), "^x: every value must be finite"),
        (torch.tensor([1.0, INF]), "^x: every value must be finite"),
        (torch.tensor([1, 2]), "^x: expected a floating-point tensor"),
        ([1.0, 2.0], "^x: expected a floating-point tensor"),
    ],
)
def test_running_moments_refuse_bad_batches_and_stay_unchanged(x, message):
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0]))
    before = moments.state_dict()
    with pytest.raises(ValueError, match=message):
        moments.update(x)
    assert moments.state_dict() == before


@pytest.mark.parametrize(
    "state, message",
    [
        ({"count": 2, "mean": 0.0}, "^state: expected the keys"),
        ({"count": 2, "mean": 0.0, "m2": 1.0, "var": 1.0}, "^state: expected the keys"),
        ({"count": -1, "mean": 0.0, "m2": 1.0}, "^count:"),
        ({"count": 2.5, "mean": 0.0, "m2": 1.0}, "^count:"),
        ({"count": True, "mean": 0.0, "m2": 1.0}, "^count:"),
        ({"count": 2, "mean": NAN, "m2": 1.0}, "^mean:"),
        ({"count": 2, "mean": 0.0, "m2": -1.0}, "^m2:"),
        ({"count": 2, "mean": 0.0, "m2": INF}, "^m2:"),
    ],
)
def test_load_state_dict_refuses_bad_states_by_name(state, message):
    with pytest.raises(ValueError, match=message):
        RunningMoments().load_state_dict(state)
