"""Parity with Hugging Face transformers: models built from config objects (never downloaded)."""

import pytest
import torch

from llmbook.generate.generation import generate
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.model.hf import config_from_hf, from_hf, hf_config_from, to_hf, to_hf_state_dict
from llmbook.model.hf_support import rope_kwargs

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
        lambda: hf_llama(num_key_value_heads=4, **rope_kwargs(500000.0)),
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
        ModelConfig(
            vocab_size=60, block_size=32, n_layer=2, n_head=4, n_embd=32, tie_weights=False
        ),
        ModelConfig.llama_style(
            vocab_size=60, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32
        ),
        ModelConfig.llama_style(
            vocab_size=60, block_size=32, n_layer=2, n_head=4, n_embd=32, bias=True, rope_theta=5e5
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


def test_padded_batch_matches_llama():
    hf = hf_llama(seed=5, **rope_kwargs(500000.0))
    randomise_norms(hf)
    ours = from_hf(hf)
    ids = torch.randint(0, 97, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :7] = 0
    # transformers numbers positions from the first column unless told; llmbook counts real tokens.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask.bool()).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], theirs[real], atol=1e-4, rtol=1e-4)


ROUND_TRIP = {
    "gpt2": ModelConfig(
        vocab_size=60,
        block_size=32,
        n_layer=3,
        n_head=4,
        n_embd=32,
        mlp_hidden=80,
        dropout=0.1,
        tie_weights=False,
        norm_eps=1e-6,
        init_std=0.01,
    ),
    "llama": ModelConfig.llama_style(
        vocab_size=60,
        block_size=48,
        n_layer=3,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        mlp_hidden=96,
        rope_theta=5e5,
        bias=True,
        tie_weights=True,
        norm_eps=1e-6,
        init_std=0.01,
    ),
    "mixtral": ModelConfig.llama_style(
        vocab_size=60,
        block_size=48,
        n_layer=2,
        n_head=4,
        n_kv_head=1,
        n_embd=32,
        n_expert=4,
        n_expert_active=2,
        expert_hidden=48,
        sliding_window=16,
        rope_theta=1e6,
        moe_aux_coef=0.02,
        moe_z_coef=0.0,
    ),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_config_round_trip_through_hf(name):
    config = ROUND_TRIP[name]
    hf_config = hf_config_from(config)
    assert hf_config.model_type == name
    assert config_from_hf(hf_config) == config
    # and through the JSON form that save_pretrained writes
    assert config_from_hf(type(hf_config).from_dict(hf_config.to_dict())) == config


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="^hidden_act"):
        config_from_hf(transformers.LlamaConfig(hidden_act="gelu"))
    with pytest.raises(ValueError, match="^norm"):
        to_hf(GPT(ModelConfig(norm="rmsnorm")))
