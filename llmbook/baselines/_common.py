"""What the baseline configs and models share: field checks, the loss, the output type."""

from __future__ import annotations

from dataclasses import asdict, fields

import torch
import torch.nn.functional as F

from llmbook.model.config import check_field_values
from llmbook.model.gpt import GPTOutput


def check_positive(config, names: tuple[str, ...]) -> None:
    """Check every field's type (see :func:`~llmbook.model.config.check_field_values`), then that
    each of ``names`` is a positive integer.

    :param config: a config dataclass instance.
    :param names: the fields that must be >= 1.
    :raises ValueError: a message that starts with the field name.
    """
    check_field_values(type(config), {f.name: getattr(config, f.name) for f in fields(config)})
    for name in names:
        if getattr(config, name) < 1:
            raise ValueError(f"{name}: must be a positive integer, got {getattr(config, name)!r}")


def config_dict(config) -> dict:
    """A config as a JSON-serialisable dict.

    :param config: a config dataclass instance.
    :returns: its fields.
    """
    return asdict(config)


def check_unpadded(attention_mask: torch.Tensor | None, name: str) -> None:
    """Refuse padded rows: these models read every position of a row, padding included.

    :param attention_mask: None, or a bool ``(B, T)`` that is True at real tokens.
    :param name: the model's name, for the message.
    :raises ValueError: when the mask marks any position as padding.
    """
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(
            f"attention_mask: {name} reads every position, so it takes unpadded rows only "
            "(generate one prompt at a time, or prompts of equal length)"
        )


def lm_output(
    logits: torch.Tensor, targets: torch.Tensor | None, ignore_index: int = -100
) -> GPTOutput:
    """Wrap next-token logits, with the mean cross-entropy when targets are given.

    :param logits: ``(B, T, V)``.
    :param targets: ``(B, T)`` ids, already shifted; ``ignore_index`` positions do not count.
    :param ignore_index: the target value left out of the loss.
    :returns: a :class:`~llmbook.model.gpt.GPTOutput`.
    """
    loss = None
    if targets is not None:
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            targets.reshape(-1),
            ignore_index=ignore_index,
        )
    return GPTOutput(logits=logits, loss=loss)
