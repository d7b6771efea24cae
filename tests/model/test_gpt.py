import math

import pytest
import torch
import torch.nn.functional as F

from llmbook.model.config import ModelConfig
from llmbook.model.counting import count_parameters, flops_per_token
from llmbook.model.gpt import GPT

VARIANTS = [
    {},
    {"bias": False},
    {"pos_embedding": "sinusoidal"},
    {"tie_weights": False},
    {"norm": "none"},
    {"residual": False},
    {"attn_impl": "reference"},
    {"norm": "rmsnorm"},
    {"pos_embedding": "rope"},
    {"mlp": "swiglu"},
    {"n_kv_head": 1},
    {"mlp": "swiglu", "mlp_hidden": 20, "bias": True},
    {"sliding_window": 5, "attn_sinks": 2},
    {
        "norm": "rmsnorm",
        "pos_embedding": "rope",
        "mlp": "swiglu",
        "n_kv_head": 1,
        "bias": False,
        "tie_weights": False,
    },
]


def tiny(**kw):
    return ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw)


@pytest.mark.parametrize("overrides", VARIANTS)
def test_shapes_and_loss(overrides):
    model = GPT(tiny(**overrides))
    idx = torch.randint(0, 50, (3, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, 50)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 50), idx.reshape(-1)))
    assert model(idx).loss is None


def test_loss_at_init_is_near_log_vocab():
    model = GPT(ModelConfig(vocab_size=256, n_layer=2, n_embd=64, n_head=4))
    idx = torch.randint(0, 256, (8, 32))
    _, loss = model(idx, torch.randint(0, 256, (8, 32)))
    assert abs(loss.item() - math.log(256)) < 0.1


