import os

import pytest
import torch

from llmbook.generate.streaming import stream_generate, streaming_nll
from llmbook.model.attention import build_attention_mask
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.model.kv_cache import RollingKVCache
from tests.references import sink_window_logits


def rope_model(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(vocab_size=30, block_size=16, n_layer=2, n_head=4, n_embd=32)
    return GPT(ModelConfig.llama_style(**{**base, **kw})).eval()


@pytest.mark.parametrize(("sinks", "window"), [(2, 5), (0, 6), (4, 4)])
@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 2}])
def test_rolling_cache_matches_full_recomputation_under_the_same_mask(sinks, window, kw):
    m = rope_model(**kw)
    ids = torch.randint(0, 30, (2, 40))  # far past sinks + window, and past block_size
    ref = sink_window_logits(m, ids, sinks=sinks, window=window)
    cache = RollingKVCache(m.config, 2, sinks=sinks, window=window)
    streamed = torch.cat([m(ids[:, t : t + 1], cache=cache).logits for t in range(40)], dim=1)
    torch.testing.assert_close(streamed, ref, atol=1e-5, rtol=1e-5)


def test_reference_equals_plain_model_while_everything_fits():
    m = rope_model()
    ids = torch.randint(0, 30, (1, 12))
    torch.testing.assert_close(
        sink_window_logits(m, ids, sinks=2, window=14), m(ids).logits, atol=1e-5, rtol=1e-5
    )


def test_sliding_window_mask():
    mask = build_attention_mask(6, 6, window=3, sinks=1)[0, 0]
    assert mask[5].tolist() == [True, False, False, True, True, True]
    assert mask[2].tolist() == [True, True, True, False, False, False]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux /proc")
def test_memory_is_constant_over_10000_tokens():
    m = rope_model()
    rss = {}

    def watch(step, token):
        if step in (1000, 9999):
            rss[step] = _rss_bytes()

    out = stream_generate(
        m,
        [1, 2, 3],
        max_new_tokens=10_000,
        sinks=2,
        window=8,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
        on_token=watch,
    )
    assert len(out.tokens) == 10_000
    # Worked out by hand: keys and values (2) x 2 layers x 4 kv heads x (2 + 8) slots x 8 dims x 4
    # bytes, at every step.
    assert out.cache_bytes == [2 * 2 * 4 * 10 * 8 * 4] * 10_000
    # The process does not grow either (a growing cache would add 2 x 2 x 32 x 4 bytes a token here,
    # so allow far less than the 2.5 MB that 9,000 more tokens would need).
    assert rss[9999] - rss[1000] < 1_000_000, rss


def test_evicted_tokens_no_longer_matter_and_sinks_do():
    # Two streams that differ only at token 5 (not a sink; S = 2). Through L = 2 layers with a window
    # of W = 4, query t depends on inputs t - L (W - 1) .. t: token 5 reaches queries 5..11 and, once
    # evicted from every cached layer, none after. Changing a sink (token 0) changes every prediction.
    m = rope_model(seed=1)
    a = torch.randint(0, 30, (1, 24))
    b, c = a.clone(), a.clone()
    b[0, 5] = (a[0, 5] + 1) % 30
    c[0, 0] = (a[0, 0] + 1) % 30

    def stream(ids):
        cache = RollingKVCache(m.config, 1, sinks=2, window=4)
        return torch.cat([m(ids[:, t : t + 1], cache=cache).logits for t in range(24)], dim=1)

    la, lb, lc = stream(a), stream(b), stream(c)
    gap = (la - lb).abs().amax(-1)[0]  # (T,)
    assert (gap[5:12] > 1e-4).all(), gap
    assert torch.equal(la[:, :5], lb[:, :5]) and torch.equal(la[:, 12:], lb[:, 12:]), gap
    assert ((la - lc).abs().amax(-1)[0] > 1e-3).all()


def test_streaming_nll_shapes_and_consistency():
    m = rope_model()
    ids = torch.randint(0, 30, (30,))
    nll = streaming_nll(m, ids, sinks=2, window=6)
    ref = sink_window_logits(m, ids[None], sinks=2, window=6)
    expected = -torch.log_softmax(ref[0, :-1], -1).gather(-1, ids[1:, None]).squeeze(-1)
    torch.testing.assert_close(nll[0], expected, atol=1e-5, rtol=1e-5)


def test_streaming_needs_rope():
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="rope"):
        stream_generate(m, [1], max_new_tokens=2)


def test_streaming_nll_runs_a_bf16_model_in_float32():
    m32 = rope_model(seed=2)
    m16 = rope_model(seed=2).to(torch.bfloat16)
    ids = torch.randint(0, 30, (2, 25))
    nll16 = streaming_nll(m16, ids, sinks=2, window=6)
    nll32 = streaming_nll(m32, ids, sinks=2, window=6)
    assert nll16.dtype == torch.float32 and nll16.shape == (2, 24)
    # bf16 weights and activations: close to the float32 model, not equal.
    torch.testing.assert_close(nll16, nll32, atol=0.1, rtol=0.05)
    # The NLL is computed from the bf16 logits in float32, not rounded to bf16.
    assert not torch.equal(nll16, nll16.to(torch.bfloat16).float())


def test_stream_generate_runs_a_bf16_model():
    m = rope_model(seed=2).to(torch.bfloat16)
    out = stream_generate(m, [1, 2, 3], max_new_tokens=20, sinks=2, window=5, temperature=0)
    assert len(out.tokens) == 20
    assert out.cache_bytes[0] == 2 * 2 * 4 * 7 * 8 * 2  # bf16: 2 bytes per number


@pytest.mark.parametrize("training", [True, False])
def test_streaming_puts_the_model_back_in_its_mode(training):
    m = rope_model(dropout=0.1).train(training)
    stream_generate(m, [1, 2], max_new_tokens=3, sinks=1, window=4)
    assert m.training is training
    streaming_nll(m, torch.tensor([1, 2, 3, 4]), sinks=1, window=2)
    assert m.training is training

    def fail(step, token):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        stream_generate(m, [1, 2], max_new_tokens=3, on_token=fail)
    assert m.training is training


def test_stream_generate_uses_eval_mode():
    # Dropout off while streaming: a model left in train mode gives the greedy tokens of eval mode.
    m = rope_model(seed=3, dropout=0.5)
    expected = stream_generate(
        m.eval(), [1, 2], max_new_tokens=12, sinks=1, window=4, temperature=0
    )
    again = stream_generate(m.train(), [1, 2], max_new_tokens=12, sinks=1, window=4, temperature=0)
    assert again.tokens == expected.tokens


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"window": 0}, "window"),
        ({"prompt": []}, "prompt"),
    ],
)
def test_stream_generate_refuses_bad_settings(kw, field):
    m = rope_model()
    with pytest.raises(ValueError, match=f"^{field}"):
        stream_generate(m, **{"prompt": [1, 2], "max_new_tokens": 3, **kw})


def test_streaming_nll_needs_two_tokens():
    with pytest.raises(ValueError, match="^ids"):
        streaming_nll(rope_model(), torch.tensor([1]), sinks=1, window=2)
