r"""The exercise checker: run the reader's function and the package's on the same cases, report.

An :class:`Exercise` names the package's reference, the signature the reader's function must have,
named edge cases (a single key, tied scores, padding, bfloat16, ...) and a generator of seeded
random cases with random shapes. :func:`check` runs the edge cases first, then the random ones,
compares each output with :func:`~llmbook.exercises.compare.compare` (and, where the exercise asks
for it, the gradients with respect to some inputs), and stops at the first case that differs. An
exception raised by the reader's function is a mismatch on that case, not a crash; so is a function
that changes its inputs in place. The result prints as one line when everything agrees and as a
short report otherwise::

    ✓ top_k: 27/27 cases agree with llmbook.generate.sampling.top_k_filter
"""

from __future__ import annotations

import ast
import copy
import difflib
import inspect
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmbook.exercises.compare import compare, describe
from llmbook.exercises.draw import Draw
from llmbook.exercises.result import CheckResult, Mismatch

_HERE = str(Path(__file__).resolve().parent)


@dataclass(frozen=True)
class Case:
    """One input of an exercise: a name and the positional arguments of the reader's function.

    :param name: what the case tests, e.g. ``"tie at the k-th value"``; :func:`check` names random
        cases ``"random 3"``, followed by this name when it is not empty.
    :param args: the arguments, in the order of the exercise's signature.

    Introduced in {doc}`/book/part0/02-preferences`.
    """

    name: str
    args: tuple


@dataclass(frozen=True, kw_only=True)
class Exercise:
    """What :func:`check` needs to know about one exercise.

    :param name: the key in :data:`~llmbook.exercises.catalog.EXERCISES`, e.g. ``"top_k"``.
    :param chapter: the chapter that asks for it, e.g. ``"book/part2/07-sampling"``.
    :param signature: the reader's function as the exercise writes it, e.g.
        ``"naive_top_k(logits, k)"``; parameters with a default may also be passed by keyword.
    :param reference: the package object the results are compared with (named in the report).
    :param expected: computes the expected output of a case from its arguments with the package; it
        adapts the arguments where the package's signature differs from the exercise's.
    :param edge_cases: returns the named edge cases, run first, in order.
    :param random_case: draws one random case from a :class:`~llmbook.exercises.draw.Draw`.
    :param n_random: how many random cases :func:`check` runs by default.
    :param outputs: names of the parts of a tuple output (e.g. ``("loss", "metrics")``), for the
        reports.
    :param grad_wrt: indices of tensor arguments whose gradient is compared too.
    :param grad_of: the output whose gradient is taken (an index into ``outputs``; None: the whole
        output).
    :param min_tolerance: ``(rtol, atol)`` below which comparisons never go (the ``floor`` that
        is passed to :func:`~llmbook.exercises.compare.compare`).
    :param note: a sentence on how ``expected`` adapts the inputs, for the catalog's documentation.

    Introduced in {doc}`/book/part0/02-preferences`.
    """

    name: str
    chapter: str
    signature: str
    reference: Callable
    expected: Callable[..., Any]
    edge_cases: Callable[[], list[Case]]
    random_case: Callable[[Draw], Case]
    n_random: int = 20
    outputs: tuple[str, ...] = ()
    grad_wrt: tuple[int, ...] = ()
    grad_of: int | None = None
    min_tolerance: tuple[float, float] = (0.0, 0.0)
    note: str = ""

    @property
    def params(self) -> tuple[list[str], int]:
        """The parameter names of :attr:`signature` and how many of them are required."""
        tree = ast.parse(f"def {self.signature}: pass").body[0]
        names = [a.arg for a in tree.args.args]
        return names, len(names) - len(tree.args.defaults)

    @property
    def reference_name(self) -> str:
        """The reference's dotted name, e.g. ``llmbook.generate.sampling.top_k_filter``."""
        ref = self.reference
        return f"{getattr(ref, '__module__', '?')}.{getattr(ref, '__qualname__', repr(ref))}"


