"""Converting models between llmbook's GPT and Hugging Face ``transformers`` (GPT-2, Llama, Mixtral).

Each direction converts every setting or refuses it by name: a llmbook config that the target
architecture cannot express (no residual connections, attention sinks, a capacity limit, ...) and a
Hugging Face config that llmbook would compute differently (scaled RoPE, GPT-2's layer-scaled
attention, ...) raise :class:`ValueError` instead of giving a model with other logits. The family is
chosen by the config: mixture-of-experts configs map to Mixtral, other RoPE configs to Llama, the rest
to GPT-2. ``transformers`` 4.x and 5 are both supported (see :mod:`llmbook.model.hf_support`); it is
only imported by the functions that build its models or configs.
"""

from __future__ import annotations

import torch

from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.model.hf_gpt2 import (
    gpt2_config_from_hf,
    gpt2_from_llmbook,
    gpt2_hf_config,
    gpt2_to_llmbook,
)
from llmbook.model.hf_llama import (
    llama_config_from_hf,
    llama_from_llmbook,
    llama_hf_config,
    llama_to_llmbook,
    mixtral_config_from_hf,
    mixtral_hf_config,
)
from llmbook.model.hf_support import check_rotary, transformers_major

_FROM_HF = {
    "gpt2": gpt2_config_from_hf,
    "llama": llama_config_from_hf,
    "mixtral": mixtral_config_from_hf,
}
_TO_HF = {"gpt2": gpt2_hf_config, "llama": llama_hf_config, "mixtral": mixtral_hf_config}
_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM"}


def hf_family(config: ModelConfig) -> str:
    """The ``transformers`` architecture a llmbook config is exported as.

    :param config: the llmbook config.
    :returns: ``"mixtral"`` with experts, else ``"llama"`` with RoPE, else ``"gpt2"``; whatever else
        the family cannot express is refused by :func:`hf_config_from`.
    """
    if config.n_expert > 0:
        return "mixtral"
    return "llama" if config.pos_embedding == "rope" else "gpt2"


def config_from_hf(hf_config) -> ModelConfig:
    """The llmbook config equivalent to a ``GPT2Config``, ``LlamaConfig`` or ``MixtralConfig``.

    :param hf_config: a Hugging Face config object (``model_type`` ``"gpt2"``, ``"llama"`` or
        ``"mixtral"``).
    :returns: the :class:`~llmbook.model.config.ModelConfig`.
    :raises ValueError: for a model type or setting llmbook does not implement; the message starts
        with the field's name.
    :raises RuntimeError: for a ``transformers`` older than 4.46.

    Introduced in {doc}`/book/part3/03-swiglu`.
    """
    transformers_major()  # refuses a transformers older than the converters support
    kind = hf_config.model_type
    if kind not in _FROM_HF:
        raise ValueError(f"model_type: no converter for {kind!r} (supported: {sorted(_FROM_HF)})")
    return _FROM_HF[kind](hf_config)


def hf_config_from(config: ModelConfig):
    """The ``transformers`` config of the same model (see :func:`hf_family`).

    :param config: a GPT-2-style (learned positions, LayerNorm, GELU), Llama-style (RoPE, RMSNorm,
        SwiGLU) or mixture-of-experts (Mixtral) llmbook config.
    :returns: a ``GPT2Config``, ``LlamaConfig`` or ``MixtralConfig``.
    :raises ValueError: naming the first field the family cannot express.
    :raises RuntimeError: for a ``transformers`` older than 4.46.
    """
    transformers_major()
    return _TO_HF[hf_family(config)](config)


def from_hf(hf_model) -> GPT:
    """Build an llmbook GPT with the weights of a ``GPT2LMHeadModel``, ``LlamaForCausalLM`` or
    ``MixtralForCausalLM``.

    :param hf_model: the Hugging Face model (built from a config or loaded; llmbook never downloads).
    :returns: the llmbook model, in eval mode, computing the same logits.
    :raises ValueError: for a setting llmbook does not implement (see :func:`config_from_hf`), or
        weights that do not fit the config.

    Introduced in {doc}`/book/part3/03-swiglu`.
    """
    config = config_from_hf(hf_model.config)
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    to_ours = gpt2_to_llmbook if hf_model.config.model_type == "gpt2" else llama_to_llmbook
    model = GPT(config)
    missing, unexpected = model.load_state_dict(to_ours(sd, config), strict=False)
    missing = [m for m in missing if not (config.tie_weights and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"state dict: missing {missing}, unexpected {unexpected}")
    if config.tie_weights:
        model.lm_head.weight = model.tok_emb.weight
    return model.eval()


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Export an llmbook GPT as a Hugging Face state dict (GPT-2, Llama or Mixtral names and layouts).

    Mixtral's experts are laid out as the installed ``transformers`` builds them (stacked tensors in 5,
    one module per expert in 4.x).

    :param model: a model whose config :func:`hf_config_from` accepts.
    :returns: tensors keyed as ``GPT2LMHeadModel``, ``LlamaForCausalLM`` or ``MixtralForCausalLM``
        expects them.
    :raises ValueError: naming the first field the family cannot express.

    Introduced in {doc}`/book/part3/03-swiglu`.
    """
    hf_config_from(model.config)  # refuses, by field name, what the family cannot express
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if hf_family(model.config) == "gpt2":
        return gpt2_from_llmbook(sd, model.config)
    return llama_from_llmbook(sd, model.config)


def to_hf(model: GPT):
    """A ``transformers`` model (built from a config, never downloaded) with this model's weights.

    For RoPE models the built model's rotary frequencies are compared with ours, so a ``transformers``
    version that ignores how the base was passed fails here instead of computing other logits.

    :param model: a model whose config :func:`hf_config_from` accepts.
    :returns: a ``GPT2LMHeadModel``, ``LlamaForCausalLM`` or ``MixtralForCausalLM`` in eval mode.
    :raises ValueError: naming the first field the family cannot express, or ``rope_theta`` when the
        built model's rotary frequencies differ from ours.

    Introduced in {doc}`/book/part3/03-swiglu`.
    """
    import transformers

    family = hf_family(model.config)
    hf_config = hf_config_from(model.config)
    hf = getattr(transformers, _CLASSES[family])(hf_config)
    if family != "gpt2":
        check_rotary(hf, model.config)
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    # Buffers (GPT-2's causal "bias" masks, rotary inv_freq) are not weights.
    missing = [
        m for m in missing if not m.endswith((".attn.bias", ".attn.masked_bias", "inv_freq"))
    ]
    if missing or unexpected:
        raise ValueError(f"state dict: missing {missing}, unexpected {unexpected}")
    if model.config.tie_weights:
        hf.tie_weights()
    return hf.eval()
