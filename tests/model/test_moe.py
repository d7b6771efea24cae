"""Mixture of experts: parity with Mixtral, dispatch against a per-token oracle, losses, hybrids."""

import copy
import math

import pytest
import torch

from llmbook.data.batching import random_batch
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.model.mlp import SwiGLU
from llmbook.model.moe import (
    MoE,
    Router,
    expert_capacity,
    load_balancing_loss,
    moe_metrics,
    router_z_loss,
)
from llmbook.train.loop import TrainConfig, train


def mixtral_pair(hidden=32, inter=48, experts=4, k=2, seed=0):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    torch.manual_seed(seed)
    cfg = MixtralConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_local_experts=experts,
        num_experts_per_tok=k,
    )
    hf = MixtralSparseMoeBlock(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    ours = MoE(hidden, experts, k, inter)
    with torch.no_grad():  # HF fuses gate and up projections into one (E, 2I, C) tensor
        ours.router.weight.copy_(hf.gate.weight)
        for e, expert in enumerate(ours.experts):
            expert.gate_proj.weight.copy_(hf.experts.gate_up_proj[e][:inter])
            expert.up_proj.weight.copy_(hf.experts.gate_up_proj[e][inter:])
            expert.down_proj.weight.copy_(hf.experts.down_proj[e])
    return hf, ours


@pytest.mark.parametrize("k", [1, 2, 3])
def test_matches_mixtral_sparse_moe_block(k):
    hf, ours = mixtral_pair(k=k)
    x = torch.randn(3, 11, 32)
    for mode in ("eval", "train"):  # no jitter noise configured: both modes agree
        getattr(hf, mode)()
        getattr(ours, mode)()
        expected = hf(x.clone())
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


def test_balancing_loss_matches_the_mixtral_reference_up_to_its_factor_k():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(0)
    logits = torch.randn(64, 8)
    probs = logits.softmax(-1)
    _, indices = probs.topk(2, dim=-1)
    ours = load_balancing_loss(probs, indices, 8)
    reference = load_balancing_loss_func((logits,), num_experts=8, top_k=2)
    torch.testing.assert_close(2 * ours, reference)


def test_balancing_loss_is_one_when_balanced_and_larger_when_skewed():
    E = 4
    probs = torch.full((8, E), 1 / E)
    indices = torch.arange(8).remainder(E)[:, None]  # each expert twice
    assert float(load_balancing_loss(probs, indices, E)) == pytest.approx(1.0)
    skewed = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(8, 1)
    assert float(load_balancing_loss(skewed, torch.zeros(8, 1).long(), E)) == pytest.approx(4 * 0.7)


def test_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert float(router_z_loss(logits)) == pytest.approx(expected)


def naive_moe(layer, x):
    """Oracle: every token, every chosen expert, one at a time, with GShard's drop order."""
    flat = x.reshape(-1, x.size(-1))
    route = layer.router(flat)
    N, k = route.indices.shape
    cap = (
        math.inf
        if layer.capacity_factor is None
        else expert_capacity(N, layer.n_expert, k, layer.capacity_factor)
    )
    used = [0] * layer.n_expert
    out = torch.zeros_like(flat)
    for slot in range(k):
        for n in range(N):
            e = int(route.indices[n, slot])
            if used[e] < cap:
                used[e] += 1
                out[n] += route.weights[n, slot] * layer.experts[e](flat[n : n + 1])[0]
    for shared in layer.shared:
        out += shared(flat)
    return out.reshape(x.shape)


@pytest.mark.parametrize("capacity_factor", [None, 1.0, 0.5])
@pytest.mark.parametrize("n_shared", [0, 1])
def test_vectorized_dispatch_equals_the_per_token_oracle(capacity_factor, n_shared):
    torch.manual_seed(3)
    layer = MoE(16, 4, 2, 24, n_shared=n_shared, capacity_factor=capacity_factor).eval()
    with torch.no_grad():
        layer.router.weight[0] += 0.5  # skew the router so that capacity binds
    x = torch.randn(2, 9, 16)
    out, stats = layer(x, return_stats=True)
    torch.testing.assert_close(out, naive_moe(layer, x), rtol=1e-5, atol=1e-6)
    assert torch.equal(layer(x), out)  # without stats: the same output alone
    # Independent counts: the router's choices, tallied by bincount, and the oracle's drop rule.
    chosen = layer.router(x.reshape(-1, 16)).indices
    assert torch.equal(stats.counts, torch.bincount(chosen.reshape(-1), minlength=4).float())
    cap = math.inf if capacity_factor is None else expert_capacity(18, 4, 2, capacity_factor)
    kept = sum(min(int(c), cap) for c in stats.counts)
    assert float(stats.dropped) == pytest.approx(1 - kept / 36)
    if capacity_factor == 0.5:
        assert float(stats.dropped) > 0
    if capacity_factor is None:
        assert float(stats.dropped) == 0.0


def test_gradients_reach_router_and_used_experts():
    torch.manual_seed(0)
    layer = MoE(16, 4, 2, 24, n_shared=1)
    x = torch.randn(2, 8, 16)
    y, stats = layer(x, return_stats=True)
    (y.square().mean() + stats.aux_loss + stats.z_loss).backward()
    assert layer.router.weight.grad.abs().sum() > 0
    for e, expert in enumerate(layer.experts):
        if stats.counts[e] > 0:
            assert expert.down_proj.weight.grad.abs().sum() > 0
    assert layer.shared[0].down_proj.weight.grad.abs().sum() > 0


def test_top1_switch_router_without_renormalisation_keeps_raw_probabilities():
    torch.manual_seed(0)
    router = Router(8, 4, 1, renormalize=False)
    out = router(torch.randn(5, 8))
    torch.testing.assert_close(out.weights[:, 0], out.probs.max(-1).values)
    renorm = Router(8, 4, 1)
    assert torch.equal(renorm(torch.randn(5, 8)).weights, torch.ones(5, 1))


def test_router_noise_only_while_training():
    torch.manual_seed(0)
    router = Router(8, 4, 2, noise_std=1.0)
    x = torch.randn(5, 8)
    router.eval()
    assert torch.equal(router(x).logits, router(x).logits)
    router.train()
    assert not torch.equal(router(x).logits, router(x).logits)


def test_balancing_loss_evens_out_a_skewed_router():
    # A toy router that sends almost every token to expert 0 (a constant input feature with a large
    # weight). Training on the balancing loss alone must spread the load; doing nothing keeps it skewed.
    torch.manual_seed(0)
    E, N, C = 4, 512, 16
    x = torch.randn(N, C)
    x[:, 0] = 1.0

    def skewed_router():
        router = Router(C, E, 1)
        with torch.no_grad():
            router.weight[0, 0] = 4.0
        return router

    def max_load(router):
        idx = router(x).indices
        return float(torch.bincount(idx[:, 0], minlength=E).max()) / N

    router = skewed_router()
    before = max_load(router)
    opt = torch.optim.Adam(router.parameters(), lr=0.05)
    for _ in range(200):
        out = router(x)
        loss = load_balancing_loss(out.probs, out.indices, E)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = max_load(router)
    assert before > 0.9
    assert after < 0.4  # 0.25 is perfect balance
    assert float(loss.detach()) < 1.1


def moe_config(**kw):
    base = dict(
        vocab_size=64,
        block_size=16,
        n_layer=4,
        n_head=2,
        n_embd=32,
        mlp="swiglu",
        norm="rmsnorm",
        pos_embedding="rope",
        bias=False,
        n_expert=4,
        n_expert_active=2,
    )
    return ModelConfig(**{**base, **kw})


def test_hybrid_stack_puts_moe_every_other_block_and_shared_experts():
    model = GPT(moe_config(moe_every=2, n_shared_expert=1))
    kinds = [type(b.mlp).__name__ for b in model.blocks]
    assert kinds == ["SwiGLU", "MoE", "SwiGLU", "MoE"]
    assert len(model.moe_layers()) == 2 and len(model.moe_layers()[0].shared) == 1
    dense = GPT(moe_config(n_expert=0))
    assert all(isinstance(b.mlp, SwiGLU) for b in dense.blocks)
    out = dense(torch.randint(0, 64, (1, 5)))
    assert out.moe is None and dense.moe_metrics(out) == {}


def test_aux_losses_join_the_training_loss_only_in_training_mode():
    torch.manual_seed(0)
    model = GPT(moe_config(moe_aux_coef=0.5, moe_z_coef=0.1))
    x = torch.randint(0, 64, (2, 16))
    model.train()
    out = model(x, x)
    assert len(out.moe) == 4
    # Independent regularisers: recompute each layer's router input from the blocks below it.
    h, expected = model.tok_emb(x), []
    cos, sin = model.rope_tables(16, "cpu")
    for block in model.blocks:
        a = block.attn(block.attn_norm(h), rope=(cos[:16], sin[:16], cos[:16], sin[:16]))
        h = h + a
        route = block.mlp.router(block.mlp_norm(h).reshape(-1, 32))
        expected.append(
            0.5 * load_balancing_loss(route.probs, route.indices, 4)
            + 0.1 * router_z_loss(route.logits)
        )
        h = h + block.mlp(block.mlp_norm(h))
    model.eval()
    logits, loss_eval = model(x, x)
    lm = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), x.reshape(-1))
    torch.testing.assert_close(loss_eval, lm)
    torch.testing.assert_close(out.loss, lm + sum(expected), rtol=1e-5, atol=1e-6)
    metrics = model.moe_metrics(out)
    assert metrics["moe/aux_loss"] == pytest.approx(
        sum(float(s.aux_loss.detach()) for s in out.moe)
    )
    assert metrics["moe/aux_loss"] >= 4 * 0.99  # four layers, each >= 1 near balance
    assert sum(metrics[f"moe/load/0/{e}"] for e in range(4)) == pytest.approx(1.0)


