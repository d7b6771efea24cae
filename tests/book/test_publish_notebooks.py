"""The deploy workflow's push of the chapter notebooks to the branch that Colab opens them from."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _publisher():
    ext_dir = str(ROOT / "book" / "_ext")
    if ext_dir not in sys.path:
        sys.path.append(ext_dir)
    return importlib.import_module("publish_notebooks")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A clone-like repository with one commit, a gitignore for *.ipynb and a bare 'origin'."""
    remote, repo = tmp_path / "origin.git", tmp_path / "repo"
    subprocess.run(["git", "init", "--quiet", "--bare", str(remote)], check=True)
    subprocess.run(["git", "init", "--quiet", str(repo)], check=True)
    (repo / ".gitignore").write_text("*.ipynb\n")
    _git(repo, "add", ".gitignore")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "main")
    _git(repo, "remote", "add", "origin", str(remote))
    return repo, remote


def test_publish_replaces_the_branch_with_one_commit_of_the_notebooks(checkout, tmp_path):
    publisher = _publisher()
    repo, remote = checkout
    head = _git(repo, "rev-parse", "HEAD")
    folder = tmp_path / "_notebooks"
    (folder / "book" / "part1").mkdir(parents=True)
    (folder / "book" / "part1" / "a.ipynb").write_text('{"a": 1}\n')
    (folder / "intro.ipynb").write_text('{"i": 1}\n')

    first = publisher.publish(
        folder, branch="notebooks", remote="origin", source_commit="c0ffee", repo=repo
    )
    files = _git(remote, "ls-tree", "-r", "--name-only", "notebooks").splitlines()
    assert sorted(files) == ["README.md", "book/part1/a.ipynb", "intro.ipynb"]
    assert _git(remote, "rev-parse", "notebooks") == first
    assert "c0ffee" in _git(remote, "show", "notebooks:README.md")

    # the next deploy: a chapter gone, one changed; the branch is replaced, not extended
    (folder / "intro.ipynb").unlink()
    (folder / "book" / "part1" / "a.ipynb").write_text('{"a": 2}\n')
    second = publisher.publish(
        folder, branch="notebooks", remote="origin", source_commit="beef", repo=repo
    )
    assert second != first
    assert _git(remote, "ls-tree", "-r", "--name-only", "notebooks").splitlines() == [
        "README.md",
        "book/part1/a.ipynb",
    ]
    assert _git(remote, "show", "notebooks:book/part1/a.ipynb") == '{"a": 2}'
    assert _git(remote, "rev-list", "--count", "notebooks") == "1"

    # the checkout itself is untouched: same HEAD, clean index and tree, no local branch made
    assert _git(repo, "rev-parse", "HEAD") == head
    assert _git(repo, "status", "--porcelain") == ""
    assert "notebooks" not in _git(repo, "branch", "--list")


def test_publish_refuses_a_folder_without_notebooks(checkout, tmp_path):
    repo, _ = checkout
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no notebooks"):
        _publisher().publish(
            tmp_path / "empty", branch="notebooks", remote="origin", source_commit="x", repo=repo
        )
