"""Packed rows: a (B, T, T) block-diagonal mask makes each document compute what it computes alone."""

import pytest
import torch

from llmbook.model import GPT, ModelConfig


def _block_diagonal(lengths: list[int]) -> torch.Tensor:
    # Written out by hand: document d covers columns [start_d, start_d + len_d).
    T = sum(lengths)
    m = torch.zeros(T, T, dtype=torch.bool)
    start = 0
    for n in lengths:
        m[start : start + n, start : start + n] = True
        start += n
    return m


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_packed_documents_equal_separate_runs(pos):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=50,
        block_size=16,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        pos_embedding=pos,
        norm="rmsnorm",
        mlp="swiglu",
    )
    model = GPT(cfg).eval()
    docs = [torch.randint(0, 50, (n,)) for n in (5, 7, 3)]
    packed = torch.cat(docs)[None]  # (1, 15)
    mask = _block_diagonal([5, 7, 3])[None]
    logits = model(packed, attention_mask=mask).logits[0]
    start = 0
    for d in docs:
        alone = model(d[None]).logits[0]
        torch.testing.assert_close(logits[start : start + len(d)], alone, atol=1e-5, rtol=1e-5)
        start += len(d)
    # Without the mask, the second document attends to the first and differs.
    mixed = model(packed).logits[0, 5:12]
    assert (mixed - model(docs[1][None]).logits[0]).abs().max() > 1e-3


def test_pairwise_mask_refusals():
    cfg = ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    x = torch.randint(0, 50, (1, 6))
    with pytest.raises(ValueError, match="attention_mask: expected shape"):
        model(x, attention_mask=torch.ones(1, 5, 5, dtype=torch.bool))
    windowed = GPT(
        ModelConfig(
            vocab_size=50,
            block_size=16,
            n_layer=1,
            n_head=2,
            n_embd=16,
            pos_embedding="rope",
            sliding_window=4,
        )
    )
    with pytest.raises(ValueError, match="sliding_window"):
        windowed(x, attention_mask=torch.ones(1, 6, 6, dtype=torch.bool))
