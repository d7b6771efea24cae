import dataclasses
import math
import types
import typing

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


# Every field, sorted by what its annotation says it holds; a field added later is covered too.
HINTS = typing.get_type_hints(ModelConfig)


def _holds(name, kind):
    hint = HINTS[name]
    return kind in (typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,))


FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]
FLOAT_FIELDS = [name for name in FIELDS if _holds(name, float)]
INT_FIELDS = [name for name in FIELDS if _holds(name, int)]
BOOL_FIELDS = [name for name in FIELDS if _holds(name, bool)]


def test_field_kinds_cover_every_field():
    assert {"dropout", "norm_eps", "init_std", "rope_theta", "router_noise"} <= set(FLOAT_FIELDS)
    assert {"capacity_factor", "moe_aux_coef", "moe_z_coef"} <= set(FLOAT_FIELDS)
    assert {"vocab_size", "n_kv_head", "attn_sinks", "moe_every"} <= set(INT_FIELDS)
    strings = [name for name in FIELDS if _holds(name, str)]
    assert sorted(FLOAT_FIELDS + INT_FIELDS + BOOL_FIELDS + strings) == sorted(FIELDS)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_non_finite_floats_are_refused_by_name(name, value):
    # NaN passes every `<= 0` check (norm_eps=nan gave NaN logits; rope_theta=inf was accepted).
    with pytest.raises(ValueError, match=rf"^{name}: must be a finite number"):
        ModelConfig(**{name: value})
    with pytest.raises(ValueError, match=rf"^{name}: must be a finite number"):
        ModelConfig.from_dict({name: value})


@pytest.mark.parametrize("name", FIELDS)
def test_a_value_of_the_wrong_type_is_refused_by_name(name):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        ModelConfig(**{name: object()})
    with pytest.raises(ValueError, match=rf"^{name}: "):
        ModelConfig.from_dict({name: [1]})


@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_a_bool_is_not_a_number(name):
    # dropout=False used to pass as 0.0
    with pytest.raises(ValueError, match=rf"^{name}: must be a finite number"):
        ModelConfig(**{name: False})


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize("value", [True, 2.0, "2"])
def test_int_fields_take_only_integers(name, value):
    with pytest.raises(ValueError, match=rf"^{name}: must be an integer"):
        ModelConfig(**{name: value})


@pytest.mark.parametrize("name", INT_FIELDS)
def test_negative_ints_are_refused_by_name(name):
    with pytest.raises(ValueError, match=rf"^{name}: must be a (positive|non-negative) integer"):
        ModelConfig(**{name: -1})


@pytest.mark.parametrize("name", BOOL_FIELDS)
def test_bool_fields_take_only_bools(name):
    with pytest.raises(ValueError, match=rf"^{name}: must be True or False"):
        ModelConfig(**{name: 1})


def test_integral_floats_are_accepted_where_floats_are_expected():
    c = ModelConfig(rope_theta=500_000, router_noise=0, dropout=0)
    assert c.rope_theta == 500_000.0


def test_moe_every_beyond_the_depth_is_refused():
    # moe_every=3 on 2 layers selected no block: a dense model that claimed E experts.
    with pytest.raises(ValueError, match=r"^moe_every: must be at most n_layer \(2\)"):
        ModelConfig(n_layer=2, n_expert=4, moe_every=3)
    last = ModelConfig(n_layer=2, n_expert=4, moe_every=2)
    assert [last.is_moe_layer(i) for i in range(2)] == [False, True]
    assert not ModelConfig(n_layer=2, moe_every=3).is_moe_layer(2)  # dense: moe_every unused


def test_shared_experts_without_routed_experts_are_refused():
    with pytest.raises(ValueError, match="^n_shared_expert: "):
        ModelConfig(n_shared_expert=1)


def test_sinusoidal_needs_an_even_width():
    with pytest.raises(ValueError, match="^pos_embedding: sinusoidal needs an even n_embd"):
        ModelConfig(pos_embedding="sinusoidal", n_embd=15, n_head=3)


@pytest.mark.parametrize("data", [[("n_layer", 3)], "n_layer=3", None])
def test_from_dict_needs_a_mapping(data):
    with pytest.raises(ValueError, match="^ModelConfig: expected a mapping"):
        ModelConfig.from_dict(data)


def test_from_dict_unknown_keys_name_themselves():
    with pytest.raises(
        ValueError, match=r"^n_layers: not a ModelConfig field \(did you mean 'n_layer'"
    ):
        ModelConfig.from_dict({"n_layers": 3})
    with pytest.raises(ValueError, match="^7: not a ModelConfig field"):
        ModelConfig.from_dict({7: 3, "n_layer": 2})
    with pytest.raises(ValueError, match="^n_layer: must be an integer, got '3'"):
        ModelConfig.from_dict({"n_layer": "3"})


def test_messages_are_one_line():
    for kw in ({"norm_eps": math.nan}, {"n_layer": True}, {"moe_every": 9, "n_expert": 2}):
        with pytest.raises(ValueError) as info:
            ModelConfig(**kw)
        assert "\n" not in str(info.value)
