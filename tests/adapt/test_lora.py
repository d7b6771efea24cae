"""LoRA: parity with peft, the zero start, merging, counts, the adapter file, and training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.adapt.lora import (
    DEFAULT_TARGETS,
    LoRALinear,
    count_parameters,
    inject_lora,
    load_adapters,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    save_adapters,
)
from tests.conftest import tiny_model

LLAMA = dict(norm="rmsnorm", pos_embedding="rope", mlp="swiglu", bias=False, n_head=4, n_kv_head=2)
"""A Llama-style tiny GPT: C=32, H=4 heads of D=8, K=2 kv-heads, SwiGLU hidden width 128."""


def llama(seed: int = 0, **overrides):
    return tiny_model(seed, **{**LLAMA, **overrides})


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(seed))  # (B, T)


def randomize_b(model: nn.Module, seed: int = 2) -> None:
    """Give every B a non-zero value, so that the adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


def loss_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x).logits  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))


@pytest.fixture(scope="module")
def peft():
    return pytest.importorskip("peft")


# --- parity with peft -----------------------------------------------------------------------------


@pytest.mark.parametrize(("r", "alpha", "bias"), [(1, 3.0, False), (4, 2.0, False), (4, 12, True)])
def test_matches_peft_outputs_gradients_and_merge(peft, r, alpha, bias):
    base = llama(bias=bias)
    ours = copy.deepcopy(base)
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(DEFAULT_TARGETS), lora_dropout=0.0
    )
    theirs = peft.get_peft_model(base, config)  # wraps (and changes) `base` in place
    names = inject_lora(ours, r=r, alpha=alpha)
    assert len(names) == 2 * 7
    inner = theirs.base_model.model
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            ref = inner.get_submodule(name)
            assert ref.scaling["default"] == pytest.approx(alpha / r)
            layer.lora_A.copy_(ref.lora_A["default"].weight)
            b = torch.randn(layer.lora_B.shape, generator=g) * 0.1
            layer.lora_B.copy_(b)
            ref.lora_B["default"].weight.copy_(b)
    # The same parameters train in both: the adapters and nothing else.
    trainable = {
        n.removeprefix("base_model.model.").replace(".default.weight", "")
        for n, p in theirs.named_parameters()
        if p.requires_grad
    }
    assert trainable == {n for n, p in ours.named_parameters() if p.requires_grad}

    x = ids()
    torch.testing.assert_close(ours(x).logits, theirs(x).logits)
    loss_of(ours, x).backward()
    loss_of(theirs, x).backward()
    for name, layer in lora_layers(ours).items():
        ref = inner.get_submodule(name)
        assert layer.lora_B.grad.abs().sum() > 0
        torch.testing.assert_close(layer.lora_A.grad, ref.lora_A["default"].weight.grad)
        torch.testing.assert_close(layer.lora_B.grad, ref.lora_B["default"].weight.grad)

    merged_theirs = theirs.merge_and_unload()
    merged_ours = merge_lora(ours)
    assert merged_ours is ours
    ours_state, theirs_state = merged_ours.state_dict(), merged_theirs.state_dict()
    assert ours_state.keys() == theirs_state.keys()
    for key in ours_state:
        torch.testing.assert_close(ours_state[key], theirs_state[key])


# --- the layer ------------------------------------------------------------------------------------


def test_zero_b_starts_at_the_base_model_exactly():
    base = llama()
    adapted = copy.deepcopy(base)
    inject_lora(adapted, r=4, alpha=8)
    x = ids()
    assert torch.equal(adapted(x).logits, base(x).logits)
    for layer in lora_layers(adapted).values():
        assert torch.count_nonzero(layer.lora_B) == 0
        assert torch.count_nonzero(layer.lora_A) == layer.lora_A.numel()


def test_a_uses_the_kaiming_uniform_bound_and_the_seed():
    layer = LoRALinear(nn.Linear(64, 16), r=8, alpha=8, generator=torch.Generator().manual_seed(0))
    bound = 1 / math.sqrt(64)  # kaiming_uniform with a = sqrt(5) on fan_in = 64
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > 0.9 * bound
    m1, m2 = llama(), llama()
    state = torch.get_rng_state()
    inject_lora(m1, r=2, alpha=4, seed=7)
    assert torch.equal(
        torch.get_rng_state(), state
    )  # a seeded injection leaves the global RNG alone
    inject_lora(m2, r=2, alpha=4, seed=7)
    for a, b in zip(lora_parameters(m1), lora_parameters(m2), strict=True):
        assert torch.equal(a, b)


def test_forward_is_base_plus_scaled_low_rank_branch():
    linear = nn.Linear(6, 5)
    layer = LoRALinear(linear, r=3, alpha=6)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 6)
    expected = x @ linear.weight.T + linear.bias + (x @ layer.lora_A.T @ layer.lora_B.T) * 2.0
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), 2.0 * layer.lora_B @ layer.lora_A)
    assert layer.scaling == 2.0