def _where_raised(error: BaseException) -> str:
    frames = [
        fr
        for fr in traceback.extract_tb(error.__traceback__)
        if not fr.filename.startswith(_HERE) and "site-packages" not in fr.filename
    ]
    if not frames:
        return ""
    last = frames[-1]
    code = f": {last.line.strip()}" if last.line else ""
    return f" (line {last.lineno} of {last.name}{code})"


def _copy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return copy.deepcopy(value)


def _changed(before, after) -> bool:
    if isinstance(before, torch.Tensor):
        return not (
            isinstance(after, torch.Tensor)
            and before.shape == after.shape
            and torch.equal(before.nan_to_num(0.5), after.detach().nan_to_num(0.5))
            and torch.equal(torch.isnan(before), torch.isnan(after.detach()))
        )
    if isinstance(before, (list, dict, str, int, float, tuple)) or before is None:
        return before != after
    return False  # models and other objects are not compared


def _dtypes(args: Sequence) -> list[torch.dtype]:
    return [a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]


def _describe_inputs(names: list[str], args: tuple) -> str:
    return ", ".join(f"{n}: {describe(a)}" for n, a in zip(names, args))


def _binder(fn: Callable, exercise: Exercise, args: tuple) -> tuple[tuple, dict] | str:
    """How to call ``fn``: every argument by position, or the optional ones by keyword."""
    names, n_required = exercise.params
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: just try it
        return args, {}
    try:
        sig.bind(*args)
        return args, {}
    except TypeError as first:
        by_name = dict(zip(names[n_required:], args[n_required:]))
        try:
            sig.bind(*args[:n_required], **by_name)
            return args[:n_required], by_name
        except TypeError:
            name = getattr(fn, "__name__", "your function")
            return f"{name}{sig} cannot be called as {exercise.signature}: {first}"


def _grad_of(out, exercise: Exercise):
    return out if exercise.grad_of is None else out[exercise.grad_of]


def _run_case(fn, exercise: Exercise, case: Case, number: int, draw: Draw) -> Mismatch | None:
    names, _ = exercise.params
    inputs = _describe_inputs(names, case.args)

    def mismatch(where, expected, got, detail):
        return Mismatch(case.name, number, inputs, where, expected, got, detail)

    bound = _binder(fn, exercise, case.args)
    if isinstance(bound, str):
        return mismatch("call", exercise.signature, "a different signature", bound)
    wrt = exercise.grad_wrt
    ref_args = [_copy(a) for a in case.args]
    mine = [_copy(a) for a in case.args]
    for i in wrt:
        ref_args[i].requires_grad_(True)
        mine[i].requires_grad_(True)
    expected = exercise.expected(*ref_args)
    call_args, call_kwargs = bound
    positional = mine[: len(call_args)]
    keywords = dict(zip(call_kwargs, mine[len(call_args) :]))
    try:
        got = fn(*positional, **keywords)
    except Exception as error:  # the reader's bug is a finding, not a crash
        got = f"raised {type(error).__name__}: {error}"
        return mismatch(
            "call", describe(expected), got, f"the function raised{_where_raised(error)}"
        )
    for name, before, after in zip(names, case.args, mine):
        if _changed(before, after):
            detail = f"the function changed its input {name!r} in place"
            return mismatch(name, describe(before), describe(after), detail)
    out_names = exercise.outputs
    dtypes, floor = _dtypes(case.args), exercise.min_tolerance
    if out_names and isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            detail = f"expected a tuple ({', '.join(out_names)})"
            return mismatch("output", describe(expected), describe(got), detail)
        for name, e, g in zip(out_names, expected, got):
            found = compare(e, g, where=name, dtypes=dtypes, floor=floor)
            if found is not None:
                return mismatch(found.where, found.expected, found.got, found.detail)
    else:
        found = compare(expected, got, dtypes=dtypes, floor=floor)
        if found is not None:
            return mismatch(found.where, found.expected, found.got, found.detail)
    if not wrt:
        return None
    out_name = "output" if exercise.grad_of is None else out_names[exercise.grad_of]
    e_out, g_out = _grad_of(expected, exercise), _grad_of(got, exercise)
    u = (
        draw.randn(*e_out.shape, dtype=e_out.dtype)
        if e_out.dim()
        else torch.ones((), dtype=e_out.dtype)
    )
    e_grads = torch.autograd.grad((e_out * u).sum(), [ref_args[i] for i in wrt], allow_unused=True)
    for i, e_grad in zip(wrt, e_grads):
        where = f"gradient of {out_name} with respect to {names[i]}"
        if e_grad is None:
            e_grad = torch.zeros_like(ref_args[i])
        if not (isinstance(g_out, torch.Tensor) and g_out.requires_grad):
            detail = (
                f"your {out_name} carries no gradient (computed under no_grad, or with .item()?)"
            )
            return mismatch(where, describe(e_grad), "no gradient", detail)
        (g_grad,) = torch.autograd.grad(
            (g_out * u.to(g_out.dtype)).sum(), [mine[i]], allow_unused=True, retain_graph=True
        )
        if g_grad is None:
            g_grad = torch.zeros_like(mine[i])
        found = compare(e_grad, g_grad, where=where, dtypes=dtypes, floor=floor)
        if found is not None:
            return mismatch(found.where, found.expected, found.got, found.detail)
    return None


