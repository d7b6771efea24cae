"""evaluate(): loss, perplexity and bits per byte over a split, in full and subsampled."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.train.evaluate import evaluate


class UniformLM(nn.Module):
    """Zero logits: every next token has probability 1/V, so every target costs exactly ln V nats."""

    def __init__(self, vocab_size: int, block_size: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size)
        self.vocab_size = vocab_size
        self.anchor = nn.Parameter(torch.zeros(1))  # evaluate() reads the device from a parameter

    def forward(self, x):
        return SimpleNamespace(logits=torch.zeros(*x.shape, self.vocab_size))


@pytest.mark.parametrize("max_batches", [None, 1, 2])
def test_uniform_model_has_log2_v_bits_per_token_at_every_subsample(max_batches):
    # 256 ids spanning twice as many bytes: log2(256) = 8 bits per token, so 4 bits per byte exactly,
    # whether the loss comes from every batch or from a few of them.
    ids = torch.arange(4001) % 256
    r = evaluate(
        UniformLM(256, 8), ids, batch_size=4, n_bytes=2 * len(ids), max_batches=max_batches
    )
    assert r.loss == pytest.approx(math.log(256))
    assert r.perplexity == pytest.approx(256.0)
    assert r.bits_per_byte == pytest.approx(4.0)
    assert r.n_tokens == (4000 if max_batches is None else 4 * 8 * max_batches)


def test_subsampled_bits_per_byte_estimate_the_full_value_on_uniform_text():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16))
    ids = torch.tensor(list(b"the cat sat on the mat. " * 400))
    n_bytes = 3 * len(ids)  # as if each token were a 3-byte BPE token
    full = evaluate(model, ids, batch_size=8, n_bytes=n_bytes)
    quick = evaluate(model, ids, batch_size=8, n_bytes=n_bytes, max_batches=2)
    assert quick.n_tokens < full.n_tokens / 10
    # The text repeats, so any two batches see the same mix of contexts as the whole split.
    assert quick.loss == pytest.approx(full.loss, rel=0.02)
    assert quick.bits_per_byte == pytest.approx(full.bits_per_byte, rel=0.02)
    # Full split: total bits over total bytes, worked out by hand from the summed loss.
    total_bits = full.loss * full.n_tokens / math.log(2)
    assert full.bits_per_byte == pytest.approx(total_bits / (n_bytes - 3), rel=1e-9)


def test_default_is_one_byte_per_token():
    ids = torch.arange(100) % 256
    r = evaluate(UniformLM(256, 8), ids)
    assert r.bits_per_byte == pytest.approx(8.0)


@pytest.mark.parametrize("n_bytes", [0, -3, 2.5, True])
def test_bad_byte_count_is_refused_by_name(n_bytes):
    with pytest.raises(ValueError, match="n_bytes"):
        evaluate(UniformLM(256, 8), torch.arange(10), n_bytes=n_bytes)


def test_evaluate_restores_training_mode():
    model = UniformLM(256, 8).train()
    evaluate(model, torch.arange(50))
    assert model.training
