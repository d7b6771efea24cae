"""Llama and Mixtral <-> llmbook: configs and weights (used by :mod:`llmbook.model.hf`).

llmbook's blocks use Llama's projection names, so a Llama layer maps by renaming its containers
(``self_attn`` -> ``attn``, ``input_layernorm`` -> ``attn_norm``, ``post_attention_layernorm`` ->
``mlp_norm``). Mixtral is Llama with a sparse mixture of SwiGLU experts in every block: its router
(``gate``) is llmbook's ``router``, and its experts are stored either one module per expert
(``w1``/``w3``/``w2`` = gate/up/down, ``transformers`` 4.x) or as two stacked tensors
(``gate_up_proj`` ``(E, 2I, C)`` and ``down_proj`` ``(E, C, I)``, ``transformers`` 5).
"""

from __future__ import annotations

from typing import Any

import torch

from llmbook.model.config import ModelConfig
from llmbook.model.hf_support import (
    check_rope_config,
    refuse_hf,
    require,
    rope_kwargs,
    rope_theta_of,
    transformers_major,
)

_TO_HF = {
    "attn": "self_attn",
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
    "mlp": "mlp",
}
_FROM_HF = {v: k for k, v in _TO_HF.items()}
_W = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}  # transformers 4.x expert names


def _decoder_fields(hf_config) -> dict[str, Any]:
    """The fields Llama and Mixtral share, with the checks they share."""
    refuse_hf(hf_config, hidden_act=("silu", "swish"), attention_dropout=(0.0, None))
    heads, width = hf_config.num_attention_heads, hf_config.hidden_size
    head_dim = getattr(hf_config, "head_dim", None) or width // heads
    if head_dim * heads != width:
        raise ValueError(
            f"head_dim: llmbook needs head_dim * num_attention_heads == hidden_size ({width}), "
            f"got {head_dim} * {heads}"
        )
    return dict(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.max_position_embeddings,
        n_layer=hf_config.num_hidden_layers,
        n_head=heads,
        n_kv_head=hf_config.num_key_value_heads,
        n_embd=width,
        norm_eps=hf_config.rms_norm_eps,
        init_std=hf_config.initializer_range,
        rope_theta=rope_theta_of(hf_config),
        tie_weights=bool(getattr(hf_config, "tie_word_embeddings", False)),
    )


def llama_config_from_hf(hf_config) -> ModelConfig:
    """The llmbook config of a ``LlamaConfig``, refusing what llmbook would compute differently.

    :param hf_config: a ``LlamaConfig``.
    :returns: the config (``mlp_hidden`` is ``intermediate_size``).
    :raises ValueError: naming the field: another activation, attention dropout (llmbook's ``dropout``
        would also drop embeddings and residual branches), a head width other than C/H, scaled RoPE,
        or biases on attention but not on the MLP (llmbook has one ``bias`` switch).
    """
    fields = _decoder_fields(hf_config)
    bias = bool(getattr(hf_config, "attention_bias", False))
    if bool(getattr(hf_config, "mlp_bias", False)) != bias:
        raise ValueError(
            f"mlp_bias: llmbook has one bias switch, so mlp_bias must equal attention_bias ({bias})"
        )
    return ModelConfig.llama_style(**fields, mlp_hidden=hf_config.intermediate_size, bias=bias)


