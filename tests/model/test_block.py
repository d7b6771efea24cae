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
