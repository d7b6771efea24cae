import pytest

from llmbook.model.config import ModelConfig


def test_defaults_are_valid_and_tiny():
    c = ModelConfig()
    assert c.head_dim * c.n_head == c.n_embd
    assert c.n_layer <= 4 and c.n_embd <= 128


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_embd": 65, "n_head": 4}, "n_embd"),
        ({"n_head": 0}, "n_head"),
        ({"n_layer": -1}, "n_layer"),
        ({"vocab_size": 2.5}, "vocab_size"),
        ({"block_size": True}, "block_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"pos_embedding": "rotary-ish"}, "pos_embedding"),
        ({"norm": "batchnorm"}, "norm"),
        ({"attn_impl": "flash"}, "attn_impl"),
        ({"bias": "yes"}, "bias"),
        ({"residual": 1}, "residual"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"init_std": -1.0}, "init_std"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        ModelConfig(**overrides)


def test_fields_are_keyword_only():
    with pytest.raises(TypeError):
        ModelConfig(256)  # type: ignore[misc]


def test_dict_round_trip_and_unknown_key():
    c = ModelConfig(n_layer=3, pos_embedding="sinusoidal")
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="^n_layers:"):
        ModelConfig.from_dict({"n_layers": 3})


def test_presets():
    g = ModelConfig.gpt2_small()
    assert (g.n_layer, g.n_head, g.n_embd, g.block_size, g.vocab_size) == (12, 12, 768, 1024, 50257)
    s = ModelConfig.nanogpt_shakespeare_cpu()
    assert (s.n_layer, s.n_head, s.n_embd, s.block_size, s.vocab_size) == (4, 4, 128, 64, 65)
