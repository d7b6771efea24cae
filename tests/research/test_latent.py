import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llmbook.data.batching import random_batch
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.research.latent import (
    LatentConfig,
    LatentLM,
    evaluate_patched,
    latent_flops_per_byte,
    patched_batch,
    train_patched,
)
from llmbook.research.patching import next_byte_entropy, patch_ends, patch_fixed, patch_global
from llmbook.train.evaluate import evaluate
from llmbook.train.loop import TrainConfig

TINY = dict(block_size=24, n_embd_local=16, n_head_local=2, n_embd_global=32, n_head_global=2)


def tiny(**overrides):
    torch.manual_seed(0)
    return LatentLM(LatentConfig(**{**TINY, **overrides})).eval()


def random_ends(B, T, p, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, generator=g) < p


@pytest.mark.parametrize(
    "field", ["block_size", "n_embd_local", "n_head_local", "n_layer_encoder", "n_layer_decoder",
              "n_embd_global", "n_head_global", "n_layer_global", "vocab_size", "init_std", "norm_eps"],
)  # fmt: skip
@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "2"])
def test_config_rejects_bad_values_naming_the_field(field, bad):
    if bad == 0 and field in ("init_std", "norm_eps"):
        bad = 0.0
    with pytest.raises(ValueError, match=f"^{field}:"):
        LatentConfig(**{field: bad})


def test_config_checks_head_widths_and_the_kernel():
    with pytest.raises(ValueError, match="^n_embd_local:"):
        LatentConfig(n_embd_local=30, n_head_local=4)  # not divisible
    with pytest.raises(ValueError, match="^n_embd_global:"):
        LatentConfig(n_embd_global=12, n_head_global=4)  # head width 3: odd, no RoPE pairs
    with pytest.raises(ValueError, match="^attn_impl:"):
        LatentConfig(attn_impl="flash")


def naive_forward(model, idx, ends):
    """The model's forward written patch by patch, one row at a time, as an independent reference."""
    out = []
    for x, e in zip(idx, ends):
        T = len(x)
        h = model._stack(model.encoder, model.tok_emb(x[None]), "local")[0]  # (T, Cl)
        bounds, start = [], 0
        for t in range(T):
            if e[t] or t == T - 1:
                bounds.append((start, t + 1))
                start = t + 1
        pooled = torch.stack([h[a:b].mean(0) for a, b in bounds])  # (P, Cl)
        g = model._stack(model.blocks, model.to_global(pooled)[None], "global")[0]
        g = model.from_global(model.global_norm(g))  # (P, Cl)
        cond = []
        for t in range(T):
            complete = [j for j, (a, b) in enumerate(bounds) if b - 1 <= t and e[b - 1]]
            cond.append(g[complete[-1]] if complete else model.start)
        x = model._stack(model.decoder, (h + torch.stack(cond))[None], "local")
        out.append(model.lm_head(model.norm_f(x))[0])
    return torch.stack(out)


def test_forward_equals_a_patch_by_patch_reference():
    model = tiny(n_layer_encoder=2, n_layer_global=1)
    idx = torch.randint(0, 256, (3, 24))
    ends = random_ends(3, 24, 0.3, seed=1)
    ends[0] = False  # one row that is a single unfinished patch
    with torch.no_grad():
        torch.testing.assert_close(model(idx, ends=ends).logits, naive_forward(model, idx, ends))


def test_changing_byte_t_leaves_every_earlier_prediction_unchanged():
    model = tiny()
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 256, (1, 24), generator=g)
    ends = random_ends(1, 24, 0.3, seed=3)
    with torch.no_grad():
        base = model(idx, ends=ends).logits
        for t in range(24):
            changed = idx.clone()
            changed[0, t] = (changed[0, t] + 101) % 256
            # What the change may alter: byte t, and the patch ends from t on (H(x_{t+1}) reads x_t).
            new_ends = ends.clone()
            new_ends[0, t:] = torch.rand(24 - t, generator=g) < 0.5
            logits = model(changed, ends=new_ends).logits
            torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=1e-6)
            assert not torch.allclose(logits[:, t], base[:, t]), "the test can see a change"


