"""Mixture of experts: parity with Mixtral, dispatch against a per-token oracle, losses, hybrids."""

import math

import pytest
import torch

from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.model.mlp import SwiGLU
from llmbook.model.moe import (
    MoE,
    Router,
    expert_capacity,
    load_balancing_loss,
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
    torch.testing.assert_close(layer(x), naive_moe(layer, x), rtol=1e-5, atol=1e-6)
    if capacity_factor == 0.5:
        assert layer.dropped_fraction > 0
    if capacity_factor is None:
        assert layer.dropped_fraction == 0.0
    assert float(layer.last_counts.sum()) == 2 * 9 * 2


def test_gradients_reach_router_and_used_experts():
    torch.manual_seed(0)
    layer = MoE(16, 4, 2, 24, n_shared=1)
    x = torch.randn(2, 8, 16)
    (layer(x).square().mean() + layer.aux_loss + layer.z_loss).backward()
    assert layer.router.weight.grad.abs().sum() > 0
    for e, expert in enumerate(layer.experts):
        if layer.last_counts[e] > 0:
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
    assert all(isinstance(b.mlp, SwiGLU) for b in dense.blocks) and dense.moe_metrics() == {}


def test_aux_losses_join_the_training_loss_only_in_training_mode():
    torch.manual_seed(0)
    model = GPT(moe_config(moe_aux_coef=0.5, moe_z_coef=0.1))
    x = torch.randint(0, 64, (2, 16))
    model.train()
    _, loss_train = model(x, x)
    aux = sum(0.5 * m.aux_loss + 0.1 * m.z_loss for m in model.moe_layers())
    model.eval()
    logits, loss_eval = model(x, x)
    lm = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), x.reshape(-1))
    torch.testing.assert_close(loss_eval, lm)
    torch.testing.assert_close(loss_train, lm + aux, rtol=1e-5, atol=1e-6)
    metrics = model.moe_metrics()
    assert metrics["moe/aux_loss"] >= 4 * 0.99  # four layers, each >= 1 near balance
    assert sum(metrics[f"moe/load/0/{e}"] for e in range(4)) == pytest.approx(1.0)


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
