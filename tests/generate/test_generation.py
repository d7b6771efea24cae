import pytest
import torch

from llmbook.generate.generation import eval_mode, generate, left_pad, sequence_logprobs
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from tests.references import greedy_loop


def model(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(vocab_size=40, block_size=24, n_layer=2, n_head=2, n_embd=32)
    return GPT(ModelConfig(**{**base, **kw})).eval()


PROMPTS = [[5, 6, 7], [1], [9, 8, 7, 6, 5, 4]]


def test_left_pad():
    ids, mask = left_pad([[1, 2], [3]], pad_id=0)
    assert ids.tolist() == [[1, 2], [0, 3]] and mask.tolist() == [[True, True], [False, True]]


def test_batched_left_padded_equals_one_at_a_time_greedy():
    m = model()
    batched = generate(
        m, PROMPTS, max_new_tokens=30, temperature=0, pad_id=0
    )  # runs past block_size
    for i, p in enumerate(PROMPTS):
        alone = generate(m, [p], max_new_tokens=30, temperature=0, pad_id=0)
        assert batched.completions[i] == alone.completions[0]
        torch.testing.assert_close(batched.logps[i], alone.logps[0], atol=1e-5, rtol=1e-5)


def test_top_k_1_sampling_equals_a_plain_greedy_loop():
    # With top-k 1 sampling is deterministic whatever the generator: it must pick the argmax of a
    # plain forward pass, computed here without cache, padding or batching.
    m = model(seed=3)
    out = generate(
        m,
        PROMPTS,
        max_new_tokens=8,
        temperature=1.0,
        top_k=1,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.completions == [greedy_loop(m, p, 8) for p in PROMPTS]


def test_eos_stops_a_row_and_pads_after():
    m = model()
    first = generate(m, [[5, 6, 7]], max_new_tokens=1, temperature=0).completions[0][0]
    out = generate(m, [[5, 6, 7], [1, 2]], max_new_tokens=6, temperature=0, eos_id=first, pad_id=0)
    assert out.completions[0] == [first]
    assert out.completion_mask[0].tolist()[:2] == [True, False]
    assert out.logps[0, 1:].abs().sum() == 0


def test_returned_logps_equal_recomputed_sequence_logprobs():
    m = model(seed=1)
    out = generate(
        m, PROMPTS, max_new_tokens=6, temperature=0.7, generator=torch.Generator().manual_seed(0)
    )
    recomputed = sequence_logprobs(m, out.sequences, out.attention_mask, temperature=0.7)
    new = recomputed[:, out.prompt_length - 1 :]
    torch.testing.assert_close(new * out.completion_mask, out.logps, atol=1e-5, rtol=1e-5)


def test_seeded_generation_is_reproducible():
    m = model()
    a = generate(m, PROMPTS, max_new_tokens=10, generator=torch.Generator().manual_seed(5))
    b = generate(m, PROMPTS, max_new_tokens=10, generator=torch.Generator().manual_seed(5))
    assert a.completions == b.completions


MODERN = dict(
    norm="rmsnorm", pos_embedding="rope", mlp="swiglu", n_kv_head=1, bias=False, tie_weights=False
)


@pytest.mark.parametrize("kw", [{}, MODERN, {"pos_embedding": "sinusoidal"}])
def test_cached_generation_equals_recomputation(kw):
    m = model(seed=2, **kw)
    prompts = [[5, 6, 7], [1], [9, 8, 7, 6, 5, 4]]
    cached = generate(m, prompts, max_new_tokens=14, temperature=0, use_cache=True)
    full = generate(m, prompts, max_new_tokens=14, temperature=0, use_cache=False)
    assert cached.completions == full.completions
    torch.testing.assert_close(cached.logps, full.logps, atol=1e-5, rtol=1e-5)


def test_cached_logits_equal_full_forward():
    from llmbook.model.kv_cache import KVCache

    m = model(seed=4, **MODERN)
    ids = torch.randint(0, 40, (2, 20))
    full = m(ids).logits
    cache = KVCache(m.config, 2, 20)
    parts = [m(ids[:, :8], cache=cache).logits]
    for t in range(8, 20):
        parts.append(m(ids[:, t : t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        m(ids[:, :1], cache=cache)


WINDOWED = [
    pytest.param(dict(MODERN, n_head=4, n_kv_head=2), id="gqa"),
    pytest.param(dict(MODERN, sliding_window=4), id="window"),
    pytest.param(dict(MODERN, sliding_window=4, attn_sinks=2), id="window+sinks"),
    pytest.param(
        dict(MODERN, n_head=4, n_kv_head=1, sliding_window=3, attn_sinks=1), id="mqa+sinks"
    ),
    pytest.param({"sliding_window": 5, "attn_sinks": 2}, id="gpt2+window+sinks"),
]


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("kw", WINDOWED)
def test_left_padded_batch_equals_one_at_a_time(kw, use_cache):
    # Prompts longer than window + sinks, padded by up to 5 columns: a sink must be a row's first
    # real token, not a padding column. 6 + 14 tokens fit block_size, so the KV cache is used.
    m = model(seed=5, **kw)
    prompts = [[5, 6, 7, 8, 9, 10], [1], [9, 8, 7, 6, 5], [3, 4]]
    batched = generate(m, prompts, max_new_tokens=14, temperature=0, pad_id=0, use_cache=use_cache)
    for i, p in enumerate(prompts):
        assert batched.completions[i] == greedy_loop(m, p, 14), i
        alone = generate(m, [p], max_new_tokens=14, temperature=0, use_cache=use_cache)
        torch.testing.assert_close(batched.logps[i], alone.logps[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_generate_puts_the_model_back_in_its_mode(training):
    m = model(dropout=0.1).train(training)
    generate(m, PROMPTS, max_new_tokens=3, temperature=0)
    assert m.training is training
    assert all(mod.training is training for mod in m.modules())


def test_generate_runs_without_dropout_on_a_training_model():
    # In eval mode dropout is off: the same greedy tokens as a model built in eval mode.
    m = model(seed=6, dropout=0.5)
    expected = generate(m.eval(), PROMPTS, max_new_tokens=6, temperature=0).completions
    assert generate(m.train(), PROMPTS, max_new_tokens=6, temperature=0).completions == expected


def test_eval_mode_restores_the_mode_on_error():
    m = model().train()
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(m):
            assert not m.training
            raise RuntimeError("boom")
    assert m.training


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
)
def test_generate_refuses_bad_settings_before_running(kw, field):
    m = model().train()
    with pytest.raises(ValueError, match=f"^{field}"):
        generate(m, PROMPTS, **{"max_new_tokens": 3, **kw})
    assert m.training


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -0.1])
def test_sequence_logprobs_refuses_a_bad_temperature(temperature):
    m = model()
    with pytest.raises(ValueError, match="^temperature"):
        sequence_logprobs(m, torch.tensor([[1, 2, 3]]), temperature=temperature)
