r"""Entropy patching: cut a byte stream into variable-length patches where a byte model is unsure.

A byte language model gives, for every byte $x_t$, a distribution over it from the bytes before it.
Its entropy

$$H(x_t) = -\sum_{v=0}^{255} p(x_t = v \mid x_{<t}) \log_2 p(x_t = v \mid x_{<t})$$

is small inside a word the model can finish and large where anything could come next. The Byte
Latent Transformer (Pagnoni et al., 2024) starts a new patch at such bytes, with one of two rules:

- **global threshold**: a patch starts at $x_t$ when $H(x_t) > \theta_g$;
- **approximate monotonic**: a patch starts at $x_t$ when $H(x_t) - H(x_{t-1}) > \theta_r$, i.e. where
  the entropy jumps, whatever its level.

Both decide the boundary before $x_t$ is read (the entropy depends on $x_{<t}$ only), which is what
lets a model built on the patches stay causal. Patches are given as the sorted indices where they
start; the first is always 0.

Introduced in {doc}`/book/part10/09-byte-patches`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llmbook.align.ppo_loss import entropy_from_logits

RULES = ("global", "monotonic")
"""The entropy rules :func:`patch_entropy` knows: ``"global"`` and ``"monotonic"``."""

MAX_ENTROPY = 8.0
"""$\\log_2 256$: the entropy given to the first byte, which nothing precedes (a uniform guess)."""


def as_bytes_tensor(data: bytes | str | torch.Tensor) -> torch.Tensor:
    """A 1-D ``torch.long`` tensor of byte values from bytes, a string (UTF-8) or a tensor.

    :param data: the bytes.
    :returns: ``(N,)`` long, values in 0..255.
    :raises ValueError: for a tensor that is not 1-D or holds values outside 0..255.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, (bytes, bytearray)):
        return torch.tensor(list(data), dtype=torch.long)
    t = torch.as_tensor(data, dtype=torch.long)
    if t.dim() != 1:
        raise ValueError(f"data: expected a 1-D byte stream, got shape {tuple(t.shape)}")
    if len(t) and (int(t.min()) < 0 or int(t.max()) > 255):
        raise ValueError("data: byte values must be in 0..255")
    return t