def test_stats_come_with_each_call_and_nothing_is_stored_on_the_layer():
    torch.manual_seed(0)
    model = GPT(moe_config(n_layer=2, capacity_factor=1.0)).eval()
    x1, x2 = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (3, 16))
    layer = model.moe_layers()[0]
    state = dict(vars(layer))
    out1 = model(x1)  # a fresh model: its first call already gives finite statistics
    assert dict(vars(layer)) == state  # forward wrote nothing on the module
    first = model.moe_metrics(out1)
    assert first and all(math.isfinite(v) for v in first.values())
    out2 = model(x2)
    # The first call's statistics still describe the first call, not the latest one.
    assert model.moe_metrics(out1) == first != model.moe_metrics(out2)
    assert model.moe_metrics(model(x1)) == first
    assert moe_metrics(None) == {} and moe_metrics(()) == {}


def test_stats_follow_the_model_to_float64():
    torch.manual_seed(0)
    model = GPT(moe_config(n_layer=2)).train()
    x = torch.randint(0, 64, (2, 16))
    out32 = model(x, x)
    out64 = model.to(torch.float64)(x, x)
    assert out64.loss.dtype == torch.float64
    for s32, s64 in zip(out32.moe, out64.moe, strict=True):
        assert s64.aux_loss.dtype == s64.z_loss.dtype == torch.float64
        assert s64.aux_loss.requires_grad
        torch.testing.assert_close(s64.aux_loss, s32.aux_loss.double(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s64.z_loss, s32.z_loss.double(), rtol=1e-5, atol=1e-6)
        assert torch.equal(s64.counts, s32.counts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stats_follow_the_model_to_cuda():
    torch.manual_seed(0)
    model = GPT(moe_config(n_layer=2)).eval()
    x = torch.randint(0, 64, (2, 16))
    cpu = model.moe_metrics(model(x))
    out = model.to("cuda")(x.cuda())
    assert all(t.device.type == "cuda" for s in out.moe for t in s)
    gpu = model.moe_metrics(out)
    assert gpu.keys() == cpu.keys()
    for name in cpu:
        assert gpu[name] == pytest.approx(cpu[name], rel=1e-4, abs=1e-6), name


def test_training_loop_records_router_metrics():
    torch.manual_seed(0)
    model = GPT(moe_config(n_layer=2))
    text = torch.randint(0, 64, (3000,))
    history = train(
        model,
        text[:2500],
        text[2500:],
        TrainConfig(max_steps=5, batch_size=4, eval_interval=0),
        progress=False,
    )
    assert len(history.metrics["moe/aux_loss"]) == 5
    assert len(history.metrics["moe/load/1/3"]) == 5
    assert all(0 <= v <= 1 for v in history.metrics["moe/max_load"])


def test_training_loop_metrics_are_the_last_micro_batch_forward():
    # One step in two micro-batches: the recorded metrics are those of the forward pass of the
    # second micro-batch with the weights before the step, recomputed here independently.
    torch.manual_seed(0)
    model = GPT(moe_config(n_layer=2, capacity_factor=1.0))
    before = copy.deepcopy(model).train()
    text = torch.randint(0, 64, (3000,))
    config = TrainConfig(max_steps=1, batch_size=4, grad_accum_steps=2, eval_interval=0, seed=3)
    history = train(model, text[:2500], text[2500:], config, progress=False)
    x, y = random_batch(text[:2500], 4, 16, generator=torch.Generator().manual_seed(3))
    expected = before.moe_metrics(before(x[2:], y[2:]))
    assert history.metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert history.metrics[name] == [pytest.approx(value, rel=1e-6, abs=1e-9)], name
    first_half = before.moe_metrics(before(x[:2], y[:2]))
    assert first_half["moe/aux_loss"] != pytest.approx(expected["moe/aux_loss"])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("n_expert", -1, "n_expert: must be a non-negative integer"),
        ("n_expert_active", 5, r"n_expert_active: must be at most n_expert \(4\)"),
        ("moe_every", 0, "moe_every: must be a positive integer"),
        ("capacity_factor", 0.0, "capacity_factor: must be a positive number or None"),
        ("moe_aux_coef", -0.1, "moe_aux_coef: must be a non-negative number"),
        ("router_renormalize", 1, "router_renormalize: must be True or False"),
    ],
)
def test_bad_moe_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        moe_config(**{field: value})


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(moe_every=2, n_shared_expert=1),
        dict(n_expert=8, n_expert_active=1, router_renormalize=False, expert_hidden=40, bias=True),
    ],
)
def test_parameter_formula_counts_moe_and_active_parameters(overrides):
    from llmbook.model.counting import count_parameters, flops_per_token

    cfg = moe_config(**overrides)
    model = GPT(cfg)
    assert count_parameters(cfg) == model.num_params()
    # active: each MoE block keeps the router and k + shared experts
    expert = sum(p.numel() for p in model.moe_layers()[0].experts[0].parameters())
    idle = sum((m.n_expert - m.top_k) * expert for m in model.moe_layers())
    assert count_parameters(cfg, active=True) == model.num_params() - idle
    # FLOPs: 6 per active matmul weight, so an MoE stack differs from the dense one by the router and
    # the k + shared experts in place of one dense MLP, in each MoE block.
    dense = moe_config(n_expert=0, bias=cfg.bias)
    C, h = cfg.n_embd, cfg.hidden_size
    h_e = cfg.expert_hidden or h
    per_moe_block = C * cfg.n_expert + (cfg.n_expert_active + cfg.n_shared_expert) * 3 * C * h_e
    extra = len(model.moe_layers()) * (per_moe_block - 3 * C * h)
    assert flops_per_token(cfg) - flops_per_token(dense) == 6 * extra


def test_top1_with_renormalised_gates_is_refused():
    with pytest.raises(ValueError, match="router_renormalize: a renormalised top-1 gate"):
        moe_config(n_expert_active=1)
