"""Ablation grids: validation by field, the JSON round trip and the key, the equal-parameter width, and
the preset grids."""

import json
import math

import pytest

from llmbook.experiments.grid import GRIDS, AblationGrid, equal_params_width
from llmbook.model.config import ModelConfig
from llmbook.model.counting import count_parameters


def tiny_grid(**overrides) -> AblationGrid:
    fields = dict(
        name="tiny",
        base_model=dict(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16),
        cells={"baseline": {}, "rope": {"pos_embedding": "rope"}},
        train=dict(max_steps=3, batch_size=4, warmup_steps=1, eval_interval=0),
        seeds=(0, 1),
        corpus="toy",
        val_tokens=128,
    )
    return AblationGrid(**{**fields, **overrides})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"name": "no spaces"}, "name:"),
        ({"corpus": "nope"}, "corpus: unknown corpus 'nope'"),
        ({"train_fraction": math.nan}, "train_fraction: must be a finite number"),
        ({"train_fraction": 1.0}, "train_fraction: must be in"),
        ({"val_tokens": 1}, "val_tokens:"),
        ({"base_model": {"n_embd": 15}}, "base_model: n_embd: must be divisible"),
        ({"base_model": {"dropout": math.nan}}, "base_model: dropout: must be a finite number"),
        ({"train": {"lr": math.inf}}, "train: lr: must be a finite number"),
        ({"train": {"seed": 3}}, "train: seed: is set per run"),
        ({"train": {"block_size": 32}}, "train: block_size: 32 exceeds"),
        ({"cells": {"rope": {}}}, "cells: must hold 'baseline'"),
        ({"cells": {"baseline": {"n_layer": 2}}}, "cells: must hold 'baseline'"),
        ({"cells": {"baseline": {}, "a,b": {}}}, "cells: a cell name"),
        ({"cells": {"baseline": {}, "odd": {"n_head": 3}}}, r"cells\.odd: n_embd: must be"),
        ({"cells": {"baseline": {}, "typo": {"n_heads": 4}}}, r"cells\.typo: n_heads: not a"),
        ({"cells": {"baseline": {}, "x": {"norm_eps": math.nan}}}, r"cells\.x: norm_eps: must"),
        ({"cells": {"baseline": {}, "v": {"vocab_size": 100}}}, r"cells\.v: vocab_size: must be"),
        ({"seeds": ()}, "seeds: must be a non-empty"),
        ({"seeds": (0, 0)}, "seeds: must be distinct"),
        ({"seeds": (-1,)}, "seeds: each must be"),
        ({"seeds": (True,)}, "seeds: each must be"),
    ],
)
def test_grid_validation_names_the_field(toy_zoo, overrides, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        tiny_grid(**overrides)


def test_a_grid_round_trips_through_json_and_its_key_follows_its_content(toy_zoo):
    grid = tiny_grid()
    data = json.loads(json.dumps(grid.to_dict()))
    again = AblationGrid.from_dict(data)
    assert again == grid and again.seeds == (0, 1) and again.key == grid.key
    assert len(grid.key) == 16 and int(grid.key, 16) >= 0
    assert tiny_grid(cells={"rope": {"pos_embedding": "rope"}, "baseline": {}}).key == grid.key
    assert tiny_grid(seeds=(0, 1, 2)).key != grid.key
    assert (
        tiny_grid(cells={"baseline": {}, "rope": {"pos_embedding": "sinusoidal"}}).key != grid.key
    )
    with pytest.raises(ValueError, match="^sedes: not a AblationGrid field"):
        AblationGrid.from_dict({**data, "sedes": [0]})
    cells = {"baseline": {}}
    grid = tiny_grid(cells=cells)
    cells["baseline"]["n_layer"] = 3  # the grid holds its own copy
    assert grid.cells == {"baseline": {}}


@pytest.mark.parametrize("non_embedding", [True, False])
@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("n_layer", [1, 4])
def test_the_equal_parameter_width_is_the_closest_allowed_one(n_layer, pos, non_embedding):
    base = ModelConfig(n_layer=2, n_head=4, n_embd=64, pos_embedding=pos)

    def gap(config):
        return abs(
            count_parameters(config, non_embedding=non_embedding)
            - count_parameters(base, non_embedding=non_embedding)
        )

    config = equal_params_width(base, n_layer, non_embedding=non_embedding)
    step = 8 if pos == "rope" else 4  # RoPE rotates pairs: the head width must be even
    assert config.n_layer == n_layer and config.n_embd % step == 0
    assert config.n_head == 4 and config.pos_embedding == pos
    for width in (config.n_embd - step, config.n_embd + step):
        assert gap(ModelConfig.from_dict({**config.to_dict(), "n_embd": width})) >= gap(config)
    assert equal_params_width(base, 2, non_embedding=non_embedding) == base
    with pytest.raises(ValueError, match="^n_layer:"):
        equal_params_width(base, 0)


def test_the_book_grid_changes_one_switch_per_cell_at_about_equal_size():
    grid = GRIDS["book"]
    assert list(grid.cells) == [
        "baseline", "rmsnorm", "sinusoidal", "rope", "swiglu", "gqa", "deep", "wide"
    ]  # fmt: skip
    assert grid.seeds == (0, 1, 2) and grid.corpus == "tinyshakespeare"
    base = grid.model_config("baseline")
    assert (base.norm, base.pos_embedding, base.mlp, base.kv_heads) == (
        "layernorm",
        "learned",
        "gelu",
        4,
    )
    target = count_parameters(base, non_embedding=True)
    for cell in ("swiglu", "deep", "wide"):
        size = count_parameters(grid.model_config(cell), non_embedding=True)
        assert abs(size - target) / target < 0.05, cell
    assert grid.model_config("deep").n_layer == 4 and grid.model_config("wide").n_layer == 1
    assert set(GRIDS["smoke"].cells) == {"baseline", "rope"} and len(GRIDS["smoke"].seeds) == 2
