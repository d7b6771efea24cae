"""What the Hugging Face converters check: settings they cannot carry, and RoPE across transformers 4 and 5.

A converter that drops a setting it does not understand builds a model that computes something else,
silently. So every setting is either converted or refused, with a :class:`ValueError` whose message
starts with the field's name. RoPE needs care of its own: ``transformers`` 5 keeps the base in
``config.rope_parameters["rope_theta"]``, while 4.x reads ``config.rope_theta`` and stores an unknown
``rope_parameters`` argument as an inert attribute (a θ=500000 model then runs with θ=10000). The helpers
here write and read the base the way the installed version does, and check the built model's
frequencies against ours.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from llmbook.model.config import ModelConfig
from llmbook.model.rope import rope_frequencies

MIN_TRANSFORMERS = (4, 46)
"""The oldest ``transformers`` the converters are tested with (4.46.3 and 5.x); 4.40's sliding-window
Mixtral masks padded batches differently, and its Llama has no ``mlp_bias``."""


def transformers_major() -> int:
    """The major version of the installed ``transformers``, refusing one older than ``MIN_TRANSFORMERS``.

    :returns: e.g. ``5`` for 5.24.0.
    :raises RuntimeError: naming ``transformers`` when the installed version is too old.
    """
    import transformers

    found = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
    if found < MIN_TRANSFORMERS:
        need = ".".join(map(str, MIN_TRANSFORMERS))
        raise RuntimeError(
            f"transformers: the converters need transformers>={need}, found {transformers.__version__}"
        )
    return found[0]


def require(config: ModelConfig, target: str, **expected: Any) -> None:
    """Refuse a llmbook config that ``target`` cannot express, naming the first field that differs.

    :param config: the llmbook config being exported.
    :param target: the Hugging Face class, for the message (e.g. ``"LlamaForCausalLM"``).
    :param expected: field name mapped to the only value ``target`` can express.
    :raises ValueError: ``"<field>: <target> needs <value>, got <value>"``.
    """
    for name, value in expected.items():
        got = getattr(config, name)
        if got != value:
            raise ValueError(f"{name}: {target} needs {name}={value!r}, got {got!r}")


def refuse_hf(hf_config, **supported: Any) -> None:
    """Refuse a Hugging Face config whose setting llmbook does not convert, naming the field.

    A field the config does not have counts as its supported value (older ``transformers`` lack some).

    :param hf_config: the Hugging Face config object.
    :param supported: field name mapped to a tuple of the values llmbook converts.
    :raises ValueError: ``"<field>: llmbook supports ..., got <value>"``.
    """
    for name, allowed in supported.items():
        got = getattr(hf_config, name, allowed[0])
        if got not in allowed:
            values = " or ".join(repr(v) for v in allowed)
            raise ValueError(f"{name}: llmbook converts only {values}, got {got!r}")


def rope_kwargs(theta: float) -> dict[str, Any]:
    """The config arguments that set an unscaled RoPE base in the installed ``transformers``.

    :param theta: the base θ.
    :returns: ``{"rope_parameters": {...}}`` for transformers 5, ``{"rope_theta": θ}`` for 4.x.
    """
    if transformers_major() >= 5:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": float(theta)}}
    return {"rope_theta": float(theta), "rope_scaling": None}


def rope_theta_of(hf_config) -> float:
    """The RoPE base a Hugging Face model built from this config uses, refusing scaled RoPE.

    Reads ``rope_parameters`` under transformers 5 and ``rope_theta``/``rope_scaling`` under 4.x: the
    fields each version's modelling code reads, not whichever attribute happens to be present.

    :param hf_config: a Llama or Mixtral config object.
    :returns: θ.
    :raises ValueError: for a ``rope_type`` other than ``"default"`` (linear, dynamic, yarn, llama3, ...) or
        partial rotary embeddings, naming ``rope_parameters`` (5.x) or ``rope_scaling`` (4.x).
    """
    if transformers_major() >= 5:
        field = "rope_parameters"
        params = dict(getattr(hf_config, field, None) or {})
        params.setdefault("rope_theta", getattr(hf_config, "default_theta", 10000.0))
    else:
        field = "rope_scaling"
        params = dict(getattr(hf_config, field, None) or {})
        params["rope_theta"] = getattr(hf_config, "rope_theta", 10000.0)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(
            f"{field}: llmbook implements only unscaled RoPE, got rope_type {rope_type!r}"
        )
    partial = params.get("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", None))
    if partial not in (None, 1, 1.0):
        raise ValueError(
            f"{field}: llmbook rotates the whole head, got partial_rotary_factor {partial}"
        )
    return float(params["rope_theta"])


def check_rope_config(hf_config, config: ModelConfig) -> None:
    """Check that a freshly built Hugging Face config carries our RoPE base.

    :param hf_config: the Llama or Mixtral config just built.
    :param config: the llmbook config it was built from.
    :raises ValueError: naming ``rope_theta`` when the installed ``transformers`` ignored the base.
    """
    built = rope_theta_of(hf_config)
    if built != float(config.rope_theta):
        raise ValueError(
            f"rope_theta: transformers {transformers_major()}.x built a config with θ={built}, "
            f"expected {config.rope_theta}"
        )


def check_rotary(hf_model, config: ModelConfig) -> None:
    """Check the rotary frequencies of a built Llama or Mixtral model against llmbook's.

    This reads what the model will compute with (every rotary module's ``inv_freq`` and scaling: one
    per model in transformers 5, one per attention layer in some 4.x models), so it holds whatever the
    config fields are called in the installed version.

    :param hf_model: a ``LlamaForCausalLM`` or ``MixtralForCausalLM``.
    :param config: the llmbook config.
    :raises ValueError: naming ``rope_theta`` when the frequencies differ or cannot be found.
    """
    ours = rope_frequencies(config.head_dim, config.rope_theta)
    rotaries = [
        m for m in hf_model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)
    ]
    if not rotaries:
        raise ValueError("rope_theta: the transformers model has no rotary frequencies to check")
    for rotary in rotaries:
        theirs = rotary.inv_freq.detach().double().cpu()
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
        if (
            theirs.shape != ours.shape
            or not torch.allclose(theirs, ours, rtol=1e-5, atol=0)
            or scaling != 1.0
        ):
            raise ValueError(
                f"rope_theta: the transformers model's rotary frequencies are not those of "
                f"θ={config.rope_theta} (head width {config.head_dim})"
            )
