"""Helpers the chapters share for their figures.

Training curves are noisy from batch to batch; a trailing mean shows the trend without shifting it in
time or shortening it, so a smoothed curve plots against the same steps as the raw one.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def smooth(values: Iterable[float] | np.ndarray | torch.Tensor, window: int = 20) -> np.ndarray:
    """Trailing moving average: point ``i`` is the mean of ``values[max(0, i - window + 1) : i + 1]``.

    The output has the input's length; its first ``window - 1`` points average the values seen so far,
    so the curve starts at the first value instead of being cut (as ``np.convolve(..., "valid")`` would)
    and never looks ahead (a centred mean would use future steps).

    :param values: a sequence of numbers (a list, a 1-D numpy array or a 1-D tensor).
    :param window: how many trailing values to average, at least 1.
    :returns: the smoothed values as a float64 array of the same length.
    :raises ValueError: when ``values`` is not 1-D or holds NaN or inf, or ``window`` is not a positive
        integer.

    Introduced in {doc}`/book/part3/01-rmsnorm`.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {tuple(v.shape)}")
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"values[{i}] is {v[i]}: smoothing needs finite numbers")
    if v.size == 0:
        return v
    sums = np.cumsum(np.insert(v, 0, 0.0))
    end = np.arange(1, v.size + 1)
    start = np.maximum(end - window, 0)
    return (sums[end] - sums[start]) / (end - start)


__all__ = ["smooth"]
