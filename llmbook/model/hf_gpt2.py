"""GPT-2 <-> llmbook: configs and weights (used by :mod:`llmbook.model.hf`).

GPT-2's fused ``c_attn`` projection is split into ``q_proj``, ``k_proj`` and ``v_proj``, and its
``Conv1D`` weights are transposed (``Conv1D`` stores ``(in, out)`` where :class:`torch.nn.Linear` stores
``(out, in)``).
"""

from __future__ import annotations

import torch

from llmbook.model.config import ModelConfig
from llmbook.model.hf_support import refuse_hf, require

_DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


def gpt2_config_from_hf(hf_config) -> ModelConfig:
    """The llmbook config of a ``GPT2Config``, refusing what llmbook would compute differently.

    GPT-2 has three dropout rates (residual branches, embeddings, attention weights) where llmbook has
    one ``dropout`` for all three places: equal rates become ``dropout``, different ones are refused.
    ``reorder_and_upcast_attn`` only changes the rounding of the scores in half precision (llmbook
    already takes the softmax in float32), so it is accepted.

    :param hf_config: a ``GPT2Config``.
    :returns: the config.
    :raises ValueError: naming the field, for a setting llmbook does not implement: another activation,
        unscaled or layer-scaled attention, cross-attention, or different dropout rates.
    """
    refuse_hf(
        hf_config,
        activation_function=("gelu_new", "gelu_pytorch_tanh"),
        scale_attn_weights=(True,),
        scale_attn_by_inverse_layer_idx=(False,),
        add_cross_attention=(False,),
    )
    rates = {name: float(getattr(hf_config, name)) for name in _DROPOUTS}
    for name, rate in rates.items():
        if rate != rates["resid_pdrop"]:
            raise ValueError(
                f"{name}: llmbook has one dropout rate for residual branches, embeddings and "
                f"attention; got {', '.join(f'{k}={v}' for k, v in rates.items())}"
            )
    return ModelConfig(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        mlp_hidden=hf_config.n_inner,
        dropout=rates["resid_pdrop"],
        norm_eps=hf_config.layer_norm_epsilon,
        init_std=hf_config.initializer_range,
        bias=True,
        tie_weights=bool(getattr(hf_config, "tie_word_embeddings", True)),
    )


def gpt2_hf_config(config: ModelConfig):
    """The ``GPT2Config`` of a GPT-2-style llmbook config, refusing what GPT-2 cannot express.

    :param config: learned positions, LayerNorm with biases, a GELU MLP, full multi-head attention, no
        window, residual connections.
    :returns: the ``GPT2Config``.
    :raises ValueError: naming the first field GPT-2 cannot express.
    """
    from transformers import GPT2Config

    if config.kv_heads != config.n_head:
        raise ValueError(
            f"n_kv_head: GPT2LMHeadModel has a key/value head per query head ({config.n_head}), "
            f"got {config.n_kv_head}"
        )
    require(
        config,
        "GPT2LMHeadModel",
        pos_embedding="learned",
        norm="layernorm",
        mlp="gelu",
        bias=True,
        sliding_window=None,
        residual=True,
        n_expert=0,
    )
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.hidden_size,
        activation_function="gelu_new",
        layer_norm_epsilon=config.norm_eps,
        initializer_range=config.init_std,
        **{name: config.dropout for name in _DROPOUTS},
        tie_word_embeddings=config.tie_weights,
        # GPT-2's defaults (50256) lie outside small vocabularies; llmbook's specials are its own.
        bos_token_id=None,
        eos_token_id=None,
    )


def gpt2_to_llmbook(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename and reshape a ``GPT2LMHeadModel`` state dict into llmbook's names.

    :param sd: the GPT-2 state dict.
    :param config: the llmbook config (uses ``n_embd``, ``n_layer``).
    :returns: llmbook's state dict (with ``lm_head.weight`` even when tied).
    """
    C = config.n_embd
    out = {
        "tok_emb.weight": sd["transformer.wte.weight"],
        "pos_emb.weight": sd["transformer.wpe.weight"],
        "norm_f.weight": sd["transformer.ln_f.weight"],
        "norm_f.bias": sd["transformer.ln_f.bias"],
    }
    for i in range(config.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        w, bias = sd[h + "attn.c_attn.weight"], sd[h + "attn.c_attn.bias"]  # (C, 3C), (3C,)
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[b + f"attn.{name}.weight"] = w[:, j * C : (j + 1) * C].t()
            out[b + f"attn.{name}.bias"] = bias[j * C : (j + 1) * C]
        for ours, theirs in (
            ("attn.o_proj", "attn.c_proj"),
            ("mlp.up_proj", "mlp.c_fc"),
            ("mlp.down_proj", "mlp.c_proj"),
        ):
            out[b + f"{ours}.weight"] = sd[h + f"{theirs}.weight"].t()
            out[b + f"{ours}.bias"] = sd[h + f"{theirs}.bias"]
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[b + f"{ours}.weight"] = sd[h + f"{theirs}.weight"]
            out[b + f"{ours}.bias"] = sd[h + f"{theirs}.bias"]
    out["lm_head.weight"] = sd.get("lm_head.weight", sd["transformer.wte.weight"])
    return out


def gpt2_from_llmbook(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of :func:`gpt2_to_llmbook`.

    :param sd: llmbook's state dict.
    :param config: the llmbook config (uses ``n_layer``).
    :returns: tensors keyed as ``GPT2LMHeadModel`` expects them.
    """
    out = {
        "transformer.wte.weight": sd["tok_emb.weight"],
        "transformer.wpe.weight": sd["pos_emb.weight"],
        "transformer.ln_f.weight": sd["norm_f.weight"],
        "transformer.ln_f.bias": sd["norm_f.bias"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    for i in range(config.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        qkv = [b + f"attn.{n}" for n in ("q_proj", "k_proj", "v_proj")]
        out[h + "attn.c_attn.weight"] = torch.cat([sd[n + ".weight"].t() for n in qkv], dim=1)
        out[h + "attn.c_attn.bias"] = torch.cat([sd[n + ".bias"] for n in qkv])
        for ours, theirs in (
            ("attn.o_proj", "attn.c_proj"),
            ("mlp.up_proj", "mlp.c_fc"),
            ("mlp.down_proj", "mlp.c_proj"),
        ):
            out[h + f"{theirs}.weight"] = sd[b + f"{ours}.weight"].t()
            out[h + f"{theirs}.bias"] = sd[b + f"{ours}.bias"]
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[h + f"{theirs}.weight"] = sd[b + f"{ours}.weight"]
            out[h + f"{theirs}.bias"] = sd[b + f"{ours}.bias"]
    return out
