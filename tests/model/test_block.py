import pytest
import torch
from torch import nn

from llmbook.model.block import Block, build_norm
from llmbook.model.config import ModelConfig
from llmbook.model.norm import LayerNorm


def test_pre_norm_residual_formula():
    cfg = ModelConfig(n_embd=16, n_head=2)
    block = Block(cfg).eval()
    x = torch.randn(2, 5, 16)
    h = x + block.attn(block.attn_norm(x))
    expected = h + block.mlp(block.mlp_norm(h))
    torch.testing.assert_close(block(x), expected)


def test_ablation_switches():
    x = torch.randn(1, 4, 16)
    no_res = Block(ModelConfig(n_embd=16, n_head=2, residual=False)).eval()
    h = no_res.attn(no_res.attn_norm(x))
    torch.testing.assert_close(no_res(x), no_res.mlp(no_res.mlp_norm(h)))
    assert isinstance(build_norm(ModelConfig(norm="none")), nn.Identity)
    assert isinstance(build_norm(ModelConfig()), LayerNorm)


@pytest.mark.parametrize("residual", [True, False])
def test_block_is_causal(residual):
    block = Block(ModelConfig(n_embd=16, n_head=2, residual=residual)).eval()
    x = torch.randn(1, 6, 16)
    y = block(x)
    x[:, 5] += 1.0
    torch.testing.assert_close(block(x)[:, :5], y[:, :5])


def test_moe_block_returns_its_stats_when_asked():
    from llmbook.model.moe import MoE, load_balancing_loss

    torch.manual_seed(0)
    cfg = ModelConfig.llama_style(n_embd=16, n_head=2, n_expert=4, n_expert_active=2)
    block = Block(cfg).eval()
    assert isinstance(block.mlp, MoE)
    x = torch.randn(2, 5, 16)
    y, stats = block(x, return_stats=True)
    torch.testing.assert_close(block(x), y)  # the flag changes what is returned, not the output
    h = x + block.attn(block.attn_norm(x))
    route = block.mlp.router(block.mlp_norm(h).reshape(-1, 16))
    torch.testing.assert_close(stats.aux_loss, load_balancing_loss(route.probs, route.indices, 4))
    dense = Block(ModelConfig(n_embd=16, n_head=2)).eval()
    y_dense, none = dense(x, return_stats=True)
    assert none is None and torch.equal(y_dense, dense(x))
