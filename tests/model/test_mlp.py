import torch
import torch.nn.functional as F

from llmbook.model.config import ModelConfig
from llmbook.model.mlp import MLP


def test_matches_the_formula():
    mlp = MLP(ModelConfig(n_embd=16, n_head=4))
    x = torch.randn(2, 5, 16)
    h = F.gelu(x @ mlp.up_proj.weight.T + mlp.up_proj.bias, approximate="tanh")
    expected = h @ mlp.down_proj.weight.T + mlp.down_proj.bias
    torch.testing.assert_close(mlp(x), expected)


def test_is_position_wise():
    mlp = MLP(ModelConfig(n_embd=16, n_head=4))
    x = torch.randn(1, 7, 16)
    per_position = torch.cat([mlp(x[:, t : t + 1]) for t in range(7)], dim=1)
    torch.testing.assert_close(mlp(x), per_position)


def test_parameter_count():
    for bias in (True, False):
        C = 24
        mlp = MLP(ModelConfig(n_embd=C, n_head=4, bias=bias))
        assert sum(p.numel() for p in mlp.parameters()) == 8 * C * C + (5 * C if bias else 0)
