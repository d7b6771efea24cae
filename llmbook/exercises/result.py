"""What :func:`~llmbook.exercises.check.check` returns: a verdict, and the first mismatch in detail.

A notebook shows a :class:`CheckResult` as one green line when every case agreed, or as a short red
report: the case, its inputs, which part of the output differs, and how.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mismatch:
    """The first case on which the reader's function and the package's disagree.

    :param case: the case's name.
    :param number: its position among the cases run (1-based).
    :param inputs: the inputs in a few words (shapes and dtypes, or small values).
    :param where: which part of the output differs (``"output"``, ``"metrics['accuracy']"``, the
        gradient of an output), or ``"call"`` when the function raised or could not be called.
    :param expected: the expected value in a few words.
    :param got: the reader's value in a few words (or the exception).
    :param detail: what differs: the worst element of a tensor, a missing key, where it raised.

    Introduced in {doc}`/book/part0/02-preferences`.
    """

    case: str
    number: int
    inputs: str
    where: str
    expected: str
    got: str
    detail: str


@dataclass(frozen=True)
class CheckResult:
    """The outcome of a check: did every case agree, and if not, where it first did not.

    :param exercise: the exercise's name.
    :param reference: the dotted name of the package's function.
    :param n_cases: the cases planned (edge cases and random ones).
    :param n_run: the cases run: all of them, or up to and including the first mismatch.
    :param failure: the first :class:`Mismatch`, None when every case agreed.

    Introduced in {doc}`/book/part0/02-preferences`.
    """

    exercise: str
    reference: str
    n_cases: int
    n_run: int
    failure: Mismatch | None = field(default=None)

    @property
    def passed(self) -> bool:
        """True when every case agreed."""
        return self.failure is None

    def headline(self) -> str:
        """The first line of the report."""
        if self.failure is None:
            return (
                f"✓ {self.exercise}: {self.n_run}/{self.n_cases} cases agree with {self.reference}"
            )
        f = self.failure
        return (
            f"✗ {self.exercise}: first mismatch on case {f.case!r} ({f.number} of {self.n_cases}), "
            f"compared with {self.reference}"
        )

    def _lines(self) -> list[tuple[str, str]]:
        f = self.failure
        if f is None:
            return []
        return [
            ("inputs", f.inputs),
            ("where", f.where),
            ("expected", f.expected),
            ("got", f.got),
            ("detail", f.detail),
        ]

    def __str__(self) -> str:
        return "\n".join([self.headline(), *(f"  {k + ':':<9} {v}" for k, v in self._lines())])

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython's text/plain
        printer.text(str(self))

    def _repr_html_(self) -> str:
        colour = "#2e7d32" if self.passed else "#c62828"
        rows = "".join(
            f"<tr><th style='text-align:left;padding-right:1em'>{k}</th>"
            f"<td style='text-align:left'><code>{html.escape(v)}</code></td></tr>"
            for k, v in self._lines()
        )
        table = f"<table>{rows}</table>" if rows else ""
        head = f"<p style='color:{colour};font-weight:bold'>{html.escape(self.headline())}</p>"
        return f"<div>{head}{table}</div>"

    def assert_passed(self) -> CheckResult:
        """Raise :class:`AssertionError` with the report unless every case agreed.

        :returns: the result itself, so that it can end a cell.
        :raises AssertionError: on a mismatch.
        """
        if not self.passed:
            raise AssertionError(str(self))
        return self
