"""Parity with Hugging Face transformers: models built from config objects (never downloaded)."""

import pytest
import torch

from llmbook.generate.generation import generate
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.model.hf import config_from_hf, from_hf, to_hf, to_hf_state_dict

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


def hf_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=97,
        n_positions=32,
        n_embd=48,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def hf_llama(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**base, **kw})).eval()


def randomise_norms(model):
    # HF initialises norm gains to 1 and biases to 0; random values make the parity test stricter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)


@pytest.mark.parametrize(
    "make",
    [
        hf_gpt2,
        hf_llama,
        lambda: hf_llama(
            num_key_value_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}
        ),
    ],
)
def test_logits_match(make):
    hf = make()
    randomise_norms(hf)
    ours = from_hf(hf)
    ids = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        expected = hf(ids).logits
    torch.testing.assert_close(ours(ids).logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("make", [hf_gpt2, hf_llama])
def test_greedy_generations_match(make):
    hf = make(seed=3)
    randomise_norms(hf)
    ours = from_hf(hf)
    prompt = torch.randint(0, 97, (1, 6))
    with torch.no_grad():
        theirs = hf.generate(
            prompt,
            max_new_tokens=20,
            do_sample=False,
            pad_token_id=0,
            attention_mask=torch.ones_like(prompt),
        )
    out = generate(ours, [prompt[0].tolist()], max_new_tokens=20, temperature=0)
    assert out.completions[0] == theirs[0, 6:].tolist()


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(vocab_size=60, block_size=32, n_layer=2, n_head=4, n_embd=32),
        ModelConfig.llama_style(
            vocab_size=60, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32
        ),
    ],
)
def test_export_to_hf_and_back(config):
    torch.manual_seed(1)
    ours = GPT(config).eval()
    hf = to_hf(ours)
    ids = torch.randint(0, 60, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, atol=1e-4, rtol=1e-4)
    back = from_hf(hf)
    for (name, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    assert set(to_hf_state_dict(ours)) >= {
        k for k in hf.state_dict() if not k.endswith(("attn.bias", "masked_bias", "inv_freq"))
    }


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="hidden_act"):
        config_from_hf(transformers.LlamaConfig(hidden_act="gelu"))
    with pytest.raises(ValueError, match="neither"):
        to_hf(GPT(ModelConfig(norm="rmsnorm")))