def test_ignore_index_leaves_positions_out():
    model = GPT(tiny())
    idx = torch.randint(0, 50, (2, 8))
    targets = idx.clone()
    targets[:, :4] = -100
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, 4:].reshape(-1, 50), idx[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("overrides", VARIANTS)
def test_future_tokens_never_change_earlier_logits(overrides):
    model = GPT(tiny(**overrides)).eval()
    idx = torch.randint(0, 50, (2, 12))
    logits = model(idx).logits
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    logits2 = model(changed).logits
    torch.testing.assert_close(logits[:, :7], logits2[:, :7])
    assert not torch.allclose(logits[:, 7:], logits2[:, 7:])


@pytest.mark.parametrize("overrides", VARIANTS)
def test_gradient_reaches_every_parameter(overrides):
    model = GPT(tiny(**overrides))
    idx = torch.randint(0, 50, (2, 12))
    model(idx, idx).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_weight_tying():
    model = GPT(tiny())
    assert model.lm_head.weight is model.tok_emb.weight
    untied = GPT(tiny(tie_weights=False))
    assert untied.lm_head.weight is not untied.tok_emb.weight


@pytest.mark.parametrize("overrides", VARIANTS)
def test_parameter_count_matches_closed_formula(overrides):
    cfg = tiny(**overrides)
    model = GPT(cfg)
    assert model.num_params() == count_parameters(cfg)
    assert model.num_params(non_embedding=True) == count_parameters(cfg, non_embedding=True)


LLAMA = dict(
    norm="rmsnorm", pos_embedding="rope", mlp="swiglu", n_kv_head=1, bias=False, tie_weights=False
)
MIXTRAL = dict(LLAMA, n_expert=4, n_expert_active=2, expert_hidden=24)


@pytest.mark.parametrize(
    ("overrides", "total", "non_embedding"),
    [
        # V=50, T=16, C=16, 2 blocks. GPT-2 style, per block: 2 LayerNorms 2 * 32, q k v o
        # 4 * (16 * 16 + 16) = 1088, MLP 16 * 64 + 64 + 64 * 16 + 16 = 2128, so 3280; tokens 800,
        # positions 256, final norm 32, tied head 0: 800 + 256 + 2 * 3280 + 32.
        ({}, 7648, 7648 - 800 - 256),
        # Llama style (D = 8, K = 1, SwiGLU width 64), per block: 2 RMSNorms 2 * 16, q and o
        # 2 * 256, k and v 2 * 16 * 8, MLP 3 * 16 * 64 = 3072, so 3872; tokens 800, final norm 16,
        # untied head 800: 800 + 2 * 3872 + 16 + 800.
        (LLAMA, 9360, 9360 - 800),
        # Mixtral style: the MLP becomes a router 4 * 16 and 4 experts of 3 * 16 * 24 = 1152:
        # 3872 - 3072 + 64 + 4608 = 5472 per block; 800 + 2 * 5472 + 16 + 800.
        (MIXTRAL, 12560, 12560 - 800),
    ],
)
def test_parameter_count_worked_out_by_hand(overrides, total, non_embedding):
    cfg = tiny(**overrides)
    assert GPT(cfg).num_params() == count_parameters(cfg) == total
    assert GPT(cfg).num_params(non_embedding=True) == non_embedding
    assert count_parameters(cfg, non_embedding=True) == non_embedding


def test_parameter_count_equals_transformers_models_built_from_config():
    # The same shapes in Hugging Face's own implementations (built from config objects, no download).
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MixtralConfig,
        MixtralForCausalLM,
    )

    gpt2 = GPT2Config(
        vocab_size=50,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    shape = dict(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    assert GPT2LMHeadModel(gpt2).num_parameters() == count_parameters(tiny())
    llama = LlamaConfig(intermediate_size=64, **shape)
    assert LlamaForCausalLM(llama).num_parameters() == count_parameters(tiny(**LLAMA))
    mixtral = MixtralConfig(
        intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, **shape
    )
    assert MixtralForCausalLM(mixtral).num_parameters() == count_parameters(tiny(**MIXTRAL))


def test_gpt2_small_count():
    # The published GPT-2 small count with tied embeddings and biases.
    assert count_parameters(ModelConfig.gpt2_small()) == 124_439_808


def test_flops_per_token_six_n_plus_attention():
    # N = 12 L C^2 + V C = 12 * 12 * 768^2 + 50257 * 768 = 123,532,032 matmul weights; 6N = 741,192,192.
    # Attention at T = 1024: 12 L T C = 12 * 12 * 1024 * 768 = 113,246,208; at T = 128: 14,155,776.
    cfg = ModelConfig.gpt2_small()
    assert flops_per_token(cfg, seq_len=1) == 741_192_192 + 12 * 12 * 768
    assert flops_per_token(cfg) == 741_192_192 + 113_246_208 == 854_438_400
    assert flops_per_token(cfg, seq_len=128) == 741_192_192 + 14_155_776


def test_sequence_longer_than_block_size_raises():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_fused_and_reference_models_agree():
    a = GPT(tiny(attn_impl="fused")).eval()
    b = GPT(tiny(attn_impl="reference")).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(a(idx).logits, b(idx).logits)


@pytest.mark.parametrize(
    "overrides", [{}, {"pos_embedding": "sinusoidal"}, {"attn_impl": "reference"}]
)
def test_left_padded_row_equals_the_unpadded_sequence(overrides):
    model = GPT(tiny(**overrides)).eval()
    idx = torch.randint(1, 50, (1, 6))
    for pad_token in (0, 7):
        padded = torch.cat([torch.full((1, 3), pad_token), idx], dim=1)
        mask = torch.tensor([[False] * 3 + [True] * 6])
        logits = model(padded, attention_mask=mask).logits
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(logits[:, 3:], model(idx).logits)


def test_attention_mask_shape_is_checked():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(5, dtype=torch.bool))


def test_one_step_lowers_the_loss():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 50, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model(idx[:, :-1], idx[:, 1:]).loss
    before.backward()
    opt.step()
    after = model(idx[:, :-1], idx[:, 1:]).loss
    assert after.item() < before.item()