def test_causal_with_boundaries_from_an_entropy_model():
    torch.manual_seed(4)
    patcher = GPT(ModelConfig(vocab_size=259, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    model = tiny()
    data = torch.randint(0, 256, (24,))

    # One fixed threshold: a threshold computed from the window itself would read its future bytes.
    theta = float(next_byte_entropy(patcher, data).median())

    def logits_of(stream):
        H = next_byte_entropy(patcher, stream)
        ends = patch_ends(patch_global(H, theta), len(stream))
        return model(stream[None], ends=ends[None]).logits[0], ends

    base, ends = logits_of(data)
    assert 2 < int(ends.sum()) < 24
    with torch.no_grad():
        for t in (1, 7, 15, 23):
            changed = data.clone()
            changed[t] = (changed[t] + 57) % 256
            torch.testing.assert_close(logits_of(changed)[0][:t], base[:t], rtol=0, atol=1e-6)


def test_the_patches_reach_the_predictions():
    model = tiny()
    idx = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        a = model(idx, ends=random_ends(2, 24, 0.25, seed=5)).logits
        b = model(idx, ends=random_ends(2, 24, 0.25, seed=6)).logits
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="^ends:"):
        model(idx, ends=torch.zeros(2, 23, dtype=torch.bool))


@pytest.mark.parametrize("size", [2, 4, 6])
def test_flops_per_byte_match_torchs_counter(size):
    model = tiny(attn_impl="reference")  # written-out attention: its matmuls are counted
    B, T = 2, 24
    idx = torch.randint(0, 256, (B, T))
    ends = patch_ends(patch_fixed(T, size), T)[None].expand(B, T)
    with FlopCounterMode(display=False) as counter:
        model.train()
        model(idx, idx, ends=ends).loss.backward()
    assert counter.get_total_flops() / (B * T) == latent_flops_per_byte(model.config, size)


def test_flops_validation_and_scaling():
    config = LatentConfig(**TINY)
    with pytest.raises(ValueError, match="^mean_patch:"):
        latent_flops_per_byte(config, 0.5)
    with pytest.raises(ValueError, match="^mean_patch:"):
        latent_flops_per_byte(config, float("nan"))
    assert latent_flops_per_byte(config, 8) < latent_flops_per_byte(config, 4)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    model = tiny().train()
    idx = torch.randint(0, 256, (4, 24))
    ends = random_ends(4, 24, 0.3, seed=7)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss0 = model(idx[:, :-1], idx[:, 1:], ends=ends[:, :-1]).loss
    loss0.backward()
    opt.step()
    loss1 = model(idx[:, :-1], idx[:, 1:], ends=ends[:, :-1]).loss
    assert float(loss1.detach()) < float(loss0.detach())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_patched_batch_draws_the_windows_of_random_batch():
    ids = torch.randint(0, 256, (500,))
    ends = torch.rand(500) < 0.3
    x, e, y = patched_batch(ids, ends, 6, 20, generator=torch.Generator().manual_seed(9))
    rx, ry = random_batch(ids, 6, 20, generator=torch.Generator().manual_seed(9))
    assert torch.equal(x, rx) and torch.equal(y, ry)
    starts = [int(torch.nonzero((ids.unfold(0, 20, 1) == row).all(1))[0]) for row in x]
    assert all(torch.equal(e[i], ends[s : s + 20]) for i, s in enumerate(starts))


@pytest.mark.slow  # under a second on an idle CPU; over 10 s when other jobs share the cores
def test_training_lowers_the_loss_and_evaluation_matches_the_book():
    torch.manual_seed(0)
    text = (b"the quick brown fox jumps over the lazy dog. " * 40)[:1500]
    ids = torch.tensor(list(text))
    ends = patch_ends(patch_fixed(len(ids), 3), len(ids))
    config = TrainConfig(max_steps=30, batch_size=8, block_size=24, lr=1e-2, min_lr=1e-3,
                         warmup_steps=3, seed=0)  # fmt: skip
    model = LatentLM(LatentConfig(**TINY))
    history = train_patched(model, ids, ends, config)
    assert sum(history.train_loss[-5:]) / 5 < history.train_loss[0] - 1.0
    assert history.tokens_seen == 30 * 8 * 24
    # For a byte GPT, evaluate_patched is the book's evaluate in bits per byte.
    gpt = GPT(ModelConfig(vocab_size=256, block_size=24, n_layer=1, n_head=2, n_embd=16))
    train_patched(gpt, ids, ends, TrainConfig(**{**config.to_dict(), "max_steps": 5}))
    want = evaluate(gpt, ids[:700], batch_size=7).bits_per_byte
    assert evaluate_patched(gpt, ids[:700], ends[:700], batch_size=7) == pytest.approx(
        want, rel=1e-9
    )
    assert 0 < evaluate_patched(model, ids[:700], ends[:700]) < math.log2(256)
