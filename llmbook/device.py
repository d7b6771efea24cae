"""Which device to run on, which dtypes it supports, and a report of the environment."""

from __future__ import annotations

import os
import platform
import sys

import torch

PROBED_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""The dtypes :func:`supported_dtypes` probes, by their short names."""


def default_device() -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU.

    :returns: a :class:`torch.device`.

    Introduced in {doc}`/book/part0/03-environment`.
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[str]:
    """The device names this machine can run on, in the order :func:`default_device` prefers them.

    :returns: ``"cpu"``, then ``"cuda:0"``, ``"cuda:1"``, ... for each visible GPU, then ``"mps"``
        where Apple's Metal backend works.

    Introduced in {doc}`/book/part0/03-environment`.
    """
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def parse_device(name: str | torch.device) -> torch.device:
    """Check a device name against what this machine has, before any work is done on it.

    ``torch.device("cuda")`` succeeds on a machine without a GPU and fails only at the first tensor
    placed there; this fails at once, with a message that lists what is available.

    :param name: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (or a :class:`torch.device`).
    :returns: the :class:`torch.device`.
    :raises ValueError: for a name torch does not know, or a device this machine does not have.

    Introduced in {doc}`/book/part0/03-environment`.
    """
    available = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device: {str(name)!r} is not a device name (available here: {', '.join(available)})"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        index = 0 if device.index is None else device.index
        ok = f"cuda:{index}" in available
    else:
        ok = device.type == "mps" and "mps" in available and device.index in (None, 0)
    if not ok:
        raise ValueError(
            f"device: {str(name)!r} is not available on this machine "
            f"(available here: {', '.join(available)})"
        )
    return device


def _matmul_works(device: torch.device, dtype: torch.dtype) -> bool:
    try:
        a = torch.ones(8, 8, device=device, dtype=dtype)
        out = a @ a
        return bool(torch.isfinite(out.float()).all()) and float(out[0, 0]) == 8.0
    except (RuntimeError, TypeError):
        return False


def supported_dtypes(device: torch.device | str | None = None) -> dict[str, bool]:
    """Probe which floating-point dtypes can run a matmul on ``device``.

    A probe beats a lookup table: support depends on the build, the driver and the hardware.

    :param device: the device to probe (default: :func:`default_device`).
    :returns: short dtype name mapped to whether an 8 x 8 matmul succeeds and is exact.

    Introduced in {doc}`/book/part0/03-environment`.
    """
    device = torch.device(device) if device is not None else default_device()
    return {name: _matmul_works(device, dt) for name, dt in PROBED_DTYPES.items()}


def autocast_dtype(device: torch.device | str | None = None) -> torch.dtype | None:
    """The low-precision dtype mixed-precision training should use on ``device``.

    bfloat16 keeps float32's exponent range, so it needs no loss scaling; it is preferred wherever a
    bf16 matmul works. float16 is the fallback on older CUDA GPUs and then needs a gradient scaler.

    :param device: the device (default: :func:`default_device`).
    :returns: ``torch.bfloat16``, ``torch.float16``, or None when neither works.

    Introduced in {doc}`/book/part0/03-environment`.
    """
    device = torch.device(device) if device is not None else default_device()
    support = supported_dtypes(device)
    if support["bfloat16"]:
        return torch.bfloat16
    if support["float16"] and device.type == "cuda":
        return torch.float16
    return None


def cpu_features() -> list[str]:
    """The CPU's vector and matrix extensions that matter for deep learning (Linux only).

    :returns: the subset of ``avx2``, ``avx512f``, ``avx512_bf16``, ``amx_bf16``, ``amx_tile``, ``neon``
        that ``/proc/cpuinfo`` lists; empty elsewhere.
    """
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "neon", "asimd")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in flags]
    except OSError:
        pass
    return []


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def environment_report(device: torch.device | str | None = None) -> dict[str, object]:
    """A JSON-friendly description of where code is running, for the top of every experiment.

    :param device: the device to describe (default: :func:`default_device`).
    :returns: versions, device name, core and thread counts, supported dtypes and CPU features.

    Introduced in {doc}`/book/part0/03-environment`.
    """
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = "Apple MPS"
    else:
        name = _cpu_model_name() or platform.processor() or platform.machine()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "supported_dtypes": supported_dtypes(device),
        "cpu_features": cpu_features(),
    }
