"""Seeding every random number generator a run touches."""

from __future__ import annotations

import random

import torch


def set_seed(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's (when installed) and PyTorch's global generators.

    :param seed: a non-negative integer.
    :returns: a fresh CPU :class:`torch.Generator` seeded with ``seed``, for code that prefers an
        explicit generator over global state.
    :raises ValueError: when ``seed`` is negative or not an integer.

    Introduced in {doc}`/book/part0/03-environment`.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # NumPy is optional for the package itself
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)
