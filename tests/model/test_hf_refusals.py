"""The converters convert every setting or refuse it by name; RoPE under transformers 4.x and 5."""

import dataclasses
import sys
from types import SimpleNamespace

import pytest
import torch

from llmbook.model import hf_llama, hf_support
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.model.hf import config_from_hf, from_hf, hf_config_from, to_hf, to_hf_state_dict
from llmbook.model.hf_support import rope_kwargs, transformers_major

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=32)
GPT2 = ModelConfig(**SMALL)
LLAMA = ModelConfig.llama_style(**SMALL, n_kv_head=2)
MOE = ModelConfig.llama_style(**SMALL, n_expert=4, n_expert_active=2)


@pytest.mark.parametrize(
    "base, change, field",
    [
        (GPT2, dict(residual=False), "residual"),
        (GPT2, dict(norm="rmsnorm"), "norm"),
        (GPT2, dict(norm="none"), "norm"),
        (GPT2, dict(mlp="swiglu"), "mlp"),
        (GPT2, dict(bias=False), "bias"),
        (GPT2, dict(n_kv_head=2), "n_kv_head"),
        (GPT2, dict(sliding_window=8), "sliding_window"),
        (GPT2, dict(pos_embedding="sinusoidal"), "pos_embedding"),
        (LLAMA, dict(residual=False), "residual"),
        (LLAMA, dict(norm="layernorm"), "norm"),
        (LLAMA, dict(mlp="gelu"), "mlp"),
        (LLAMA, dict(dropout=0.1), "dropout"),
        (LLAMA, dict(sliding_window=8, attn_sinks=2), "sliding_window"),
        (MOE, dict(residual=False), "residual"),
        (MOE, dict(norm="none"), "norm"),
        (MOE, dict(pos_embedding="learned"), "pos_embedding"),
        (MOE, dict(dropout=0.1), "dropout"),
        (MOE, dict(bias=True), "bias"),
        (MOE, dict(sliding_window=8, attn_sinks=2), "attn_sinks"),
        (MOE, dict(moe_every=2), "moe_every"),
        (MOE, dict(n_shared_expert=1), "n_shared_expert"),
        (MOE, dict(capacity_factor=1.25), "capacity_factor"),
        (MOE, dict(router_noise=0.1), "router_noise"),
        (MOE, dict(router_renormalize=False), "router_renormalize"),
        (MOE, dict(n_expert_active=1, router_renormalize=False), "router_renormalize"),
    ],
)
def test_export_refuses_what_the_family_cannot_express(base, change, field):
    model = GPT(dataclasses.replace(base, **change))
    for export in (to_hf, to_hf_state_dict):
        with pytest.raises(ValueError, match=f"^{field}: "):
            export(model)


def test_residual_free_export_is_refused_not_wrong():
    # Before, this exported a model whose logits were off by 0.3: refusing is the only right answer.
    with pytest.raises(ValueError, match="^residual: GPT2LMHeadModel"):
        to_hf(GPT(dataclasses.replace(GPT2, residual=False)))


def rope_scaled():
    if transformers_major() >= 5:
        kw = {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}
        return kw, "rope_parameters"
    return {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"


TINY_LLAMA = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=48)
TINY_MIXTRAL = dict(TINY_LLAMA, num_local_experts=4, num_key_value_heads=2)


@pytest.mark.parametrize(
    "make, field",
    [
        (
            lambda: transformers.GPT2Config(scale_attn_by_inverse_layer_idx=True),
            "scale_attn_by_inverse_layer_idx",
        ),
        (lambda: transformers.GPT2Config(scale_attn_weights=False), "scale_attn_weights"),
        (lambda: transformers.GPT2Config(add_cross_attention=True), "add_cross_attention"),
        (lambda: transformers.GPT2Config(activation_function="relu"), "activation_function"),
        (lambda: transformers.GPT2Config(attn_pdrop=0.0), "attn_pdrop"),
        (lambda: transformers.GPT2Config(embd_pdrop=0.0), "embd_pdrop"),
        (lambda: transformers.LlamaConfig(**TINY_LLAMA, hidden_act="gelu"), "hidden_act"),
        (lambda: transformers.LlamaConfig(**TINY_LLAMA, attention_bias=True), "mlp_bias"),
        (lambda: transformers.LlamaConfig(**TINY_LLAMA, head_dim=16), "head_dim"),
        (
            lambda: transformers.LlamaConfig(**TINY_LLAMA, attention_dropout=0.1),
            "attention_dropout",
        ),
        (lambda: transformers.LlamaConfig(**TINY_LLAMA, **rope_scaled()[0]), rope_scaled()[1]),
        (
            lambda: transformers.MixtralConfig(**TINY_MIXTRAL, router_jitter_noise=0.1),
            "router_jitter_noise",
        ),
        (
            lambda: transformers.MixtralConfig(**TINY_MIXTRAL, num_experts_per_tok=1),
            "num_experts_per_tok",
        ),
        (
            lambda: transformers.MixtralConfig(**TINY_MIXTRAL, attention_dropout=0.1),
            "attention_dropout",
        ),
        (lambda: transformers.MixtralConfig(**TINY_MIXTRAL, hidden_act="gelu"), "hidden_act"),
        (lambda: transformers.MixtralConfig(**TINY_MIXTRAL, **rope_scaled()[0]), rope_scaled()[1]),
        (lambda: transformers.MistralConfig(**TINY_LLAMA), "model_type"),
    ],
)
def test_import_refuses_what_llmbook_does_not_convert(make, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        config_from_hf(make())


def test_gpt2_dropout_is_kept_both_ways():
    hf_config = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.2
    )
    assert config_from_hf(hf_config).dropout == 0.2
    hf = to_hf(GPT(dataclasses.replace(GPT2, dropout=0.3)))
    assert (hf.config.resid_pdrop, hf.config.embd_pdrop, hf.config.attn_pdrop) == (0.3, 0.3, 0.3)
    block = hf.transformer.h[0]
    rates = {
        hf.transformer.drop.p,
        block.attn.attn_dropout.p,
        block.attn.resid_dropout.p,
        block.mlp.dropout.p,
    }
    assert rates == {0.3}