def mixtral_config_from_hf(hf_config) -> ModelConfig:
    """The llmbook config of a ``MixtralConfig``.

    Mixtral has no z-loss, so ``moe_z_coef`` is 0; its per-layer load-balancing loss is ``k`` times
    llmbook's (see :func:`~llmbook.model.moe.load_balancing_loss`), so ``moe_aux_coef`` is
    ``router_aux_loss_coef * k``. Neither changes the model's output.

    :param hf_config: a ``MixtralConfig``.
    :returns: the config (``expert_hidden`` is ``intermediate_size``).
    :raises ValueError: naming the field: what :func:`llama_config_from_hf` refuses, router jitter
        noise (llmbook's ``router_noise`` is another kind), or top-1 routing (Mixtral renormalises the
        single gate to 1; llmbook refuses ``router_renormalize`` with one expert).
    """
    fields = _decoder_fields(hf_config)
    refuse_hf(hf_config, router_jitter_noise=(0.0,))
    k = hf_config.num_experts_per_tok
    if k < 2:
        raise ValueError(
            f"num_experts_per_tok: Mixtral's renormalised top-1 gate is always 1, which llmbook "
            f"refuses (router_renormalize); got {k}"
        )
    return ModelConfig.llama_style(
        **fields,
        n_expert=hf_config.num_local_experts,
        n_expert_active=k,
        expert_hidden=hf_config.intermediate_size,
        sliding_window=getattr(hf_config, "sliding_window", None),
        moe_aux_coef=float(hf_config.router_aux_loss_coef) * k,
        moe_z_coef=0.0,
    )


def _decoder_kwargs(config: ModelConfig) -> dict[str, Any]:
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps,
        initializer_range=config.init_std,
        tie_word_embeddings=config.tie_weights,
        hidden_act="silu",
        attention_dropout=0.0,
        **rope_kwargs(config.rope_theta),
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


_DECODER = dict(pos_embedding="rope", norm="rmsnorm", residual=True, dropout=0.0)
"""What both exports need: Llama and Mixtral have no embedding or residual dropout."""


def llama_hf_config(config: ModelConfig):
    """The ``LlamaConfig`` of a Llama-style llmbook config, refusing what Llama cannot express.

    :param config: RoPE, RMSNorm, SwiGLU, residual connections, no window, no dropout.
    :returns: the ``LlamaConfig`` (RoPE base set for the installed ``transformers`` and checked).
    :raises ValueError: naming the first field Llama cannot express.
    """
    from transformers import LlamaConfig

    require(config, "LlamaForCausalLM", **_DECODER, mlp="swiglu", sliding_window=None, n_expert=0)
    hf_config = LlamaConfig(
        **_decoder_kwargs(config),
        intermediate_size=config.hidden_size,
        attention_bias=config.bias,
        mlp_bias=config.bias,
    )
    check_rope_config(hf_config, config)
    return hf_config


def mixtral_hf_config(config: ModelConfig):
    """The ``MixtralConfig`` of a llmbook mixture-of-experts config, refusing what Mixtral cannot express.

    The load-balancing coefficient becomes ``router_aux_loss_coef = moe_aux_coef / k`` (see
    :func:`mixtral_config_from_hf`); the z-loss has no Mixtral counterpart and, being a training
    loss only, is not carried.

    :param config: as for Llama, plus: every block MoE, no shared experts, no capacity limit, no
        router noise, renormalised gates, no biases; a sliding window is allowed, sinks are not.
    :returns: the ``MixtralConfig``.
    :raises ValueError: naming the first field Mixtral cannot express.
    """
    from transformers import MixtralConfig

    require(
        config,
        "MixtralForCausalLM",
        **_DECODER,
        bias=False,
        attn_sinks=0,
        moe_every=1,
        n_shared_expert=0,
        capacity_factor=None,
        router_noise=0.0,
        router_renormalize=True,
    )
    k = config.n_expert_active
    hf_config = MixtralConfig(
        **_decoder_kwargs(config),
        intermediate_size=config.expert_hidden or config.hidden_size,
        sliding_window=config.sliding_window,
        num_local_experts=config.n_expert,
        num_experts_per_tok=k,
        router_jitter_noise=0.0,
        router_aux_loss_coef=config.moe_aux_coef / k,
        output_router_logits=False,
    )
    check_rope_config(hf_config, config)
    return hf_config


