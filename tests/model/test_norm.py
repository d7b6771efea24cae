import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.model.norm import LayerNorm


@pytest.mark.parametrize("bias", [True, False])
def test_equals_torch_layernorm(bias):
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
    torch.testing.assert_close(ours(x), F.layer_norm(x, (12,), theirs.weight, theirs.bias, 1e-5))


def test_gradients_equal_torch():
    ours, theirs = LayerNorm(8), nn.LayerNorm(8)
    x = torch.randn(3, 8, requires_grad=True)
    g1 = torch.autograd.grad(ours(x).pow(3).sum(), [x, ours.weight, ours.bias])
    g2 = torch.autograd.grad(theirs(x).pow(3).sum(), [x, theirs.weight, theirs.bias])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


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
