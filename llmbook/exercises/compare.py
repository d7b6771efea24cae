"""Comparing a reader's output with the package's, and describing both in a few words.

The rules are those of ``torch.testing.assert_close``, applied recursively: tensors must agree in
shape and dtype, and in value within ``rtol``/``atol`` for floating dtypes (exactly for integers and
bools; NaN matches NaN, an infinity only the same infinity); tuples and lists item by item; dicts
key by key (the reader may return extra keys); Python floats within the same tolerances; ints,
bools, strings and ``None`` exactly. The first difference found is returned as a :class:`Difference`
that says where it is and shows the expected and the actual value, so that a report can name it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}
"""``(rtol, atol)`` per floating dtype: the defaults of ``torch.testing.assert_close``."""


@dataclass(frozen=True)
class Difference:
    """The first place where a reader's output differs from the expected one.

    :param where: the path to the differing part, e.g. ``"metrics['accuracy']"``.
    :param expected: a short summary of the expected value.
    :param got: a short summary of the reader's value.
    :param detail: what exactly differs (the worst element of a tensor, a missing key, ...).

    Introduced in {doc}`/book/part0/02-preferences`.
    """

    where: str
    expected: str
    got: str
    detail: str


def tolerance(*dtypes: torch.dtype) -> tuple[float, float]:
    """The loosest ``(rtol, atol)`` of the given floating dtypes (float32's when there is none).

    A case whose inputs are bfloat16 is compared with bfloat16's tolerance even where the package
    returns float32: the inputs carry only that much precision.

    :param dtypes: the dtypes involved in a comparison.
    :returns: ``(rtol, atol)``.

    Introduced in {doc}`/book/part0/02-preferences`.
    """
    floats = [d for d in dtypes if d in TOLERANCES] or [torch.float32]
    return max(TOLERANCES[d][0] for d in floats), max(TOLERANCES[d][1] for d in floats)


def _number(x: float) -> str:
    if isinstance(x, bool) or not isinstance(x, float) or not math.isfinite(x):
        return repr(x)
    text = f"{x:.6g}"
    return text if any(c in text for c in ".en") else text + ".0"


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(flat % size)
        flat //= size
    return tuple(reversed(out))


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _values(t: torch.Tensor):
    if t.dtype == torch.bool or not t.is_floating_point():
        return t.tolist()
    if t.dim() == 0:
        return _number(t.item())
    return [_values(row) for row in t] if t.dim() > 1 else [_number(v) for v in t.tolist()]


def _bracketed(values) -> str:
    if isinstance(values, list):
        return "[" + ", ".join(_bracketed(v) for v in values) + "]"
    return str(values)


def describe(value, *, limit: int = 8) -> str:
    """A short description of a value: dtype and shape of a tensor (its values when small), ...

    :param value: anything a function of the catalog takes or returns.
    :param limit: tensors and sequences with at most this many elements are shown in full.
    :returns: one line of text.

    Introduced in {doc}`/book/part0/02-preferences`.
    """
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        head = f"{dtype} {_shape(value)}"
        t = value.detach().cpu()
        if t.numel() <= limit:
            return f"{head} {_bracketed(_values(t))}"
        notes = []
        if t.dtype == torch.bool:
            notes.append(f"{int(t.sum())} True")
        elif t.is_floating_point():
            counts = {
                "NaN": int(torch.isnan(t).sum()),
                "inf": int((t == float("inf")).sum()),
                "-inf": int((t == float("-inf")).sum()),
            }
            notes += [f"{n} {kind}" for kind, n in counts.items() if n]
        return head + (f" ({', '.join(notes)})" if notes else "")
    if isinstance(value, nn.Module):
        config = getattr(value, "config", None)
        fields = [f"{k}={getattr(config, k)}" for k in ("n_layer", "n_embd") if hasattr(config, k)]
        extra = [f"{k}={getattr(value, k)!r}" for k in ("pooling", "causal") if hasattr(value, k)]
        return f"{type(value).__name__}({', '.join(extra + fields)})"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"str of {len(value)} chars {value[:30]!r}..."
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v, limit=limit)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        kind = type(value).__name__
        if len(value) > limit or (len(value) > 3 and not all(_flat(v) for v in value)):
            return f"{kind} of {len(value)}, first {describe(value[0], limit=limit)}"
        inner = ", ".join(describe(v, limit=limit) for v in value)
        return (
            f"[{inner}]"
            if isinstance(value, list)
            else f"({inner}{',' if len(value) == 1 else ''})"
        )
    if isinstance(value, float):
        return _number(value)
    return repr(value)


def _flat(value) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) <= 2 and all(isinstance(v, (int, float, str, bool)) for v in value)
    return isinstance(value, (int, float, str, bool)) or value is None


def _compare_tensors(expected: torch.Tensor, got, where: str, dtypes, floor) -> Difference | None:
    if not isinstance(got, torch.Tensor):
        return Difference(where, describe(expected), describe(got), "expected a tensor")
    if got.shape != expected.shape:
        detail = f"shape: expected {_shape(expected)}, got {_shape(got)}"
        return Difference(where, describe(expected), describe(got), detail)
    if got.dtype != expected.dtype:
        detail = f"dtype: expected {expected.dtype}, got {got.dtype}"
        return Difference(where, describe(expected), describe(got), detail)
    e, g = expected.detach().cpu(), got.detach().cpu()
    if not e.is_floating_point() and not e.is_complex():
        wrong = e != g
        if not bool(wrong.any()):
            return None
        first = int(wrong.flatten().nonzero()[0])
        i = _index(first, tuple(e.shape))
        detail = (
            f"{int(wrong.sum())} of {e.numel()} elements differ; first at index {i}: "
            f"expected {e.flatten()[first].item()!r}, got {g.flatten()[first].item()!r}"
        )
        return Difference(where, describe(expected), describe(got), detail)
    rtol, atol = tolerance(e.dtype, *dtypes)
    rtol, atol = max(rtol, floor[0]), max(atol, floor[1])
    e64, g64 = e.double(), g.double()
    close = torch.isclose(g64, e64, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return None
    diff = (g64 - e64).abs()
    diff = torch.where(close, torch.zeros_like(diff), diff.nan_to_num(nan=math.inf))
    worst = int(diff.flatten().argmax())
    i = _index(worst, tuple(e.shape))
    if e.numel() == 1:
        both = f"expected {_number(e64.item())}, got {_number(g64.item())}"
        gap = abs(g64.item() - e64.item())
        if math.isfinite(gap):
            both += f": abs diff {gap:.3g} (rtol {rtol:g}, atol {atol:g})"
        return Difference(where, describe(expected), describe(got), both)
    finite = torch.isfinite(e64) & torch.isfinite(g64) & ~close
    largest = f"max abs diff {float(diff[finite].max()):.3g}; " if bool(finite.any()) else ""
    want, have = _number(e64.flatten()[worst].item()), _number(g64.flatten()[worst].item())
    detail = (
        f"{int((~close).sum())} of {e.numel()} elements differ (rtol {rtol:g}, atol {atol:g}); "
        f"{largest}worst at index {i}: expected {want}, got {have}"
    )
    return Difference(where, describe(expected), describe(got), detail)


def _compare_floats(expected: float, got, where: str, dtypes, floor) -> Difference | None:
    if isinstance(got, torch.Tensor) and got.dim() == 0 and got.is_floating_point():
        got = float(got)
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return Difference(where, _number(expected), describe(got), "expected a Python float")
    rtol, atol = tolerance(torch.float32, *dtypes)  # metrics are often computed in float32
    rtol, atol = max(rtol, floor[0]), max(atol, floor[1])
    got = float(got)
    same = (math.isnan(expected) and math.isnan(got)) or math.isclose(
        got, expected, rel_tol=rtol, abs_tol=atol
    )
    if same:
        return None
    diff = abs(got - expected)
    detail = f"abs diff {diff:.3g} (rtol {rtol:g}, atol {atol:g})"
    return Difference(where, _number(expected), _number(got), detail)


def _compare_exact(expected, got, where: str) -> Difference | None:
    if isinstance(expected, int) and not isinstance(expected, bool):
        if isinstance(got, torch.Tensor) and got.dim() == 0 and not got.is_floating_point():
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, int):
            return Difference(where, repr(expected), describe(got), "expected a Python int")
    elif type(got) is not type(expected) and not (expected is None and got is None):
        detail = f"expected {type(expected).__name__}, got {type(got).__name__}"
        return Difference(where, describe(expected), describe(got), detail)
    if got == expected:
        return None
    return Difference(where, describe(expected), describe(got), "values differ")


def _compare_sequences(expected, got, where: str, dtypes, floor) -> Difference | None:
    if not isinstance(got, (list, tuple)):
        detail = f"expected a {type(expected).__name__} of {len(expected)} items"
        return Difference(where, describe(expected), describe(got), detail)
    flat = all(isinstance(v, (int, str, bool)) for v in expected)
    if flat and len(got) != len(expected):
        first = next(
            (k for k, (a, b) in enumerate(zip(expected, got)) if a != b),
            min(len(expected), len(got)),
        )
        detail = f"length: expected {len(expected)}, got {len(got)}; first difference at [{first}]"
        return Difference(where, describe(expected), describe(got), detail)
    if len(got) != len(expected):
        detail = f"expected {len(expected)} items, got {len(got)}"
        return Difference(where, describe(expected), describe(got), detail)
    for k, (e, g) in enumerate(zip(expected, got)):
        found = compare(e, g, where=f"{where}[{k}]", dtypes=dtypes, floor=floor)
        if found is not None:
            if flat:  # a list of ids: show the neighbourhood, not just one id
                found = Difference(
                    where,
                    describe(expected[max(k - 3, 0) : k + 4]),
                    describe(list(got[max(k - 3, 0) : k + 4])),
                    f"first difference at index {k}: expected {e!r}, got {g!r}",
                )
            return found
    return None


def compare(
    expected,
    got,
    *,
    where: str = "output",
    dtypes: Sequence[torch.dtype] = (),
    floor: tuple[float, float] = (0.0, 0.0),
) -> Difference | None:
    """The first difference between ``got`` and ``expected``, or None when they agree.

    :param expected: the package's output.
    :param got: the reader's output.
    :param where: the name of this part of the output, used in the returned path.
    :param dtypes: dtypes of the inputs; the loosest of their tolerances applies, as computed by
        the function :func:`tolerance`.
    :param floor: ``(rtol, atol)`` below which the tolerances never go, for outputs that the
        package computes along another path (a padded batch) than an exercise asks for.
    :returns: a :class:`Difference`, or None.

    Introduced in {doc}`/book/part0/02-preferences`.
    """
    if isinstance(expected, torch.Tensor):
        return _compare_tensors(expected, got, where, dtypes, floor)
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping):
            return Difference(where, describe(expected), describe(got), "expected a dict")
        for key in expected:
            if key not in got:
                detail = f"missing key {key!r} (has {sorted(map(str, got))})"
                return Difference(where, describe(expected), describe(got), detail)
            found = compare(
                expected[key], got[key], where=f"{where}[{key!r}]", dtypes=dtypes, floor=floor
            )
            if found is not None:
                return found
        return None
    if isinstance(expected, (list, tuple)):
        return _compare_sequences(expected, got, where, dtypes, floor)
    if isinstance(expected, float):
        return _compare_floats(expected, got, where, dtypes, floor)
    return _compare_exact(expected, got, where)