def test_merge_unmerge_round_trip_and_no_double_counting():
    layer = LoRALinear(nn.Linear(8, 6), r=2, alpha=5)
    with torch.no_grad():
        layer.lora_B.normal_()
    original = layer.base.weight.detach().clone()
    x = torch.randn(3, 8)
    before = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer.base.weight, original + layer.delta_weight())
    torch.testing.assert_close(layer(x), before)  # the branch is not added a second time
    with pytest.raises(RuntimeError, match="merged already"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, original)
    torch.testing.assert_close(layer(x), before)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


def test_bf16_base_keeps_its_dtype():
    linear = nn.Linear(16, 8).to(torch.bfloat16)
    layer = LoRALinear(linear, r=4, alpha=8)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.bfloat16
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    w = linear.weight.float() + layer.delta_weight().float()
    torch.testing.assert_close(
        y.float(), x.float() @ w.T + linear.bias.float(), rtol=0.05, atol=0.05
    )
    layer.merge()
    assert layer.base.weight.dtype == torch.bfloat16
    torch.testing.assert_close(layer(x).float(), y.float(), rtol=0.05, atol=0.05)


def test_dropout_acts_in_training_only():
    layer = LoRALinear(nn.Linear(32, 32), r=4, alpha=4, dropout=0.5)
    plain = LoRALinear(copy.deepcopy(layer.base), r=4, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
        plain.lora_A.copy_(layer.lora_A)
        plain.lora_B.copy_(layer.lora_B)
    x = torch.randn(8, 32)
    assert not torch.allclose(layer.train()(x), plain(x))
    assert torch.equal(layer.eval()(x), plain.eval()(x))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(r=0), "r"),
        (dict(r=1.5), "r"),
        (dict(r=True), "r"),
        (dict(alpha=0), "alpha"),
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(alpha=float("inf")), "alpha"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(dropout=float("nan")), "dropout"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, field):
    settings = {"r": 2, "alpha": 4, "dropout": 0.0, **kwargs}
    with pytest.raises(ValueError, match=f"^{field}:"):
        LoRALinear(nn.Linear(4, 4), **settings)
    with pytest.raises(ValueError, match=f"^{field}:"):
        inject_lora(llama(), **settings)


# --- injection ------------------------------------------------------------------------------------


def test_only_adapters_train_and_counts_are_right():
    model = llama()
    total_before = sum(p.numel() for p in model.parameters())
    r = 3
    names = inject_lora(model, r=r, alpha=6)
    assert names == sorted(names)
    assert names[:2] == ["blocks.0.attn.k_proj", "blocks.0.attn.o_proj"]
    assert all(
        p.requires_grad == (n.endswith(("lora_A", "lora_B"))) for n, p in model.named_parameters()
    )
    # Widths: C=32, q and o 32 -> 32, k and v 32 -> 16 (K=2 heads of D=8), gate/up 32 -> 128, down 128 -> 32.
    per_block = r * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + 2 * (32 + 128) + (128 + 32))
    counts = count_parameters(model)
    assert counts == {
        "trainable": 2 * per_block,
        "total": total_before + 2 * per_block,
        "adapter": 2 * per_block,
    }
    assert len(lora_parameters(model)) == 2 * 7 * 2


def test_targets_rule_exact_suffix_at_dots():
    model = llama()
    assert inject_lora(model, r=1, alpha=1, targets=["blocks.1.attn.q_proj"]) == [
        "blocks.1.attn.q_proj"
    ]
    with pytest.raises(ValueError, match="^targets:.*no nn.Linear"):
        inject_lora(llama(), r=1, alpha=1, targets=["proj"])
    with pytest.raises(ValueError, match="^targets:"):
        inject_lora(llama(), r=1, alpha=1, targets="q_proj")  # a string, not a list of names
    with pytest.raises(ValueError, match="^targets:"):
        inject_lora(llama(), r=1, alpha=1, targets=[])


def test_refuses_to_inject_twice_or_into_a_tied_head():
    model = llama()
    inject_lora(model, r=2, alpha=2, targets=["q_proj"])
    before = model.state_dict().keys()
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        inject_lora(model, r=2, alpha=2, targets=["q_proj", "v_proj"])
    assert model.state_dict().keys() == before  # v_proj was not adapted either
    inject_lora(model, r=2, alpha=2, targets=["v_proj"])  # another layer is fine
    assert len(lora_layers(model)) == 4
    with pytest.raises(ValueError, match="tied"):
        inject_lora(llama(), r=2, alpha=2, targets=["lm_head"])


