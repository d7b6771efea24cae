import math

import pytest
import torch

from llmbook.train.optim import build_optimizer, check_adamw_arguments


def model():
    return torch.nn.Linear(3, 2)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("lr", math.inf),  # torch.optim.AdamW accepts an infinite rate
        ("lr", math.nan),
        ("lr", -1e-3),
        ("weight_decay", math.inf),  # and an infinite decay
        ("weight_decay", math.nan),
        ("eps", math.inf),  # and an infinite epsilon
        ("eps", 0.0),
        ("betas", (0.9, math.nan)),
        ("betas", (1.0, 0.99)),
        ("betas", (0.9,)),
    ],
)
def test_bad_adamw_settings_are_refused_by_name(name, value):
    kw = dict(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8) | {name: value}
    with pytest.raises(ValueError, match=rf"^{name}: "):
        build_optimizer(model(), **kw)
    with pytest.raises(ValueError, match=rf"^{name}: "):
        check_adamw_arguments(**kw)


def test_valid_settings_reach_adamw():
    opt = build_optimizer(model(), lr=3e-4, weight_decay=0.05, betas=(0.8, 0.9), eps=1e-6)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert (decay["lr"], decay["weight_decay"], decay["betas"], decay["eps"]) == (
        3e-4,
        0.05,
        (0.8, 0.9),
        1e-6,
    )
    assert no_decay["weight_decay"] == 0.0
    assert [p.dim() for p in decay["params"]] == [2] and [p.dim() for p in no_decay["params"]] == [
        1
    ]
