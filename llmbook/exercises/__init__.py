"""Exercises that check the reader's code: your function against the package's, on many cases.

>>> from llmbook.exercises import check
>>> check(my_top_k, "top_k")  # doctest: +SKIP
✓ top_k: 27/27 cases agree with llmbook.generate.sampling.top_k_filter

The dict :data:`EXERCISES` lists the exercises by name; each names the chapter that asks for it.
"""

from llmbook.exercises.catalog import EXERCISES
from llmbook.exercises.check import Case, Exercise, check
from llmbook.exercises.result import CheckResult, Mismatch

__all__ = ["EXERCISES", "Case", "CheckResult", "Exercise", "Mismatch", "check"]