def test_merge_lora_gives_back_a_plain_model():
    base = llama()
    model = copy.deepcopy(base)
    inject_lora(model, r=2, alpha=4)
    randomize_b(model)
    x = ids()
    adapted = model(x).logits
    merged = merge_lora(model)
    assert merged is model
    assert not lora_layers(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert model.state_dict().keys() == base.state_dict().keys()
    torch.testing.assert_close(model(x).logits, adapted)
    assert not torch.equal(model(x).logits, base(x).logits)


def test_training_lowers_the_loss_and_leaves_the_base_untouched():
    model = llama()
    inject_lora(model, r=4, alpha=8, seed=0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2, weight_decay=0.0)
    x = ids()
    losses = []
    for _ in range(8):
        loss = loss_of(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert loss_of(model, x).item() < losses[0] - 0.1
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


# --- the adapter file -----------------------------------------------------------------------------


SETTINGS = {"r": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["q_proj", "v_proj", "down_proj"]}


def saved(tmp_path, **extra):
    model = llama()
    inject_lora(model, **SETTINGS, seed=0)
    randomize_b(model)
    path = save_adapters(model, tmp_path / "adapters.safetensors", config={**SETTINGS, **extra})
    return model, path


def test_save_load_round_trip(tmp_path):
    model, path = saved(tmp_path, base="tiny-llama")
    assert path.stat().st_size < 20_000
    fresh = llama()
    config = load_adapters(fresh, path)
    assert config == {**SETTINGS, "base": "tiny-llama"}
    assert sorted(lora_layers(fresh)) == sorted(lora_layers(model))
    ours, theirs = lora_state_dict(fresh), lora_state_dict(model)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = ids()
    assert torch.equal(fresh(x).logits, model(x).logits)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == set(ours)
    # Loading into a model that has the same adapters already overwrites them.
    again = llama()
    inject_lora(again, **SETTINGS, seed=5)
    load_adapters(again, path)
    assert torch.equal(again(x).logits, model(x).logits)


def test_save_refuses_settings_that_do_not_describe_the_model(tmp_path):
    model = llama()
    inject_lora(model, **SETTINGS)
    with pytest.raises(ValueError, match="^config:.*has r, alpha, dropout = 2, 4.0, 0.0"):
        save_adapters(model, tmp_path / "a.safetensors", config={**SETTINGS, "r": 4})
    with pytest.raises(ValueError, match="^config: targets"):
        save_adapters(model, tmp_path / "a.safetensors", config={**SETTINGS, "targets": ["q_proj"]})
    with pytest.raises(ValueError, match="^config:"):
        save_adapters(model, tmp_path / "a.safetensors", config={"r": 2})
    with pytest.raises(ValueError, match="^model:"):
        save_adapters(llama(), tmp_path / "a.safetensors", config=SETTINGS)
    assert not (tmp_path / "a.safetensors").exists()


def test_a_flipped_byte_never_loads_wrong_numbers(tmp_path):
    model, path = saved(tmp_path)
    data = path.read_bytes()
    expected = lora_state_dict(model)
    corrupt = tmp_path / "corrupt.safetensors"
    # The last byte is tensor data: the checksum must catch it.
    corrupt.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    with pytest.raises(ValueError, match="corrupt.safetensors.*sha256"):
        load_adapters(llama(), corrupt)
    # Anywhere else (header, settings, checksum, data): an error naming the file, or the same numbers.
    raised = 0
    for pos in range(0, len(data), max(1, len(data) // 150)):
        corrupt.write_bytes(data[:pos] + bytes([data[pos] ^ 0x10]) + data[pos + 1 :])
        fresh = llama()
        try:
            load_adapters(fresh, corrupt)
        except ValueError as err:
            assert str(corrupt) in str(err)
            assert not lora_layers(fresh)
            raised += 1
            continue
        got = lora_state_dict(fresh)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in got)
    assert raised > 100


def test_the_checksum_covers_the_settings(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save

    _, path = saved(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in meta if meta[k].startswith("{"))
    assert '"alpha": 4.0' in meta[key]
    meta[key] = meta[key].replace('"alpha": 4.0', '"alpha": 8.0')  # same shapes, twice the update
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(save(tensors, metadata=meta))
    with pytest.raises(ValueError, match="edited.safetensors.*sha256"):
        load_adapters(llama(), edited)


def test_a_file_that_does_not_fit_leaves_the_model_untouched(tmp_path):
    _, path = saved(tmp_path)
    wider = llama(n_embd=48)  # every adapter has the wrong width
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ValueError, match="adapters.safetensors.*shape"):
        load_adapters(wider, path)
    assert not lora_layers(wider)
    after = wider.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    assert all(p.requires_grad for p in wider.parameters())  # not frozen either

    other_rank = llama()
    inject_lora(other_rank, r=4, alpha=4.0, targets=SETTINGS["targets"])
    before = {k: v.clone() for k, v in other_rank.state_dict().items()}
    with pytest.raises(ValueError, match="adapters.safetensors.*r=2"):
        load_adapters(other_rank, path)
    after = other_rank.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after)

    fewer = llama()
    inject_lora(fewer, r=2, alpha=4.0, targets=["q_proj"])
    with pytest.raises(ValueError, match="adapters.safetensors.*does not fit"):
        load_adapters(fewer, path)

    with pytest.raises(ValueError, match="missing.safetensors"):
        load_adapters(llama(), tmp_path / "missing.safetensors")
