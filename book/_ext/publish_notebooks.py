"""Push the site's chapter notebooks to a git branch, where Colab can open them.

Colab opens a notebook only from a GitHub path
(``colab.research.google.com/github/ORG/REPO/blob/BRANCH/PATH.ipynb``), and the runnable notebooks
exist only in the built site (``_build/html/_notebooks``, written by ``llmbook_notebooks.py``). The
deploy workflow runs this after the build::

    python3 book/_ext/publish_notebooks.py _build/html/_notebooks --source-commit "$GITHUB_SHA"

It commits the folder as the whole tree of one commit without a parent (plus a README saying where
it came from) and force-pushes that commit to the branch, so the branch always holds exactly the
deployed site's notebooks and never grows a history. It works through a temporary index: the
checkout's working tree, index, HEAD and branches are left as they were. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# GitHub's documented identity for commits made by workflows, used when git has none configured.
BOT = ("github-actions[bot]", "41898282+github-actions[bot]@users.noreply.github.com")


def _git(args: list[str], repo: Path, env: dict[str, str], stdin: str | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _identity(repo: Path) -> dict[str, str]:
    """Author and committer variables, from the environment or git's config, else :data:`BOT`."""
    env = {}
    for role in ("AUTHOR", "COMMITTER"):
        for i, (key, config) in enumerate((("NAME", "user.name"), ("EMAIL", "user.email"))):
            var = f"GIT_{role}_{key}"
            if os.environ.get(var):
                continue
            found = subprocess.run(
                ["git", "-C", str(repo), "config", config], capture_output=True, text=True
            ).stdout.strip()
            env[var] = found or BOT[i]
    return env


def notebook_commit(folder: Path, message: str, readme: str, repo: Path = ROOT) -> str:
    """A parentless commit whose tree is ``folder`` plus ``README.md``, made in ``repo``'s objects.

    :returns: the commit's hash.
    """
    files = sorted(p for p in folder.rglob("*.ipynb") if p.is_file())
    if not files:
        raise ValueError(f"no notebooks under {folder}")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, **_identity(repo), "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        # --force: the repository ignores *.ipynb; these are meant to be committed
        _git(["--work-tree", str(folder.resolve()), "add", "--all", "--force"], repo, env)
        blob = _git(["hash-object", "-w", "--stdin"], repo, env, stdin=readme)
        _git(["update-index", "--add", "--cacheinfo", f"100644,{blob},README.md"], repo, env)
        tree = _git(["write-tree"], repo, env)
        return _git(["commit-tree", tree, "-m", message], repo, env)


def publish(
    folder: Path, *, branch: str, remote: str, source_commit: str, repo: Path = ROOT
) -> str:
    """Commit ``folder`` (see :func:`notebook_commit`) and force-push it to ``remote``'s ``branch``.

    :returns: the pushed commit's hash.
    """
    readme = (
        f"# Chapter notebooks\n\nGenerated from commit {source_commit} by `book/_ext/llmbook_notebooks.py`"
        " when the book was built, and pushed here by `book/_ext/publish_notebooks.py`. Every\n"
        "deploy replaces this branch with one new commit: do not edit it, edit the chapters' `.md`\n"
        "sources on the main branch. The book's Colab buttons open these notebooks.\n"
    )
    commit = notebook_commit(folder, f"Chapter notebooks of {source_commit}", readme, repo)
    env = {**os.environ, **_identity(repo)}
    _git(["push", "--force", remote, f"{commit}:refs/heads/{branch}"], repo, env)
    return commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the notebooks, e.g. _build/html/_notebooks")
    parser.add_argument("--branch", default="notebooks")
    parser.add_argument("--remote", default="origin")
    parser.add_argument("--source-commit", required=True, help="the commit the book was built from")
    args = parser.parse_args(argv)
    commit = publish(
        args.folder, branch=args.branch, remote=args.remote, source_commit=args.source_commit
    )
    print(f"pushed {commit} to {args.remote} {args.branch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
