"""Zoo checkpoints: safetensors weights plus a JSON description, checked before anything is allocated.

The file layer (atomic writes, sha256 checksums, reading the JSON) lives in :mod:`llmbook.storage`
and is re-exported here under its historical names. What this module adds is the check a zoo load
runs first: the shapes in the weights file's header against the model the JSON describes, built on
PyTorch's ``meta`` device, so a JSON that claims a huge model costs nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.storage import (
    CHECKSUMS,
    FORMAT_VERSION,
    META,
    WEIGHTS,
    CheckpointError,
    check_fits,
    load_weights,
    read_header,
    read_meta,
    save_checkpoint,
)

__all__ = [
    "CHECKSUMS",
    "FORMAT_VERSION",
    "META",
    "WEIGHTS",
    "CheckpointError",
    "build_model",
    "check_shapes",
    "load_weights",
    "meta_model",
    "read_meta",
    "save_checkpoint",
]


def build_model(config: ModelConfig, reward: dict | None = None):
    """The model a checkpoint describes: a GPT, or a reward model around one.

    :param config: the (backbone) model config.
    :param reward: for a reward model, its ``{"pooling": ..., "causal": ...}`` (the checkpoint
        JSON's ``"reward"`` entry); None for a language model.
    :returns: a :class:`~llmbook.model.gpt.GPT` or :class:`~llmbook.align.reward_model.RewardModel`.
    """
    if reward is None:
        return GPT(config)
    from llmbook.align.reward_model import RewardModel

    return RewardModel(GPT(config), pooling=reward["pooling"], causal=reward["causal"])


def meta_model(config: ModelConfig, reward: dict | None = None):
    """The model a config describes, on the ``meta`` device: shapes and names, no memory.

    :param config: the model config.
    :param reward: see :func:`build_model`.
    :returns: a model whose tensors have no data.
    """
    with torch.device("meta"):
        return build_model(config, reward)


def check_shapes(directory: str | Path, config: ModelConfig, reward: dict | None = None) -> None:
    """Check a checkpoint's weights header against a config without allocating the model.

    :param directory: the checkpoint directory.
    :param config: the config the weights should fit.
    :param reward: see :func:`build_model`.
    :raises CheckpointError: when the header is unreadable, or a name or shape differs.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    path = Path(directory) / WEIGHTS
    check_fits(read_header(path), meta_model(config, reward), path)
