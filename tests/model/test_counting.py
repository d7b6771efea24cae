"""``flops_per_token`` against torch's own FLOP counter, :class:`torch.utils.flop_counter.FlopCounterMode`.

FlopCounterMode counts ``2 m n k`` for every matmul the model runs (``mm``, ``addmm``, ``bmm``) and the
matching matmuls of the backward pass, independently of our formula. Where the two accountings agree
the comparison is exact:

- every weight matmul (attention projections, MLP or experts, router, LM head): 2 FLOPs per weight
  per token forward, 4 backward, so ``6 N`` with N the matmul weights a token passes through;
- attention's two matmuls (``Q K^T`` and the weighted sum of V) on the written-out path
  (``attn_impl="reference"``), which builds the full ``T x T`` score matrix and masks it afterwards,
  exactly the "attention at full T" of Hoffmann et al. that ``flops_per_token`` uses.

The documented difference: the fused path calls ``scaled_dot_product_attention``, whose CPU kernel
has no FLOP formula in torch 2.13, so on the CPU the counter sees 0 for attention there and only the
weight matmuls agree. (A causal flash kernel also skips most masked blocks, so the real work of a
causal model is about half the attention term; both accountings ignore that.)
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llmbook.model.config import ModelConfig
from llmbook.model.counting import flops_per_token
from llmbook.model.gpt import GPT

SHAPE = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
B = 3

CONFIGS = {
    "dense": {},
    "no bias, untied": {"bias": False, "tie_weights": False},
    "gqa, rope, swiglu": {"n_kv_head": 1, "pos_embedding": "rope", "mlp": "swiglu"},
    "window": {"sliding_window": 5, "attn_sinks": 2},
    "moe": {"n_expert": 4, "n_expert_active": 2, "mlp": "swiglu", "expert_hidden": 24},
    "hybrid moe": {
        "n_expert": 4,
        "n_expert_active": 1,
        "router_renormalize": False,
        "moe_every": 2,
        "n_shared_expert": 1,
        "mlp": "swiglu",
    },
}


def counted(model, T, *, backward):
    """FLOPs per token by operator, as torch's counter sees one forward (and backward) pass."""
    torch.manual_seed(1)
    idx = torch.randint(0, model.config.vocab_size, (B, T))
    with FlopCounterMode(display=False) as counter:
        out = model(idx, idx)
        if backward:
            out.loss.backward()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert sum(by_op.values()) == counter.get_total_flops()
    return {op: n / (B * T) for op, n in by_op.items()}


def weight_matmuls(cfg):
    """Matmul weights a token passes through, enumerated from the built model's parameters.

    Independent of the closed formula: every matrix except the embedding tables multiplies the
    activations (the LM head too, tied or not); of an MoE block's E routed experts a token meets k.
    """
    model = GPT(cfg)
    n = 0
    for name, p in model.named_parameters(remove_duplicate=False):  # a tied head counts as a matmul
        if p.dim() != 2 or name.startswith(("tok_emb.", "pos_emb.")):
            continue
        share = cfg.n_expert_active / cfg.n_expert if ".experts." in name else 1
        n += p.numel() * share
    assert n == int(n)
    return int(n)


@pytest.mark.parametrize(
    ("name", "T"), [(name, 16) for name in CONFIGS] + [("dense", 7), ("hybrid moe", 7)]
)
def test_forward_and_backward_match_the_flop_counter_exactly(name, T):
    cfg = ModelConfig(**SHAPE, attn_impl="reference", **CONFIGS[name])
    model = GPT(cfg)
    N = weight_matmuls(cfg)
    L, C = cfg.n_layer, cfg.n_embd
    forward = counted(model, T, backward=False)
    # Weight matmuls are mm/addmm: 2 N per token; attention's two matmuls are bmm: 2 * 2 T C per layer.
    assert forward.get("aten.mm", 0) + forward.get("aten.addmm", 0) == 2 * N
    assert forward["aten.bmm"] == 4 * L * T * C
    training = counted(model, T, backward=True)
    assert training.get("aten.mm", 0) + training.get("aten.addmm", 0) == 6 * N
    assert training["aten.bmm"] == 12 * L * T * C
    assert sum(training.values()) == flops_per_token(cfg, seq_len=T)


def test_moe_counts_active_not_total_parameters():
    cfg = ModelConfig(**SHAPE, attn_impl="reference", **CONFIGS["moe"])
    model = GPT(cfg)
    training = sum(counted(model, 16, backward=True).values())
    assert training == flops_per_token(cfg)
    matrices = sum(
        p.numel()
        for name, p in model.named_parameters(remove_duplicate=False)
        if p.dim() == 2 and not name.startswith(("tok_emb.", "pos_emb."))
    )
    attention = 12 * cfg.n_layer * 16 * cfg.n_embd
    idle_experts = cfg.n_layer * (cfg.n_expert - cfg.n_expert_active)  # per token, over all blocks
    # an expert holds 3 matrices of C x h_e (gate, up, down): 3 * 16 * 24 weights
    assert training == 6 * (matrices - idle_experts * 3 * 16 * 24) + attention


def test_fused_attention_on_cpu_is_invisible_to_the_counter():
    # The documented difference (see the module docstring): the weight matmuls still agree exactly.
    cfg = ModelConfig(**SHAPE, attn_impl="fused")
    training = counted(GPT(cfg), 16, backward=True)
    attention = 12 * cfg.n_layer * 16 * cfg.n_embd
    assert "aten.bmm" not in training
    assert sum(training.values()) in (
        flops_per_token(cfg) - attention,  # torch 2.13: no formula for the CPU SDPA kernel
        flops_per_token(cfg),  # a torch that counts it
    )
