import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.model.norm import LayerNorm


def layer_norm_by_hand(x, weight, bias, eps):
    """The formula of the docstring in plain Python floats (float64), row by row, biased variance."""
    out = []
    for row in x.reshape(-1, x.shape[-1]).tolist():
        mean = math.fsum(row) / len(row)
        var = math.fsum((v - mean) ** 2 for v in row) / len(row)
        out.append(
            [(v - mean) / math.sqrt(var + eps) * g + b for v, g, b in zip(row, weight, bias)]
        )
    return torch.tensor(out, dtype=torch.float64).reshape(x.shape)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_the_formula_worked_out_in_float64(bias, fused):
    torch.manual_seed(0)
    ln = LayerNorm(12, eps=1e-5, bias=bias)
    ln.fused = fused
    with torch.no_grad():
        ln.weight.copy_(torch.randn(12))
        if bias:
            ln.bias.copy_(torch.randn(12))
    shift = ln.bias.tolist() if bias else [0.0] * 12
    x = torch.randn(4, 5, 12) * 3 + 1
    expected = layer_norm_by_hand(x.double(), ln.weight.tolist(), shift, 1e-5)
    torch.testing.assert_close(ln(x).double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ln.double()(x.double()), expected, rtol=1e-12, atol=1e-12)


def test_by_hand_on_a_row_worked_out_on_paper():
    # x = (1, 2, 3, 6): mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5, eps 0.
    ln = LayerNorm(4, eps=0.0).double()
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)
    expected = torch.tensor([[-2.0, -1.0, 0.0, 3.0]], dtype=torch.float64) / math.sqrt(3.5)
    torch.testing.assert_close(ln(x), expected, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("bias", [True, False])
def test_also_equals_torch_layernorm(bias):
    ours = LayerNorm(12, eps=1e-5, bias=bias)
    theirs = nn.LayerNorm(12, eps=1e-5, bias=bias)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(12))
        theirs.weight.copy_(ours.weight)
        if bias:
            ours.bias.copy_(torch.randn(12))
            theirs.bias.copy_(ours.bias)
    x = torch.randn(4, 5, 12) * 3 + 1
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("fused", [True, False])
def test_gradients_equal_finite_differences(fused):
    # gradcheck compares the analytic gradient with central differences of the forward pass, which
    # the test above checks against the formula.
    torch.manual_seed(0)
    ln = LayerNorm(8).double()
    ln.fused = fused
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ln_apply(ln, x, w, b), (x, ln.weight, ln.bias))


def ln_apply(ln, x, weight, bias):
    """``ln`` with its parameters passed in, so that gradcheck perturbs them too."""
    return torch.func.functional_call(ln, {"weight": weight, "bias": bias}, (x,))


def test_output_statistics():
    y = LayerNorm(64)(torch.randn(10, 64) * 50 - 7)
    torch.testing.assert_close(y.mean(-1), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(10), atol=1e-3, rtol=0)


def test_bf16_input_keeps_dtype_and_accuracy():
    x = torch.randn(4, 32)
    ln = LayerNorm(32)
    y = ln(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ln(x), atol=0.05, rtol=0.02)


def test_float64_stays_float64():
    x = torch.randn(3, 16, dtype=torch.float64)
    ln = LayerNorm(16).double()
    y = ln(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(
        y, F.layer_norm(x, (16,), ln.weight, ln.bias, 1e-5), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_fused_kernel_equals_the_written_out_formula(kind):
    # The forward pass uses torch's fused kernel; the formula the book derives must give the same
    # values and gradients.
    from llmbook.model.norm import RMSNorm

    torch.manual_seed(0)
    norm = LayerNorm(48) if kind == "layernorm" else RMSNorm(48)
    with torch.no_grad():
        norm.weight.normal_()
        if getattr(norm, "bias", None) is not None:
            norm.bias.normal_()
    x = torch.randn(3, 7, 48, requires_grad=True)
    outs, grads = [], []
    for fused in (True, False):
        norm.fused = fused
        y = norm(x)
        (gx,) = torch.autograd.grad((y * torch.arange(48.0)).sum(), x)
        outs.append(y.detach())
        grads.append(gx)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
