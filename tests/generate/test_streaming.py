import os

import pytest
import torch

from llmbook.generate.streaming import sink_window_logits, stream_generate, streaming_nll
from llmbook.model.attention import build_attention_mask
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.model.kv_cache import RollingKVCache


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
    assert len(set(out.cache_bytes)) == 1  # the cache never grows
    # The process does not grow either (a growing cache would add 2 x 2 x 32 x 4 bytes a token here,
    # so allow far less than the 2.5 MB that 9,000 more tokens would need).
    assert rss[9999] - rss[1000] < 1_000_000, rss


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
