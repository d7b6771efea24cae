"""Converting weights between llmbook's GPT and Hugging Face ``transformers`` models.

llmbook uses Hugging Face's Llama parameter names inside its blocks, so a Llama checkpoint maps one to
one; GPT-2 needs its fused ``c_attn`` projection split and its ``Conv1D`` weights transposed (``Conv1D``
stores ``(in, out)`` where :class:`torch.nn.Linear` stores ``(out, in)``). ``transformers`` is only
imported by the functions that build its models or configs.
"""

from __future__ import annotations

import torch

from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT


def _rope_theta(hf_config) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))


def config_from_hf(hf_config) -> ModelConfig:
    """The llmbook config equivalent to a ``GPT2Config`` or ``LlamaConfig``.

    :param hf_config: a Hugging Face config object (``model_type`` ``"gpt2"`` or ``"llama"``).
    :returns: the :class:`~llmbook.model.config.ModelConfig`.
    :raises ValueError: for a model type or feature llmbook does not implement.

    Introduced in {doc}`/book/part3/03-swiglu`.
    """
    kind = hf_config.model_type
    if kind == "gpt2":
        if hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(
                f"activation_function: llmbook's GPT-2 MLP is tanh-GELU, got {hf_config.activation_function!r}"
            )
        return ModelConfig(
            vocab_size=hf_config.vocab_size,
            block_size=hf_config.n_positions,
            n_layer=hf_config.n_layer,
            n_head=hf_config.n_head,
            n_embd=hf_config.n_embd,
            mlp_hidden=hf_config.n_inner,
            norm_eps=hf_config.layer_norm_epsilon,
            bias=True,
            tie_weights=bool(getattr(hf_config, "tie_word_embeddings", True)),
        )
    if kind == "llama":
        if hf_config.hidden_act != "silu":
            raise ValueError(
                f"hidden_act: llmbook's SwiGLU uses silu, got {hf_config.hidden_act!r}"
            )
        if getattr(hf_config, "attention_bias", False) != getattr(hf_config, "mlp_bias", False):
            raise ValueError("attention_bias: llmbook uses one bias switch for attention and MLP")
        if hf_config.head_dim * hf_config.num_attention_heads != hf_config.hidden_size:
            raise ValueError(
                "head_dim: llmbook needs head_dim * num_attention_heads == hidden_size"
            )
        rope_type = (getattr(hf_config, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(
                f"rope_parameters: only default RoPE is implemented, got {rope_type!r}"
            )
        return ModelConfig.llama_style(
            vocab_size=hf_config.vocab_size,
            block_size=hf_config.max_position_embeddings,
            n_layer=hf_config.num_hidden_layers,
            n_head=hf_config.num_attention_heads,
            n_kv_head=hf_config.num_key_value_heads,
            n_embd=hf_config.hidden_size,
            mlp_hidden=hf_config.intermediate_size,
            norm_eps=hf_config.rms_norm_eps,
            rope_theta=_rope_theta(hf_config),
            bias=bool(getattr(hf_config, "attention_bias", False)),
            tie_weights=bool(getattr(hf_config, "tie_word_embeddings", False)),
        )
    raise ValueError(f"model_type: no converter for {kind!r} (gpt2 and llama are supported)")


def hf_config_from(config: ModelConfig):
    """The ``transformers`` config of the same model (GPT-2 layout or Llama layout).

    :param config: an llmbook config that is either GPT-2-style (learned positions, LayerNorm, GELU) or
        Llama-style (RoPE, RMSNorm, SwiGLU).
    :returns: a ``GPT2Config`` or ``LlamaConfig``.
    :raises ValueError: for a mixture that neither family has.
    """
    from transformers import GPT2Config, LlamaConfig

    if _is_gpt2(config):
        return GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.block_size,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=config.hidden_size,
            activation_function="gelu_new",
            layer_norm_epsilon=config.norm_eps,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=config.tie_weights,
            # GPT-2's defaults (50256) lie outside small vocabularies; llmbook's specials are its own.
            bos_token_id=None,
            eos_token_id=None,
        )
    if _is_llama(config):
        return LlamaConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.n_embd,
            intermediate_size=config.hidden_size,
            num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head,
            num_key_value_heads=config.kv_heads,
            max_position_embeddings=config.block_size,
            rms_norm_eps=config.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
            attention_bias=config.bias,
            mlp_bias=config.bias,
            tie_word_embeddings=config.tie_weights,
            hidden_act="silu",
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
    raise ValueError("config: neither GPT-2-style nor Llama-style; no transformers equivalent")


def _is_gpt2(c: ModelConfig) -> bool:
    return (c.pos_embedding, c.norm, c.mlp, c.bias, c.kv_heads, c.sliding_window, c.n_expert) == (
        "learned",
        "layernorm",
        "gelu",
        True,
        c.n_head,
        None,
        0,
    )


def _is_llama(c: ModelConfig) -> bool:
    return (c.pos_embedding, c.norm, c.mlp, c.sliding_window, c.n_expert) == (
        "rope",
        "rmsnorm",
        "swiglu",
        None,
        0,
    )


def _gpt2_to_llmbook(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
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
        out[b + "attn.o_proj.weight"] = sd[h + "attn.c_proj.weight"].t()
        out[b + "attn.o_proj.bias"] = sd[h + "attn.c_proj.bias"]
        out[b + "mlp.up_proj.weight"] = sd[h + "mlp.c_fc.weight"].t()
        out[b + "mlp.up_proj.bias"] = sd[h + "mlp.c_fc.bias"]
        out[b + "mlp.down_proj.weight"] = sd[h + "mlp.c_proj.weight"].t()
        out[b + "mlp.down_proj.bias"] = sd[h + "mlp.c_proj.bias"]
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[b + f"{ours}.weight"] = sd[h + f"{theirs}.weight"]
            out[b + f"{ours}.bias"] = sd[h + f"{theirs}.bias"]
    out["lm_head.weight"] = sd.get("lm_head.weight", sd["transformer.wte.weight"])
    return out


def _llama_to_llmbook(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    out = {
        "tok_emb.weight": sd["model.embed_tokens.weight"],
        "norm_f.weight": sd["model.norm.weight"],
    }
    for key, value in sd.items():
        if not key.startswith("model.layers."):
            continue
        rest = key[len("model.layers.") :]
        i, name = rest.split(".", 1)
        name = (
            name.replace("self_attn.", "attn.")
            .replace("input_layernorm.", "attn_norm.")
            .replace("post_attention_layernorm.", "mlp_norm.")
        )
        out[f"blocks.{i}.{name}"] = value
    out["lm_head.weight"] = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return out


def from_hf(hf_model) -> GPT:
    """Build an llmbook GPT with the weights of a ``GPT2LMHeadModel`` or ``LlamaForCausalLM``.

    :param hf_model: the Hugging Face model (built from a config or loaded; llmbook never downloads).
    :returns: the llmbook model, in eval mode, computing the same logits.

    Introduced in {doc}`/book/part3/03-swiglu`.
    """
    config = config_from_hf(hf_model.config)
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    mapped = (
        _gpt2_to_llmbook(sd, config)
        if hf_model.config.model_type == "gpt2"
        else _llama_to_llmbook(sd, config)
    )
    model = GPT(config)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [m for m in missing if not (config.tie_weights and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"state dict: missing {missing}, unexpected {unexpected}")
    if config.tie_weights:
        model.lm_head.weight = model.tok_emb.weight
    return model.eval()


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Export an llmbook GPT as a Hugging Face state dict (GPT-2 or Llama names and layouts).

    :param model: a GPT-2-style or Llama-style llmbook model.
    :returns: tensors keyed as ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` expects them.

    Introduced in {doc}`/book/part3/03-swiglu`.
    """
    c = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    if _is_gpt2(c):
        out["transformer.wte.weight"] = sd["tok_emb.weight"]
        out["transformer.wpe.weight"] = sd["pos_emb.weight"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = (
            sd["norm_f.weight"],
            sd["norm_f.bias"],
        )
        for i in range(c.n_layer):
            h, b = f"transformer.h.{i}.", f"blocks.{i}."
            out[h + "attn.c_attn.weight"] = torch.cat(
                [sd[b + f"attn.{n}.weight"].t() for n in ("q_proj", "k_proj", "v_proj")], dim=1
            )
            out[h + "attn.c_attn.bias"] = torch.cat(
                [sd[b + f"attn.{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")]
            )
            out[h + "attn.c_proj.weight"], out[h + "attn.c_proj.bias"] = (
                sd[b + "attn.o_proj.weight"].t(),
                sd[b + "attn.o_proj.bias"],
            )
            out[h + "mlp.c_fc.weight"], out[h + "mlp.c_fc.bias"] = (
                sd[b + "mlp.up_proj.weight"].t(),
                sd[b + "mlp.up_proj.bias"],
            )
            out[h + "mlp.c_proj.weight"], out[h + "mlp.c_proj.bias"] = (
                sd[b + "mlp.down_proj.weight"].t(),
                sd[b + "mlp.down_proj.bias"],
            )
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[h + f"{theirs}.weight"], out[h + f"{theirs}.bias"] = (
                    sd[b + f"{ours}.weight"],
                    sd[b + f"{ours}.bias"],
                )
        out["lm_head.weight"] = sd["lm_head.weight"]
        return out
    if _is_llama(c):
        out["model.embed_tokens.weight"] = sd["tok_emb.weight"]
        out["model.norm.weight"] = sd["norm_f.weight"]
        out["lm_head.weight"] = sd["lm_head.weight"]
        for key, value in sd.items():
            if not key.startswith("blocks."):
                continue
            i, name = key[len("blocks.") :].split(".", 1)
            name = (
                name.replace("attn_norm.", "input_layernorm.")
                .replace("mlp_norm.", "post_attention_layernorm.")
                .replace("attn.", "self_attn.")
            )
            out[f"model.layers.{i}.{name}"] = value
        return out
    raise ValueError("config: neither GPT-2-style nor Llama-style; no transformers equivalent")


def to_hf(model: GPT):
    """A ``transformers`` model (built from a config, never downloaded) with this model's weights.

    :param model: a GPT-2-style or Llama-style llmbook model.
    :returns: a ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` in eval mode.

    Introduced in {doc}`/book/part3/03-swiglu`.
    """
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    hf_config = hf_config_from(model.config)
    cls = GPT2LMHeadModel if hf_config.model_type == "gpt2" else LlamaForCausalLM
    hf = cls(hf_config)
    sd = to_hf_state_dict(model)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    # Buffers (GPT-2's causal "bias" masks, rotary inv_freq) are not weights.
    missing = [
        m for m in missing if not m.endswith((".attn.bias", ".attn.masked_bias", "inv_freq"))
    ]
    if missing or unexpected:
        raise ValueError(f"state dict: missing {missing}, unexpected {unexpected}")
    if model.config.tie_weights:
        hf.tie_weights()
    return hf.eval()
