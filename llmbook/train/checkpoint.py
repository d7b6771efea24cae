"""Training checkpoints that resume bit-exactly: weights, optimizer, RNG states, data position, step.

A checkpoint is a directory ``step-00001234/`` holding

- ``model.safetensors``: the weights (tied tensors once), as in the zoo;
- ``state.safetensors``: every tensor of the optimizer state, the gradient scaler's scale, and the random
  states (torch's global CPU and CUDA generators and the data sampler's generator) as ``uint8`` tensors;
- ``checkpoint.json``: the step, the model and training configs, the history so far, the optimizer's
  hyperparameters and Python's and NumPy's random states.

Nothing is pickled, so loading a checkpoint runs no code, and the JSON records the sha256 of both tensor
files, so flipped bytes are caught on load. The directory is written under a temporary name that
carries the writer's pid and renamed into place, so a crash mid-save leaves the previous checkpoint
intact; a later save deletes only temporaries whose writer is gone, never a live run's. Only the last
``keep_last`` checkpoints are kept. The learning-rate schedule is a pure function of the step (see
:mod:`llmbook.train.schedule`), so the step is its whole state.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmbook.storage import (
    CHECKSUMS,
    CheckpointError,
    CheckpointWarning,
    load_weights,
    owner_tag,
    read_meta,
    recorded_sha256,
    remove_stale_temps,
    save_checkpoint,
    sha256_hex,
    tensors_from_bytes,
    tensors_to_bytes,
)
from llmbook.train.distributed import any_rank, barrier, world

STATE = "state.safetensors"
PREFIX = "step-"


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint that was written for a different model or training config.

    Introduced in {doc}`/book/part4/08-checkpoint-files`.
    """


@dataclass
class TrainingState:
    """What a loaded checkpoint hands back to the training loop (the rest is restored in place).

    Introduced in {doc}`/book/part4/08-checkpoint-files`.
    """

    step: int
    """Optimizer steps already taken; training continues with this step."""
    history: dict
    """The run's :class:`~llmbook.train.loop.History` so far, as a dict."""
    directory: Path
    """The checkpoint that was loaded."""


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint taken after ``step`` optimizer steps.

    :param step: the step count.
    :returns: e.g. ``"step-00000100"`` (zero-padded, so names sort by step).
    """
    return f"{PREFIX}{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """The checkpoints under ``root``, oldest first (temporary and moved-aside directories excluded).

    :param root: the run's checkpoint directory.
    :returns: the paths, sorted by step.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        digits = path.name[len(PREFIX) :]
        if path.is_dir() and path.name.startswith(PREFIX) and digits.isdigit():
            found.append((int(digits), path))
    return [path for _, path in sorted(found)]


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    # Split the optimizer's state dict into tensors (for safetensors) and plain data (for JSON).
    state_dict = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": plain}