@torch.no_grad()
def next_byte_entropy(
    model: nn.Module,
    data: bytes | str | torch.Tensor,
    *,
    context: int | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """The entropy $H(x_t)$, in bits, of a byte model's prediction of every byte of a stream.

    The model reads windows of its ``block_size`` $W$. Windows start every $W - c$ bytes, where $c$ is
    ``context``, and each window contributes the predictions of the bytes the previous one did not
    reach, so every byte after the first window is predicted from at least $c$ bytes before it. The
    price is $W / (W - c)$ forward passes per byte. Only the 256 byte logits count (special tokens
    are dropped and the rest renormalised); byte 0 gets :data:`MAX_ENTROPY`.

    :param model: a causal byte model called as ``model(x)`` with ``.logits`` ``(B, T, V >= 256)``
        and a ``config.block_size``.
    :param data: the byte stream.
    :param context: the least context of a prediction beyond the first window, in ``[0, W)``; default
        ``W // 2``.
    :param batch_size: windows per forward pass.
    :returns: float32 ``(N,)``; entry ``t`` is the entropy of the prediction of byte ``t``.
    :raises ValueError: for a ``context`` outside ``[0, W)`` or a ``batch_size`` below 1.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    ids = as_bytes_tensor(data)
    W = model.config.block_size
    c = W // 2 if context is None else context
    if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < W:
        raise ValueError(f"context: must be an integer in [0, {W}), got {context!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
    N = len(ids)
    out = torch.full((N,), MAX_ENTROPY)
    if N < 2:
        return out
    stride = W - c
    starts = list(range(0, max(N - 1 - W, 0) + 1, stride))
    if starts[-1] + W < N - 1:  # one more window, flush with the end
        starts.append(N - 1 - W)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    done = 1  # the next byte that has no entropy yet
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        width = min(W, N - 1)
        x = torch.stack([ids[s : s + width] for s in chunk]).to(device)  # (B, W)
        H = entropy_from_logits(model(x).logits[..., :256]) / math.log(
            2
        )  # (B, W): bits, bytes s+1 .. s+W
        for s, h in zip(chunk, H.cpu()):
            first = done - (s + 1)  # skip what an earlier window (with more context) covered
            out[done : s + 1 + width] = h[first:]
            done = s + 1 + width
    model.train(was_training)
    return out


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold: must be a finite number, got {threshold!r}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold: must be a finite number, got {threshold!r}")
    return float(threshold)


def _scores(entropies: torch.Tensor, rule: str) -> torch.Tensor:
    # The quantity each byte t >= 1 compares with the threshold; byte 0 always starts a patch.
    if rule not in RULES:
        raise ValueError(f"rule: must be one of {RULES}, got {rule!r}")
    H = torch.as_tensor(entropies, dtype=torch.float32)
    if H.dim() != 1:
        raise ValueError(f"entropies: expected shape (N,), got {tuple(H.shape)}")
    if torch.isnan(H).any():
        raise ValueError("entropies: contain NaN")
    return H[1:] if rule == "global" else H[1:] - H[:-1]


def patch_entropy(entropies: torch.Tensor, threshold: float, rule: str = "global") -> torch.Tensor:
    r"""Patch starts from next-byte entropies under one of the two rules (see the module docstring).

    :param entropies: ``(N,)`` entropies, e.g. from :func:`next_byte_entropy`.
    :param threshold: $\theta_g$ for ``"global"``, $\theta_r$ for ``"monotonic"`` (same unit as the
        entropies).
    :param rule: ``"global"`` or ``"monotonic"``.
    :returns: the sorted start indices, long ``(P,)``, beginning with 0 (empty for ``N = 0``).
    :raises ValueError: for an unknown rule, a threshold that is not a finite number, or NaN entropies.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    threshold = _check_threshold(threshold)
    scores = _scores(entropies, rule)
    if len(entropies) == 0:
        return torch.zeros(0, dtype=torch.long)
    later = torch.nonzero(scores > threshold).flatten() + 1
    return torch.cat([torch.zeros(1, dtype=torch.long), later])


def patch_global(entropies: torch.Tensor, threshold: float) -> torch.Tensor:
    r"""Global-threshold patching: a patch starts at byte $t$ when $H(x_t) > \theta_g$ (and at 0).

    :param entropies: ``(N,)`` next-byte entropies.
    :param threshold: $\theta_g$.
    :returns: sorted start indices ``(P,)``.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    return patch_entropy(entropies, threshold, "global")


def patch_monotonic(entropies: torch.Tensor, threshold: float) -> torch.Tensor:
    r"""Approximate monotonic patching: a patch starts at byte $t$ when
    $H(x_t) - H(x_{t-1}) > \theta_r$ (and at 0).

    :param entropies: ``(N,)`` next-byte entropies.
    :param threshold: $\theta_r$.
    :returns: sorted start indices ``(P,)``.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    return patch_entropy(entropies, threshold, "monotonic")


def patch_fixed(n: int, size: int) -> torch.Tensor:
    """Fixed-size patching: a patch starts every ``size`` bytes (the last one may be shorter).

    :param n: the stream's length.
    :param size: bytes per patch.
    :returns: ``0, size, 2 size, ...`` below ``n``, long.
    :raises ValueError: for a negative ``n`` or a ``size`` below 1.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: must be a non-negative integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size: must be a positive integer, got {size!r}")
    return torch.arange(0, n, size, dtype=torch.long)


def threshold_for_mean_length(
    entropies: torch.Tensor, mean_length: float, rule: str = "global"
) -> float:
    r"""The threshold that cuts ``entropies`` into patches of (nearly) the given mean length.

    $N$ bytes in patches of mean length $\bar p$ make $P = N / \bar p$ patches: byte 0 and the
    $P - 1$ largest scores. The threshold is the $P$-th largest score, so exactly the $P - 1$ above it
    pass (fewer when scores tie).

    :param entropies: ``(N,)`` next-byte entropies.
    :param mean_length: the wanted mean patch length, at least 1.
    :param rule: ``"global"`` or ``"monotonic"``.
    :returns: the threshold.
    :raises ValueError: for a ``mean_length`` that is not a finite number >= 1, or fewer than 2 bytes.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    scores = _scores(entropies, rule)
    ok = isinstance(mean_length, (int, float)) and not isinstance(mean_length, bool)
    if not ok or not math.isfinite(mean_length) or mean_length < 1:
        raise ValueError(f"mean_length: must be a finite number >= 1, got {mean_length!r}")
    if len(scores) == 0:
        raise ValueError("entropies: need at least 2 bytes")
    n_patches = max(1, min(len(scores) + 1, round((len(scores) + 1) / mean_length)))
    ranked = scores.sort(descending=True).values
    if n_patches == len(scores) + 1:  # every byte its own patch
        return float(ranked[-1]) - 1.0
    return float(ranked[n_patches - 1])


def patch_lengths(starts: torch.Tensor, n: int) -> torch.Tensor:
    """The length of each patch.

    :param starts: sorted start indices beginning with 0.
    :param n: the stream's length.
    :returns: long ``(P,)``, summing to ``n``.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    starts = torch.as_tensor(starts, dtype=torch.long)
    return torch.diff(starts, append=torch.tensor([n]))


def split_patches(data: bytes | str | torch.Tensor, starts: torch.Tensor) -> list[bytes]:
    """Cut a byte stream at the patch starts.

    :param data: the bytes.
    :param starts: sorted start indices beginning with 0.
    :returns: the patches; ``b"".join(...)`` gives ``data`` back.
    :raises ValueError: when the starts are not strictly increasing from 0 and below ``len(data)``.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    raw = bytes(as_bytes_tensor(data).tolist())
    cuts = [int(s) for s in torch.as_tensor(starts).flatten()]
    if raw and (not cuts or cuts[0] != 0):
        raise ValueError("starts: must begin with 0")
    if any(b <= a for a, b in zip(cuts, cuts[1:])) or (cuts and cuts[-1] >= max(len(raw), 1)):
        raise ValueError("starts: must be strictly increasing and below the stream's length")
    return [raw[a:b] for a, b in zip(cuts, cuts[1:] + [len(raw)])]


def patch_ends(starts: torch.Tensor, n: int) -> torch.Tensor:
    """A bool mask over the stream, True at the last byte of each patch (the byte before a start).

    This is the form the latent model reads: whether byte $t$ closes its patch is known once
    $x_{\\le t}$ is, because the next patch's start depends on $H(x_{t+1})$, a function of $x_{\\le t}$.
    The stream's last byte closes the last patch.

    :param starts: sorted start indices beginning with 0.
    :param n: the stream's length.
    :returns: bool ``(n,)``.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    ends = torch.zeros(n, dtype=torch.bool)
    starts = torch.as_tensor(starts, dtype=torch.long)
    ends[starts[starts > 0] - 1] = True
    if n:
        ends[-1] = True
    return ends


@dataclass(frozen=True)
class PatchStats:
    """Summary of how a stream was cut.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """

    n_bytes: int
    """Bytes in the stream."""
    n_patches: int
    """Patches."""
    mean: float
    """Mean patch length, ``n_bytes / n_patches``."""
    median: float
    """Median patch length."""
    std: float
    """Standard deviation of the lengths."""
    max: int
    """Longest patch."""
    single: float
    """Share of patches that are one byte long."""


def patch_stats(starts: torch.Tensor, n: int) -> PatchStats:
    """Length statistics of a patching.

    :param starts: sorted start indices beginning with 0.
    :param n: the stream's length (at least 1).
    :returns: the :class:`PatchStats`.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    lengths = patch_lengths(starts, n).double()
    return PatchStats(
        n_bytes=n,
        n_patches=len(lengths),
        mean=n / len(lengths),
        median=float(lengths.median()),
        std=float(lengths.std(unbiased=False)),
        max=int(lengths.max()),
        single=float((lengths == 1).double().mean()),
    )
