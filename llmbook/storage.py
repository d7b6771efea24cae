"""Safetensors weights plus a JSON description, written atomically and checked by sha256 on load.

The generic file layer under the zoo (:mod:`llmbook.zoo.checkpoint`) and the training checkpoints
(:mod:`llmbook.train.checkpoint`): both import it, and it imports neither. safetensors stores raw
tensors and a JSON header but no checksum, so the JSON beside it records the sha256 of every tensor
file, and loading refuses a file whose bytes changed. Loading never unpickles code.

Temporary files and directories carry their owner (``pid<PID>@<host>``) in their name, so a cleanup
removes only those whose owner process is gone, never a live run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

WEIGHTS = "model.safetensors"
META = "checkpoint.json"
FORMAT_VERSION = 2
"""Format 2 added the ``sha256`` table of tensor files; format 1 checkpoints are refused."""
CHECKSUMS = "sha256"
"""The JSON field mapping each tensor file's name to its sha256."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, or does not fit the model it is loaded into.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used and was moved aside (never deleted); the message says why.

    Introduced in {doc}`/book/part4/08-checkpoint-files`.
    """


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of some bytes.

    :param data: the bytes.
    :returns: 64 hex digits.
    """
    return hashlib.sha256(data).hexdigest()


_STARTED = time.time()


def owner_tag() -> str:
    """This process's tag for temporary names: ``pid<PID>@<host>``.

    :returns: the tag (the host name reduced to letters, digits, ``_`` and ``-``).
    """
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
    return f"pid{os.getpid()}@{host}"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there: assume it is alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to another user
        return True
    return True


def is_stale_temp(path: Path) -> bool:
    """Whether a temporary file or directory was left by a process that is gone.

    Untagged names (written by an older llmbook) count as stale. A tag from another host is never
    judged stale: its process cannot be checked from here. A tagged pid that is alive but started
    after the temporary was written is a reused pid, so the temporary is stale.

    :param path: the temporary path.
    :returns: True when it can be deleted safely.
    """
    match = re.search(r"\.pid(\d+)@([A-Za-z0-9_-]+)\.", path.name)
    if match is None:
        return True
    pid, host = int(match.group(1)), match.group(2)
    if host != owner_tag().split("@", 1)[1]:
        return False
    try:
        written = path.stat().st_mtime
    except OSError:
        return False  # gone already
    if pid == os.getpid():
        return written < _STARTED - 1  # left by an earlier process that had our pid
    if not _pid_alive(pid):
        return True
    try:  # on Linux, /proc/<pid> is created when the process starts
        return Path(f"/proc/{pid}").stat().st_mtime > written + 1
    except OSError:
        return False


def remove_stale_temps(directory: str | Path, pattern: str) -> list[Path]:
    """Delete the temporaries matching ``pattern`` in ``directory`` whose owner is gone.

    :param directory: where to look.
    :param pattern: a glob, e.g. ``".step-*.tmp"``.
    :returns: the paths deleted.
    """
    removed = []
    for path in Path(directory).glob(pattern):
        if not is_stale_temp(path):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, and an atomic rename.

    :param path: the destination.
    :param data: the bytes.
    """
    _atomic_write_bytes(Path(path), data)


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


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise tensors in the safetensors format.

    :param tensors: name to tensor (no two may share memory).
    :returns: the file's bytes.
    """
    from safetensors.torch import save

    return save(tensors, metadata={"format": "pt"})


