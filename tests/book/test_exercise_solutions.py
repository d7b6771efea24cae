"""The book's exercise solutions pass the exercise checker, and every Part runs the checker.

A solution block is a fenced ``python`` block (inside a chapter's hidden solution) whose first line
is ``# exercise: <name>``; it defines the function and ends with ``check(<function>, "<name>")``, the
call a reader would run. Each block runs in a fresh namespace, and the result of that last call
must be a pass. Nothing here executes a chapter.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

from llmbook.exercises import EXERCISES, CheckResult
from tests.book.chapters import ROOT, chapters

MARKER = re.compile(r"^# exercise: (\S+)\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)(?:\s.*)?$")  # ```python, ```{code-cell} ipython3, ```


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(info, code)`` of every fenced block, dedented (list items indent their blocks)."""
    blocks, lines, k = [], text.splitlines(), 0
    while k < len(lines):
        opening = FENCE.match(lines[k])
        if not opening or not opening.group(2):
            k += 1
            continue
        indent, info, body = opening.group(1), opening.group(2), []
        k += 1
        while k < len(lines) and not re.match(rf"^{indent}```\s*$", lines[k]):
            body.append(lines[k])
            k += 1
        blocks.append((info, textwrap.dedent("\n".join(body))))
        k += 1
    return blocks


def solutions() -> list[tuple[str, Path, str]]:
    """``(exercise name, chapter, code)`` of every marked solution block of the book."""
    found = []
    for path in chapters():
        for info, code in fenced_blocks(path.read_text(encoding="utf-8")):
            first = MARKER.match(code.lstrip().split("\n", 1)[0])
            if info == "python" and first:
                found.append((first.group(1), path, code))
    return found


SOLUTIONS = solutions()


def chapter_key(path: Path) -> str:
    return path.relative_to(ROOT).with_suffix("").as_posix()


def test_found_the_solutions():
    assert len(SOLUTIONS) >= len(EXERCISES)


@pytest.mark.parametrize(
    ("name", "path", "code"), SOLUTIONS, ids=[f"{n}@{chapter_key(p)}" for n, p, _ in SOLUTIONS]
)
def test_the_solution_passes_the_checker(name, path, code):
    assert name in EXERCISES, f"{chapter_key(path)}: unknown exercise {name!r}"
    assert EXERCISES[name].chapter == chapter_key(path), (
        f"{name} is not the exercise of this chapter"
    )
    tree = ast.parse(code, filename=f"{path.name}:{name}")
    *body, last = tree.body
    call = last.value if isinstance(last, ast.Expr) else None
    assert (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and call.func.id == "check"
        and len(call.args) == 2
        and isinstance(call.args[1], ast.Constant)
        and call.args[1].value == name
    ), f'the block must end with check(<your function>, "{name}")'
    namespace = {"__name__": f"solution_{name}"}
    exec(compile(ast.Module(body, type_ignores=[]), path.name, "exec"), namespace)
    result = eval(compile(ast.Expression(call), path.name, "eval"), namespace)
    assert isinstance(result, CheckResult)
    assert result.passed, str(result)


def test_every_exercise_has_a_solution_in_the_book():
    solved = {name for name, _, _ in SOLUTIONS}
    assert set(EXERCISES) <= solved, f"no solution block for {sorted(set(EXERCISES) - solved)}"


def prose(text: str) -> str:
    """The chapter without its fenced blocks and code cells."""
    kept, inside = [], None
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence and inside is None and fence.group(2):
            inside = fence.group(1)
        elif inside is not None and re.match(rf"^{inside}```\s*$", line):
            inside = None
        elif inside is None:
            kept.append(line)
    return "\n".join(kept)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_exercise_text_tells_the_reader_to_check(name):
    text = prose((ROOT / f"{EXERCISES[name].chapter}.md").read_text(encoding="utf-8"))
    assert re.search(rf'llmbook\.exercises\.check\(\w+,\s+"{name}"\)', text), name


def executed_checks() -> dict[str, list[str]]:
    """Part folder -> chapters whose executed code cells assert on a ``check(...)`` result."""
    parts: dict[str, list[str]] = {}
    for path in chapters():
        text = path.read_text(encoding="utf-8")
        if "llmbook.exercises import check" not in text:
            continue
        for info, code in fenced_blocks(text):
            if info == "{code-cell}" and re.search(r"\bcheck\(", code) and "assert" in code:
                parts.setdefault(path.parent.name, []).append(path.stem)
                break
    return parts


def test_every_part_runs_the_checker_in_an_executed_cell():
    parts = executed_checks()
    assert sorted(parts, key=lambda p: int(p.removeprefix("part"))) == [
        f"part{k}" for k in range(11)
    ]


def test_every_part_has_an_exercise_in_the_catalog():
    covered = {spec.chapter.split("/")[1] for spec in EXERCISES.values()}
    assert covered == {f"part{k}" for k in range(11)}