def test_reorder_and_upcast_attn_is_only_precision():
    # GPT-2's reordered attention computes the same scores in float32: accepted, and equal in fp32.
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=40,
        n_positions=16,
        n_layer=2,
        n_head=4,
        n_embd=32,
        reorder_and_upcast_attn=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(from_hf(hf)(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)


# --- RoPE across transformers versions ------------------------------------------------------------


def test_export_fails_when_transformers_ignores_the_base(monkeypatch):
    # transformers 4.x keeps an unknown `rope_parameters` argument as an inert attribute and builds
    # a θ=10000 model; simulate a config class that ignores how the base was passed.
    real = sys.modules["transformers"].LlamaConfig

    def forgetful(**kw):
        for name in ("rope_parameters", "rope_theta", "rope_scaling"):
            kw.pop(name, None)
        return real(**kw)

    # by name: transformers may replace its lazy module in sys.modules after the first model is built
    monkeypatch.setattr("transformers.LlamaConfig", forgetful)
    model = GPT(dataclasses.replace(LLAMA, rope_theta=5e5))
    with pytest.raises(ValueError, match="^rope_theta: "):
        hf_config_from(model.config)
    # and the built model's own frequencies are checked too, whatever its config claims
    monkeypatch.setattr(hf_llama, "check_rope_config", lambda hf_config, config: None)
    with pytest.raises(ValueError, match="^rope_theta: "):
        to_hf(model)


def test_rope_base_survives_export():
    model = GPT(dataclasses.replace(LLAMA, rope_theta=5e5))
    hf = to_hf(model)
    assert config_from_hf(hf.config).rope_theta == 5e5
    expected = 1.0 / 5e5 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    torch.testing.assert_close(hf.model.rotary_emb.inv_freq.double(), expected, rtol=1e-6, atol=0)


def legacy_llama(**rope):
    """A config object shaped like transformers 4.x's LlamaConfig."""
    return SimpleNamespace(
        model_type="llama",
        vocab_size=40,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        hidden_act="silu",
        attention_dropout=0.0,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        head_dim=8,
        **{"rope_theta": 10000.0, "rope_scaling": None, **rope},
    )


def test_reads_the_base_transformers_4_uses(monkeypatch):
    monkeypatch.setattr(hf_support, "transformers_major", lambda: 4)
    assert config_from_hf(legacy_llama(rope_theta=5e5)).rope_theta == 5e5
    # 4.x ignores a stray `rope_parameters`: the model it builds runs with `rope_theta`.
    stray = {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    assert config_from_hf(legacy_llama(**stray)).rope_theta == 10000.0
    with pytest.raises(ValueError, match="^rope_scaling: "):
        config_from_hf(legacy_llama(rope_scaling={"type": "dynamic", "factor": 2.0}))


def test_writes_the_base_transformers_4_reads(monkeypatch):
    monkeypatch.setattr(hf_support, "transformers_major", lambda: 4)
    seen = {}

    def record(**kw):
        seen.update(kw)
        return SimpleNamespace(model_type="llama", **kw)

    monkeypatch.setattr("transformers.LlamaConfig", record)
    hf_config_from(dataclasses.replace(LLAMA, rope_theta=5e5))
    assert seen["rope_theta"] == 5e5 and "rope_parameters" not in seen
    assert rope_kwargs(5e5) == {"rope_theta": 5e5, "rope_scaling": None}


def test_old_transformers_is_refused(monkeypatch):
    monkeypatch.setattr("transformers.__version__", "4.40.2")
    with pytest.raises(RuntimeError, match=r"^transformers: .*>=4\.46, found 4\.40\.2"):
        config_from_hf(transformers.GPT2Config())
    with pytest.raises(RuntimeError, match="^transformers: "):
        to_hf(GPT(GPT2))
