"""A padded row computes what its sequence computes alone, for every attention variant.

Each variant runs a batch of three sequences of different lengths, padded on the left (as batched
generation pads prompts) or on the right, through the public forward: once in full with
``attention_mask`` (cache off), and once through a :class:`~llmbook.model.kv_cache.KVCache` with a
prefill and then one column at a time (cache on). The logits at every real position must equal those
of the sequence run alone, without padding or cache.
"""

import pytest
import torch

from llmbook.model.attention import build_attention_mask
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.model.kv_cache import KVCache, RollingKVCache

V = 40
LENGTHS = (13, 9, 4)  # the longest row has no padding; the others have 4 and 9 padding columns

VARIANTS = {
    "mha": {},
    "gqa": {"n_kv_head": 2},
    "mqa": {"n_kv_head": 1},
    "window": {"sliding_window": 4},
    # Padding wider than the sinks and rows longer than sinks + window, so that sinks matter.
    "window+sinks": {"sliding_window": 4, "attn_sinks": 2},
    "window+sinks, reference attention": {
        "sliding_window": 4,
        "attn_sinks": 2,
        "attn_impl": "reference",
    },
    "gqa+window+sinks": {"n_kv_head": 2, "sliding_window": 5, "attn_sinks": 3},
    "moe": {"n_expert": 4, "n_expert_active": 2, "mlp": "swiglu"},
    "moe+window+sinks": {"n_expert": 4, "n_expert_active": 2, "sliding_window": 4, "attn_sinks": 1},
}
POSITIONS = ("rope", "learned")


def build(variant: str, pos: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    base = dict(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32)
    kw = {**base, **VARIANTS[variant]}
    cfg = ModelConfig.llama_style(**kw) if pos == "rope" else ModelConfig(**kw)
    assert cfg.pos_embedding == pos
    model = GPT(cfg).eval()
    with torch.no_grad():  # larger weights than the init, so that a wrong mask shows clearly
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
    return model


def sequences(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, V, (n,), generator=g) for n in LENGTHS]


def pad(seqs: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), P, dtype=torch.long)  # id 0 is padding
    mask = torch.zeros(len(seqs), P, dtype=torch.bool)
    for b, s in enumerate(seqs):
        cols = slice(P - len(s), P) if side == "left" else slice(0, len(s))
        ids[b, cols], mask[b, cols] = s, True
    return ids, mask


def cached_logits(model: GPT, ids: torch.Tensor, mask: torch.Tensor, prefill: int) -> torch.Tensor:
    """Prefill ``prefill`` columns, then one column per call, as batched generation does."""
    B, P = ids.shape
    cache = KVCache(model.config, B, P)
    chunks = [(0, prefill)] + [(t, t + 1) for t in range(prefill, P)]
    out = [model(ids[:, a:b], attention_mask=mask[:, :b], cache=cache).logits for a, b in chunks]
    return torch.cat(out, dim=1)  # (B, P, V)


def assert_rows_equal_alone(model, seqs, logits, mask):
    for b, s in enumerate(seqs):
        alone = model(s[None]).logits[0]  # (n, V)
        torch.testing.assert_close(logits[b][mask[b]], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_row_equals_the_sequence_alone_without_cache(variant, pos, side):
    model, seqs = build(variant, pos), sequences()
    ids, mask = pad(seqs, side)
    assert_rows_equal_alone(model, seqs, model(ids, attention_mask=mask).logits, mask)


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_row_equals_the_sequence_alone_with_the_cache(variant, pos, side):
    model, seqs = build(variant, pos), sequences()
    ids, mask = pad(seqs, side)
    # A prefill of 6 columns: the shortest left-padded row prefills padding only, then decodes.
    assert_rows_equal_alone(model, seqs, cached_logits(model, ids, mask, prefill=6), mask)


def test_mask_counts_the_window_and_the_sinks_in_real_tokens():
    # By hand: 3 padding columns, then 6 real tokens; window 2, one sink. The last query (real token 5)
    # sees the sink (real token 0, column 3) and real tokens 4 and 5 (columns 7 and 8).
    valid = torch.tensor([[False] * 3 + [True] * 6])
    mask = build_attention_mask(9, 9, key_valid=valid, window=2, sinks=1)[0, 0]
    assert mask[8].tolist() == [False, False, False, True, False, False, False, True, True]
    # In general the real block of a left-padded mask is the unpadded mask, for every offset too.
    for n_pad in range(5):
        valid = torch.tensor([[False] * n_pad + [True] * 7])
        T = n_pad + 7
        unpadded = build_attention_mask(7, 7, window=3, sinks=2)[0, 0]
        padded = build_attention_mask(T, T, key_valid=valid, window=3, sinks=2)[0, 0]
        assert torch.equal(padded[n_pad:, n_pad:], unpadded)
        assert not padded[n_pad:, :n_pad].any()  # real queries never see padding
        assert torch.equal(padded[:n_pad, :n_pad], torch.eye(n_pad, dtype=torch.bool))
        last = build_attention_mask(1, T, offset=T - 1, key_valid=valid, window=3, sinks=2)
        assert torch.equal(last[0, 0, 0], padded[-1])


def test_rolling_cache_refuses_padding():
    # Its sinks are the first tokens fed: a padded row would keep padding as sinks.
    model = build("mha", "rope")
    cache = RollingKVCache(model.config, 2, sinks=2, window=4)
    ids = torch.tensor([[0], [5]])
    with pytest.raises(ValueError, match="^attention_mask: the rolling cache"):
        model(ids, attention_mask=torch.tensor([[False], [True]]), cache=cache)
    with pytest.raises(ValueError, match="^positions: the rolling cache"):
        model(ids, positions=torch.tensor([0]), cache=cache)
