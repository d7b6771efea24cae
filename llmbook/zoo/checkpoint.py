"""Checkpoints as safetensors weights plus a JSON description; loading never unpickles code."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

WEIGHTS = "model.safetensors"
META = "checkpoint.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, or does not fit the model it is loaded into."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _state_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory: keep the first name of each tied tensor only.
    seen: set[int] = set()
    state = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach().cpu().contiguous()
    return state


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write ``model.safetensors`` and ``checkpoint.json`` into ``directory``, each atomically.

    The weights are written first and the JSON last, so a directory with a readable JSON always has
    complete weights; an interrupted save leaves at most a stray temporary file.

    :param directory: the checkpoint directory (created if needed).
    :param model: the model whose ``state_dict`` is saved (tied tensors once).
    :param meta: JSON-serialisable description (model config, tokenizer, recipe, metrics...).
    :returns: the directory.

    Introduced in {doc}`/book/part2/04-training-loop`.
    """
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = _state_for_saving(model)
    _atomic_write_bytes(directory / WEIGHTS, save(state, metadata={"format": "pt"}))
    body = {"format_version": FORMAT_VERSION, **meta}
    _atomic_write_bytes(directory / META, json.dumps(body, indent=2, sort_keys=True).encode())
    return directory


def read_meta(directory: str | Path) -> dict:
    """Read and check a checkpoint's JSON.

    :param directory: the checkpoint directory.
    :returns: the metadata dict.
    :raises CheckpointError: when the file is missing or not valid JSON.
    """
    path = Path(directory) / META
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here (missing {META})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({err})") from err
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format_version')!r}")
    return meta


def load_weights(directory: str | Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` into ``model`` (strictly: same names, same shapes).

    safetensors stores raw tensors and a JSON header; reading it runs no code, unlike ``torch.load`` of
    a pickle.

    :param directory: the checkpoint directory.
    :param model: the model to fill, built from the same config.
    :raises CheckpointError: when the file is missing, truncated or corrupt, or does not fit the model.

    Introduced in {doc}`/book/part2/04-training-loop`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        state = load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt weights ({err})") from err
    expected = model.state_dict()
    # Tied tensors were saved once; give every alias of a saved tensor the same data.
    by_ptr = {}
    for name, tensor in expected.items():
        by_ptr.setdefault(tensor.data_ptr(), []).append(name)
    for aliases in by_ptr.values():
        present = [a for a in aliases if a in state]
        if present:
            for a in aliases:
                state.setdefault(a, state[present[0]])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[name].shape)} (a checkpoint of a different model config)"
            )
    model.load_state_dict(state, strict=True)