def _resolve(exercise: str | Exercise) -> Exercise:
    if isinstance(exercise, Exercise):
        return exercise
    from llmbook.exercises.catalog import EXERCISES

    if exercise not in EXERCISES:
        close = difflib.get_close_matches(str(exercise), EXERCISES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"exercise: unknown name {exercise!r}{hint}; known: {', '.join(sorted(EXERCISES))}"
        )
    return EXERCISES[exercise]


def check(
    fn: Callable, exercise: str | Exercise, *, seed: int = 0, n_random: int | None = None
) -> CheckResult:
    """Compare ``fn`` with the package's function on an exercise's edge cases and random cases.

    The cases run in order (the named edge cases first) and the check stops at the first mismatch:
    a different output (shape, dtype, or value beyond ``torch.testing``'s tolerance for the dtype),
    a different gradient where the exercise compares gradients, an exception, or an input changed in
    place. The global random state is left as it was.

    :param fn: the reader's function, with the exercise's signature.
    :param exercise: the exercise's name (a key of :data:`~llmbook.exercises.catalog.EXERCISES`)
        or an :class:`Exercise`.
    :param seed: seeds the random cases.
    :param n_random: how many random cases to run (default: the exercise's ``n_random``).
    :returns: a :class:`CheckResult`, which a notebook shows as a one-line verdict or a report.
    :raises ValueError: for an unknown exercise name (the message lists the known ones) or a
        negative ``n_random``.
    :raises TypeError: when ``fn`` is not callable.

    Introduced in {doc}`/book/part0/02-preferences`.
    """
    spec = _resolve(exercise)
    if not callable(fn):
        raise TypeError(f"fn: expected your function, got {type(fn).__name__}")
    n_random = spec.n_random if n_random is None else int(n_random)
    if n_random < 0:
        raise ValueError(f"n_random: expected a number >= 0, got {n_random}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draw = Draw(seed)
        cases = list(spec.edge_cases())
        n_edge = len(cases)
        cases += [spec.random_case(draw) for _ in range(n_random)]
        cases = cases[:n_edge] + [
            Case(f"random {k + 1}" + (f", {c.name}" if c.name else ""), c.args)
            for k, c in enumerate(cases[n_edge:])
        ]
        grad_draw = Draw(seed + 1)
        for number, case in enumerate(cases, start=1):
            found = _run_case(fn, spec, case, number, grad_draw)
            if found is not None:
                return CheckResult(spec.name, spec.reference_name, len(cases), number, found)
    return CheckResult(spec.name, spec.reference_name, len(cases), len(cases))
