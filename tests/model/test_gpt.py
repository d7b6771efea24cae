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
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=True) == count_parameters(cfg, non_embedding=True)


def test_gpt2_small_count():
    # The published GPT-2 small count with tied embeddings and biases.
    assert count_parameters(ModelConfig.gpt2_small()) == 124_439_808


def test_flops_per_token_six_n():
    cfg = ModelConfig.gpt2_small()
    n = cfg.n_layer * 12 * cfg.n_embd**2 + cfg.vocab_size * cfg.n_embd
    assert flops_per_token(cfg, seq_len=1) == 6 * n + 12 * cfg.n_layer * cfg.n_embd
    assert flops_per_token(cfg) > flops_per_token(cfg, seq_len=128)


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