def _rng_tensors(generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    if generator is not None:
        tensors["rng.data"] = generator.get_state()
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    return tensors


def save_training_state(
    root: str | Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_config: dict,
    train_config: dict,
    history: dict,
    generator: torch.Generator | None = None,
    scaler: torch.amp.GradScaler | None = None,
    keep_last: int = 3,
) -> Path:
    """Write a checkpoint of a training run after ``step`` optimizer steps, atomically.

    :param root: the run's checkpoint directory (created if needed).
    :param step: optimizer steps taken so far.
    :param model: the model (unwrapped, not the DDP wrapper).
    :param optimizer: its optimizer.
    :param model_config: the model config as a dict (checked when resuming).
    :param train_config: the training config as a dict (checked when resuming).
    :param history: the run's history so far, as a dict.
    :param generator: the data sampler's generator: its state is the data position.
    :param scaler: the fp16 gradient scaler, if any.
    :param keep_last: keep this many newest checkpoints and delete older ones (0 keeps all).
    :returns: the checkpoint directory.

    Introduced in {doc}`/book/part4/08-checkpoint-files`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    optim_tensors, optim_plain = _optimizer_tensors(optimizer)
    tensors = {**optim_tensors, **_rng_tensors(generator)}
    py_state, np_state = random.getstate(), np.random.get_state()
    state_bytes = tensors_to_bytes(tensors)
    meta = {
        "kind": "training-state",
        "step": step,
        "model": model_config,
        "train": train_config,
        "history": history,
        "optimizer": optim_plain,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        "rng_numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        CHECKSUMS: {STATE: sha256_hex(state_bytes)},
    }
    # Left by a crash mid-save (never a checkpoint); a live run's temporaries are not touched.
    remove_stale_temps(root, f".{PREFIX}*.tmp")
    tag = owner_tag()
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.{tag}.", suffix=".tmp"))
    try:
        with open(tmp / STATE, "wb") as f:
            f.write(state_bytes)
            f.flush()
            os.fsync(f.fileno())
        save_checkpoint(tmp, model, meta)  # fsynced too; the JSON is written last
        old = None
        if final.exists():  # re-saving a step: move the old copy aside so one always exists
            old = final.with_name(f".{final.name}.old.{tag}.tmp")
            final.rename(old)
        tmp.rename(final)
        _fsync_dir(root)  # make the rename itself durable
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _describe_mismatch(kind: str, saved: dict, current: dict) -> str:
    fields = sorted(set(saved) | set(current))
    diffs = [
        f"{name}: checkpoint {saved.get(name)!r}, now {current.get(name)!r}"
        for name in fields
        if saved.get(name) != current.get(name)
    ]
    return f"a different {kind} config ({'; '.join(diffs)})"


def load_training_state(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_config: dict,
    train_config: dict,
    generator: torch.Generator | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> TrainingState:
    """Restore a checkpoint in place: weights, optimizer, scaler and every random state.

    The configs are compared first: a checkpoint written for a different model or training config
    refuses to load and names the fields that differ.

    :param directory: a checkpoint directory (see :func:`save_training_state`).
    :param model: the model to fill (unwrapped).
    :param optimizer: its optimizer, freshly built.
    :param model_config: the current model config as a dict.
    :param train_config: the current training config as a dict.
    :param generator: the data sampler's generator, to restore.
    :param scaler: the fp16 gradient scaler, to restore.
    :returns: the step and history to continue from.
    :raises CheckpointError: for a missing, corrupt or mismatched checkpoint.

    Introduced in {doc}`/book/part4/08-checkpoint-files`.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    if meta.get("kind") != "training-state":
        raise CheckpointError(f"{directory}: not a training checkpoint (a zoo model?)")
    if meta["model"] != model_config:
        raise CheckpointMismatchError(
            f"{directory}: written for {_describe_mismatch('model', meta['model'], model_config)}"
        )
    if meta["train"] != train_config:
        raise CheckpointMismatchError(
            f"{directory}: written for {_describe_mismatch('training', meta['train'], train_config)}"
        )
    try:
        data = (directory / STATE).read_bytes()
    except FileNotFoundError as err:
        raise CheckpointError(f"{directory / STATE}: missing training state") from err
    except OSError as err:
        raise CheckpointError(f"{directory / STATE}: unreadable ({err})") from err
    tensors = tensors_from_bytes(data, recorded_sha256(meta, STATE, directory), directory / STATE)
    load_weights(directory, model, meta)

    state: dict = {}
    for name, tensor in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    for name, value in meta["optimizer"]["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    try:
        optimizer.load_state_dict(
            {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
        )
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{directory}: optimizer state does not fit ({err})") from err

    if scaler is not None and meta.get("scaler") is not None:
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        names = [f"rng.cuda.{i}" for i in range(torch.cuda.device_count())]
        if all(name in tensors for name in names):
            torch.cuda.set_rng_state_all([tensors[name] for name in names])
    if generator is not None:
        if "rng.data" not in tensors:
            raise CheckpointError(f"{directory}: no data-sampler state saved")
        generator.set_state(tensors["rng.data"])
    version, internal, gauss = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = meta["rng_numpy"]
    np.random.set_state(
        (name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    return TrainingState(step=int(meta["step"]), history=meta["history"], directory=directory)


def load_latest(root: str | Path, **kwargs) -> TrainingState | None:
    """Resume from the newest readable checkpoint under ``root``.

    A corrupt newest checkpoint (flipped bytes caught by its sha256, or a disk that filled up
    mid-write on a system without atomic renames) is reported with a
    :class:`~llmbook.storage.CheckpointWarning` and moved aside to ``<name>.corrupt``, never
    deleted, and the next older one is tried. Under ``torchrun`` the ranks agree on each verdict
    (a checkpoint unreadable on any rank is skipped by all) and rank 0 alone moves it aside while the
    others wait. A checkpoint for a different config is not skipped: that raises.

    :param root: the run's checkpoint directory.
    :param kwargs: passed to :func:`load_training_state`.
    :returns: the restored state, or None when there is no checkpoint.
    :raises CheckpointError: when checkpoints exist but none can be loaded, or one is for another config.

    Introduced in {doc}`/book/part4/08-checkpoint-files`.
    """
    candidates = list_checkpoints(root)
    rank, _ = world()
    errors = []
    for directory in reversed(candidates):
        error = None
        try:
            restored = load_training_state(directory, **kwargs)
        except CheckpointMismatchError:
            raise
        except CheckpointError as err:
            error = str(err)
        if not any_rank(error is not None):
            return restored
        errors.append(error or f"{directory}: unreadable on another rank")
        if rank == 0:
            aside = directory.with_name(directory.name + ".corrupt")
            warnings.warn(
                f"llmbook: {errors[-1]}; moved aside to {aside.name}", CheckpointWarning, 2
            )
            directory.rename(aside)
        barrier()
    if candidates:
        raise CheckpointError(f"{root}: no readable checkpoint ({'; '.join(errors)})")
    return None
