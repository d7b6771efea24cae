"""The transformer model and its parts, one concept per module.

Introduced in {doc}`/book/part1/09-gpt-model`.
"""

from llmbook.model.attention import (
    CausalSelfAttentionHead,
    MultiHeadAttention,
    attention_reference,
    causal_mask,
    merge_heads,
    scaled_dot_product_attention,
    split_heads,
)
from llmbook.model.block import Block, build_norm
from llmbook.model.config import ModelConfig
from llmbook.model.counting import count_parameters, flops_per_token
from llmbook.model.gpt import GPT, GPTOutput
from llmbook.model.mlp import MLP
from llmbook.model.norm import LayerNorm
from llmbook.model.positional import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEmbedding,
    sinusoidal_rotation,
    sinusoidal_table,
)

__all__ = [
    "GPT",
    "MLP",
    "Block",
    "CausalSelfAttentionHead",
    "GPTOutput",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "ModelConfig",
    "MultiHeadAttention",
    "SinusoidalPositionalEmbedding",
    "attention_reference",
    "build_norm",
    "causal_mask",
    "count_parameters",
    "flops_per_token",
    "merge_heads",
    "scaled_dot_product_attention",
    "sinusoidal_rotation",
    "sinusoidal_table",
    "split_heads",
]
