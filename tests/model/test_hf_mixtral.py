"""The whole mixture-of-experts GPT against ``transformers``' MixtralForCausalLM (built from a config)."""

import pytest
import torch

from llmbook.generate.generation import generate
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.model.hf import config_from_hf, from_hf, to_hf, to_hf_state_dict
from llmbook.model.hf_llama import llama_from_llmbook, llama_to_llmbook
from llmbook.model.hf_support import rope_kwargs

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

V = 97


def hf_mixtral(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        max_position_embeddings=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        bos_token_id=None,
        eos_token_id=None,
        **rope_kwargs(500000.0),
    )
    model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**{**base, **kw})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)  # HF starts gains at 1: random ones are stricter
            elif name.endswith("gate.weight"):
                # Larger router weights make the routing decisive, so that agreeing top-2 choices
                # are a real check and not a near-tie left to rounding.
                p.normal_(std=0.3)
    return model


def padded_batch(T=12, seed=1, vocab=V):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, :7] = 0
    # transformers numbers positions from the first column unless told; llmbook counts real tokens.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@pytest.mark.parametrize("window", [None, 5])
def test_logits_match_mixtral_on_a_padded_batch(window):
    hf = hf_mixtral(sliding_window=window)
    ours = from_hf(hf)
    c = ours.config
    assert (c.n_expert, c.n_expert_active, c.kv_heads, c.sliding_window) == (4, 2, 2, window)
    assert c.rope_theta == 500000.0 and c.expert_hidden == 96
    ids, mask, positions = padded_batch()
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask.bool()).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], theirs[real], atol=1e-4, rtol=1e-4)
    # not a degenerate check: every expert of every layer is chosen for some token
    for block in ours.blocks:
        assert block.mlp.router(torch.randn(64, 64)).indices.unique().numel() == 4


def test_greedy_generations_match_mixtral():
    hf = hf_mixtral(seed=3)
    ours = from_hf(hf)
    prompt = torch.randint(0, V, (1, 6))
    with torch.no_grad():
        theirs = hf.generate(
            prompt,
            max_new_tokens=12,
            min_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
            attention_mask=torch.ones_like(prompt),
        )
    out = generate(ours, [prompt[0].tolist()], max_new_tokens=12, temperature=0)
    assert out.completions[0] == theirs[0, 6:].tolist()


MOE = ModelConfig.llama_style(
    vocab_size=60,
    block_size=32,
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    n_embd=32,
    n_expert=4,
    n_expert_active=2,
    expert_hidden=48,
    rope_theta=5e5,
)


def test_export_moe_model_to_mixtral_and_back():
    torch.manual_seed(2)
    ours = GPT(MOE).eval()
    with torch.no_grad():
        for m in ours.moe_layers():
            m.router.weight.normal_(std=0.3)
    hf = to_hf(ours)
    assert type(hf).__name__ == "MixtralForCausalLM"
    ids, mask, positions = padded_batch(T=10, seed=4, vocab=MOE.vocab_size)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask.bool()).logits
    real = mask.bool()
    torch.testing.assert_close(theirs[real], got[real], atol=1e-4, rtol=1e-4)
    back = from_hf(hf)
    assert back.config.n_expert == 4 and back.config.expert_hidden == 48
    for (name, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("stacked", [True, False])
def test_both_expert_layouts_map_back_exactly(stacked):
    # transformers 5 stacks the experts, 4.x keeps one module per expert: both must invert exactly.
    torch.manual_seed(0)
    ours = GPT(MOE)
    sd = ours.state_dict()
    theirs = llama_from_llmbook(sd, MOE, stacked_experts=stacked)
    key = (
        "model.layers.0.mlp.experts.gate_up_proj"
        if stacked
        else ("model.layers.0.block_sparse_moe.experts.3.w3.weight")
    )
    assert key in theirs
    if stacked:
        assert theirs[key].shape == (4, 2 * 48, 32)
        assert torch.equal(theirs[key][1, :48], sd["blocks.0.mlp.experts.1.gate_proj.weight"])
    back = llama_to_llmbook(theirs, MOE)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_mixtral_config_fields():
    hf_config = transformers.MixtralConfig(
        num_local_experts=6,
        num_experts_per_tok=3,
        router_aux_loss_coef=0.02,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=1,
        intermediate_size=40,
        num_hidden_layers=1,
        max_position_embeddings=128,
        **rope_kwargs(1e6),
    )
    c = config_from_hf(hf_config)
    assert (c.n_expert, c.n_expert_active, c.n_kv_head, c.expert_hidden) == (6, 3, 1, 40)
    assert (c.moe_every, c.n_shared_expert, c.capacity_factor, c.router_renormalize) == (
        1,
        0,
        None,
        True,
    )
    # Mixtral's per-layer balancing loss is k times llmbook's; it has no z-loss.
    assert c.moe_aux_coef == pytest.approx(0.06) and c.moe_z_coef == 0.0
    assert set(to_hf_state_dict(GPT(c))) >= {"model.layers.0.self_attn.k_proj.weight"}
