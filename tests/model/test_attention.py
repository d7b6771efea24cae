import math

import pytest
import torch
import torch.nn.functional as F

from llmbook.model.attention import (
    REFERENCE_MAX_KEYS,
    CausalSelfAttentionHead,
    MultiHeadAttention,
    attention_reference,
    causal_mask,
    merge_heads,
    resolve_attn_impl,
    scaled_dot_product_attention,
    split_heads,
)
from llmbook.model.config import ModelConfig


def test_three_tokens_by_hand():
    # One query against two keys: weights are a softmax of the scaled dot products.
    q = torch.tensor([[[1.0, 0.0]]])
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    v = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    out, w = attention_reference(q, k, v, return_weights=True)
    s = 1 / math.sqrt(2)
    w0 = math.exp(s) / (math.exp(s) + 1)
    assert w[0, 0, 0].item() == pytest.approx(w0, rel=1e-6)
    assert out[0, 0, 0].item() == pytest.approx(w0 * 1 + (1 - w0) * 3, rel=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_equals_torch_fused(causal, dtype):
    q, k, v = (torch.randn(2, 3, 7, 8, dtype=dtype) for _ in range(3))
    ours = attention_reference(q, k, v, causal=causal)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, causal=causal, impl="fused"),
        scaled_dot_product_attention(q, k, v, causal=causal, impl="reference"),
    )


def test_mask_and_causal_combine_the_same_in_both_paths():
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    pad = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    pad[0, ..., :2] = False  # left padding in the first row; its first two queries see nothing
    fused = scaled_dot_product_attention(q, k, v, mask=pad, causal=True, impl="fused")
    ref = scaled_dot_product_attention(q, k, v, mask=pad, causal=True, impl="reference")
    torch.testing.assert_close(fused[:, :, 2:], ref[:, :, 2:])
    torch.testing.assert_close(fused[1], ref[1])


def test_auto_picks_the_written_out_path_only_for_low_precision_on_cpu():
    for dtype, expected in [
        (torch.float32, "fused"),
        (torch.float64, "fused"),
        (torch.bfloat16, "reference"),
        (torch.float16, "reference"),
    ]:
        q = torch.zeros(1, 1, 4, 8, dtype=dtype)
        assert resolve_attn_impl("auto", q, 4) == expected, dtype
        for impl in ("fused", "reference"):
            assert resolve_attn_impl(impl, q, 4) == impl
    long = torch.zeros(1, 1, 1, 8, dtype=torch.bfloat16)
    assert resolve_attn_impl("auto", long, REFERENCE_MAX_KEYS) == "reference"
    assert resolve_attn_impl("auto", long, REFERENCE_MAX_KEYS + 1) == "fused"


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_paths_agree_with_float32(causal):
    # The reference path normalises low-precision scores in float32, so in bfloat16 both paths stay
    # within bfloat16 rounding of the float32 answer (and of each other), values and gradients.
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    exact = attention_reference(q, k, v, causal=causal)
    outs, grads = {}, {}
    for impl in ("fused", "reference", "auto"):
        leaves = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
        y = scaled_dot_product_attention(*leaves, causal=causal, impl=impl)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        outs[impl], grads[impl] = y.float(), [t.grad.float() for t in leaves]
        torch.testing.assert_close(outs[impl], exact, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(outs["auto"], outs["reference"], atol=0, rtol=0)
    for a, b in zip(grads["fused"], grads["reference"]):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)


def test_reference_softmax_keeps_float64():
    q, k, v = (torch.randn(1, 5, 4, dtype=torch.float64) for _ in range(3))
    out, w = attention_reference(q, k, v, return_weights=True)
    assert out.dtype == w.dtype == torch.float64
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 5, dtype=torch.float64), atol=1e-15, rtol=0)


def test_causal_mask_shape_and_rule():
    m = causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    assert m[2, 1] and m[2, 2] and not m[1, 2]


def test_causal_needs_square_scores():
    q, k = torch.randn(1, 3, 4), torch.randn(1, 5, 4)
    with pytest.raises(ValueError, match="causal"):
        attention_reference(q, k, k, causal=True)


def test_unknown_impl():
    q = torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match="impl"):
        scaled_dot_product_attention(q, q, q, impl="flash")


def test_single_head_is_causal():
    head = CausalSelfAttentionHead(16, 8)
    x = torch.randn(2, 6, 16)
    y = head(x)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, 16)
    y2 = head(x2)
    torch.testing.assert_close(y[:, :4], y2[:, :4])
    assert not torch.allclose(y[:, 4:], y2[:, 4:])
    _, w = head(x, return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 6))
    assert torch.all(w.triu(1) == 0)


def test_split_merge_round_trip_and_view():
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)
    h = split_heads(x, 4)
    assert h.shape == (2, 4, 3, 2)
    assert h.data_ptr() == x.data_ptr()  # a view, no copy
    torch.testing.assert_close(h[0, 1, 0], torch.tensor([2.0, 3.0]))  # head 1 owns channels 2..3
    torch.testing.assert_close(merge_heads(h), x)
    with pytest.raises(ValueError, match="n_head"):
        split_heads(x, 3)


def test_multi_head_equals_concatenated_single_heads():
    cfg = ModelConfig(n_embd=32, n_head=4, bias=False)
    mha = MultiHeadAttention(cfg).eval()
    D = cfg.head_dim
    heads = []
    for h in range(cfg.n_head):
        head = CausalSelfAttentionHead(cfg.n_embd, D)
        rows = slice(h * D, (h + 1) * D)
        head.q_proj.weight.data = mha.q_proj.weight.data[rows]
        head.k_proj.weight.data = mha.k_proj.weight.data[rows]
        head.v_proj.weight.data = mha.v_proj.weight.data[rows]
        heads.append(head)
    x = torch.randn(3, 9, 32)
    expected = mha.o_proj(torch.cat([head(x) for head in heads], dim=-1))
    torch.testing.assert_close(mha(x), expected)


def test_multi_head_fused_equals_reference_with_gradients():
    ref_cfg = ModelConfig(n_embd=32, n_head=4, attn_impl="reference")
    fused_cfg = ModelConfig(n_embd=32, n_head=4, attn_impl="fused")
    a, b = MultiHeadAttention(ref_cfg), MultiHeadAttention(fused_cfg)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 10, 32, requires_grad=True)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    ga = torch.autograd.grad(ya.square().sum(), list(a.parameters()))
    gb = torch.autograd.grad(yb.square().sum(), list(b.parameters()))
    for u, w in zip(ga, gb):
        torch.testing.assert_close(u, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_multi_head_auto_in_bfloat16_autocast_matches_fused(n_kv_head):
    # Under CPU bfloat16 autocast, "auto" takes the written-out path; it must agree with the fused
    # kernel to bfloat16 precision, grouped-query heads included.
    torch.manual_seed(0)
    cfg = ModelConfig(n_embd=32, n_head=4, n_kv_head=n_kv_head, attn_impl="auto")
    a = MultiHeadAttention(cfg)
    b = MultiHeadAttention(ModelConfig(n_embd=32, n_head=4, n_kv_head=n_kv_head, attn_impl="fused"))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 12, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = a(x), b(x)
    torch.testing.assert_close(ya.float(), yb.float(), atol=3e-2, rtol=3e-2)


def test_attention_dropout_only_in_training():
    cfg = ModelConfig(n_embd=32, n_head=4, dropout=0.5)
    mha = MultiHeadAttention(cfg)
    x = torch.randn(1, 8, 32)
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x))
    mha.train()
    assert not torch.allclose(mha(x), mha(x))