def tensors_from_bytes(data: bytes, expected_sha256: str | None, where: str | Path):
    """Check a safetensors file's sha256, then parse it (no code runs, unlike a pickle).

    :param data: the file's bytes.
    :param expected_sha256: the checksum recorded in the JSON; None skips the check.
    :param where: the file, for messages.
    :returns: name to tensor.
    :raises CheckpointError: when the checksum differs or the bytes are not a safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    if expected_sha256 is not None and sha256_hex(data) != expected_sha256:
        raise CheckpointError(
            f"{where}: truncated or corrupt weights (sha256 {sha256_hex(data)[:16]}… differs from the "
            f"recorded {str(expected_sha256)[:16]}…)"
        )
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{where}: truncated or corrupt weights ({err})") from err


def read_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes in a safetensors file, read from its header alone (nothing is allocated).

    The file starts with an 8-byte little-endian header length and a JSON header mapping each name
    to its dtype, shape and byte offsets.

    :param path: the safetensors file.
    :returns: name to shape.
    :raises CheckpointError: when the file is missing or its header is unreadable.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or not 0 < n <= min(size - 8, 100_000_000):
                raise CheckpointError(f"{path}: truncated or corrupt weights (bad header length)")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing weights file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt weights header ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: truncated or corrupt weights header (not a JSON object)")
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise CheckpointError(f"{path}: corrupt weights header (no shape for {name!r})")
        shapes[name] = tuple(shape)
    return shapes


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write ``model.safetensors`` and ``checkpoint.json`` into ``directory``, each atomically.

    The weights are written first and the JSON last, so a directory with a readable JSON always has
    complete weights; an interrupted save leaves at most a stray temporary file. The JSON records the
    weights' sha256 (beside any other checksums already in ``meta["sha256"]``).

    :param directory: the checkpoint directory (created if needed).
    :param model: the model whose ``state_dict`` is saved (tied tensors once).
    :param meta: JSON-serialisable description (model config, tokenizer, recipe, metrics...).
    :returns: the directory.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = tensors_to_bytes(_state_for_saving(model))
    _atomic_write_bytes(directory / WEIGHTS, data)
    checksums = {**meta.get(CHECKSUMS, {}), WEIGHTS: sha256_hex(data)}
    body = {**meta, "format_version": FORMAT_VERSION, CHECKSUMS: checksums}
    _atomic_write_bytes(directory / META, json.dumps(body, indent=2, sort_keys=True).encode())
    return directory


def read_meta(directory: str | Path) -> dict:
    """Read and check a checkpoint's JSON.

    :param directory: the checkpoint directory.
    :returns: the metadata dict.
    :raises CheckpointError: when the file is missing, not valid JSON, not a JSON object, or of
        another format version.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    path = Path(directory) / META
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here (missing {META})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({err})") from err
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path}: corrupt checkpoint metadata (a JSON {type(meta).__name__}, not an object)"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unknown checkpoint format {version!r} (this llmbook reads {FORMAT_VERSION})"
        )
    if not isinstance(meta.get(CHECKSUMS), dict):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (no {CHECKSUMS} table)")
    return meta


def recorded_sha256(meta: dict, name: str, directory: str | Path) -> str:
    """The sha256 that a checkpoint's JSON records for one of its files.

    :param meta: the JSON (see :func:`read_meta`).
    :param name: the file name, e.g. ``"model.safetensors"``.
    :param directory: the checkpoint directory, for messages.
    :returns: the hex digest.
    :raises CheckpointError: when none is recorded.
    """
    value = meta.get(CHECKSUMS, {}).get(name) if isinstance(meta.get(CHECKSUMS), dict) else None
    if not isinstance(value, str):
        raise CheckpointError(f"{Path(directory) / META}: no sha256 recorded for {name}")
    return value


def _alias_groups(model: nn.Module) -> list[list[str]]:
    # Tied parameters are one object under several names (on any device, meta included).
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def check_fits(found: dict[str, tuple[int, ...]], model: nn.Module, where: str | Path) -> None:
    """Check saved tensor names and shapes against a model (which may live on the meta device).

    :param found: saved name to shape (tied tensors saved under one of their names).
    :param model: the model, built from the config the checkpoint claims.
    :param where: the weights file, for messages.
    :raises CheckpointError: for a missing or unexpected name, or a shape that differs.
    """
    expected = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
    covered = set()
    for aliases in _alias_groups(model):
        if any(a in found for a in aliases):
            covered.update(aliases)
    missing = sorted(set(expected) - covered)
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: does not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for name, shape in found.items():
        if shape != expected[name]:
            raise CheckpointError(
                f"{where}: {name} has shape {shape}, the model expects {expected[name]} "
                "(a checkpoint of a different model config)"
            )


def load_weights(directory: str | Path, model: nn.Module, meta: dict | None = None) -> None:
    """Load ``model.safetensors`` into ``model`` (strictly: same names, same shapes, same sha256).

    safetensors stores raw tensors and a JSON header; reading it runs no code, unlike ``torch.load`` of
    a pickle. The file's sha256 must match the one its ``checkpoint.json`` records.

    :param directory: the checkpoint directory.
    :param model: the model to fill, built from the same config.
    :param meta: the checkpoint's JSON when already read (default: read it).
    :raises CheckpointError: when the file is missing, truncated or corrupt, or does not fit the model.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    meta = read_meta(directory) if meta is None else meta
    path = Path(directory) / WEIGHTS
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing weights file") from None
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable weights ({err})") from err
    state = tensors_from_bytes(data, recorded_sha256(meta, WEIGHTS, directory), path)
    check_fits({n: tuple(t.shape) for n, t in state.items()}, model, path)
    # Tied tensors were saved once; give every alias of a saved tensor the same data.
    for aliases in _alias_groups(model):
        present = [a for a in aliases if a in state]
        for a in aliases:
            state.setdefault(a, state[present[0]])
    model.load_state_dict(state, strict=True)