def llama_to_llmbook(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename a ``LlamaForCausalLM`` or ``MixtralForCausalLM`` state dict into llmbook's names.

    :param sd: the Hugging Face state dict (either Mixtral expert layout).
    :param config: the llmbook config (unused keys are tolerated; the caller loads strictly).
    :returns: llmbook's state dict (with ``lm_head.weight`` even when tied).
    """
    out = {
        "tok_emb.weight": sd["model.embed_tokens.weight"],
        "norm_f.weight": sd["model.norm.weight"],
    }
    for key, value in sd.items():
        if not key.startswith("model.layers."):
            continue
        i, part, name = key[len("model.layers.") :].split(".", 2)
        b = f"blocks.{i}."
        if part == "block_sparse_moe":  # transformers 4.x Mixtral
            if name == "gate.weight":
                out[b + "mlp.router.weight"] = value
            else:  # experts.<e>.w<n>.weight
                _, e, w, _ = name.split(".")
                out[b + f"mlp.experts.{e}.{_W[w]}.weight"] = value
        elif part == "mlp" and name == "gate.weight":
            out[b + "mlp.router.weight"] = value
        elif part == "mlp" and name == "experts.gate_up_proj":  # (E, 2I, C)
            gate, up = value.chunk(2, dim=1)  # (E, I, C) each: gate first, as Mixtral splits it
            for e in range(value.size(0)):
                out[b + f"mlp.experts.{e}.gate_proj.weight"] = gate[e]
                out[b + f"mlp.experts.{e}.up_proj.weight"] = up[e]
        elif part == "mlp" and name == "experts.down_proj":  # (E, C, I)
            for e in range(value.size(0)):
                out[b + f"mlp.experts.{e}.down_proj.weight"] = value[e]
        else:
            out[b + f"{_FROM_HF[part]}.{name}"] = value
    out["lm_head.weight"] = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return out


def llama_from_llmbook(
    sd: dict[str, torch.Tensor], config: ModelConfig, *, stacked_experts: bool | None = None
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`llama_to_llmbook`.

    :param sd: llmbook's state dict.
    :param config: the llmbook config (uses ``n_expert``).
    :param stacked_experts: Mixtral experts as ``transformers`` 5's stacked tensors (True) or 4.x's
        per-expert modules (False); None: as the installed ``transformers`` builds them.
    :returns: tensors keyed as ``LlamaForCausalLM`` or ``MixtralForCausalLM`` expects them.
    """
    if stacked_experts is None:
        stacked_experts = transformers_major() >= 5
    moe = "mlp" if stacked_experts else "block_sparse_moe"
    out = {
        "model.embed_tokens.weight": sd["tok_emb.weight"],
        "model.norm.weight": sd["norm_f.weight"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}  # layer -> expert -> proj -> weight
    for key, value in sd.items():
        if not key.startswith("blocks."):
            continue
        i, part, name = key[len("blocks.") :].split(".", 2)
        h = f"model.layers.{i}."
        if part == "mlp" and name == "router.weight":
            out[h + f"{moe}.gate.weight"] = value
        elif part == "mlp" and name.startswith("experts."):
            _, e, proj, _ = name.split(".")
            experts.setdefault(i, {}).setdefault(int(e), {})[proj] = value
        else:
            out[h + f"{_TO_HF[part]}.{name}"] = value
    for i, by_expert in experts.items():
        h = f"model.layers.{i}.{moe}.experts."
        ws = [by_expert[e] for e in range(config.n_expert)]
        if stacked_experts:
            out[h + "gate_up_proj"] = torch.stack(
                [torch.cat([w["gate_proj"], w["up_proj"]]) for w in ws]
            )  # (E, 2I, C)
            out[h + "down_proj"] = torch.stack([w["down_proj"] for w in ws])  # (E, C, I)
        else:
            for e, w in enumerate(ws):
                for theirs, ours in _W.items():
                    out[h + f"{e}.{theirs}.weight"] = w[ours]
    return out
