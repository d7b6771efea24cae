"""Sphinx extension: a runnable ``.ipynb`` of every chapter, for Colab, Binder and the download button.

A chapter is a MyST text notebook that imports ``llmbook``. Outside the repository's environment that
import fails, so each chapter is converted to ``.ipynb`` with jupytext and gets one cell in front
(:func:`install_cell`) that, when ``llmbook`` is not importable, installs

- ``llmbook`` from the repository's source archive at the commit being built (:func:`build_pin`:
  ``LLMBOOK_PIN``, else git's ``HEAD``), or the requirement in ``LLMBOOK_INSTALL`` when that is set
  where the notebook runs (a local checkout, a fork);
- torch, pinned to the Makefile's ``TORCH_VERSION``, only when no torch in the package's range is
  installed (Colab keeps its CUDA build): a local wheel when pip is configured to find one, a CPU
  wheel from PyTorch's CPU index on Linux without an NVIDIA GPU, otherwise PyPI's build;
- the packages of the ``book`` and ``test`` extras that the chapter imports, itself or through the
  ``llmbook`` modules it imports (``llmbook_chapter_requirements.py``).

Where ``llmbook`` is importable (the repository's ``.venv``, Binder) the cell does nothing.

The notebooks are written to ``_notebooks/<docname>.ipynb`` of the site. On every chapter page the
download button's ``.ipynb`` entry points there; the Colab button opens the same file from the
``notebooks`` branch, to which the deploy workflow pushes that folder (``publish_notebooks.py``); the
Binder button opens ``<docname>.ipynb`` in an image of the repository at the pinned commit, where
``.binder/postBuild`` writes the notebooks by running this file as a script::

    python book/_ext/llmbook_notebooks.py --out . --pin "$(git rev-parse HEAD)"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
from llmbook_chapter_requirements import Project, chapter_requirements

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = "_notebooks"
"""The site folder that holds the notebooks, mirroring the chapters' docnames."""
NOTEBOOKS_BRANCH = "notebooks"
"""The git branch the deploy workflow pushes the notebooks to, for Colab."""
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def build_pin(root: Path = ROOT) -> str | None:
    """The commit the notebooks install ``llmbook`` from: ``LLMBOOK_PIN``, else git's ``HEAD``.

    :returns: a commit (or any ref GitHub serves an archive of), or None when neither is available.
    """
    pin = os.environ.get("LLMBOOK_PIN", "").strip()
    if pin:
        return pin
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def github_repo(url: str) -> tuple[str, str]:
    """``(org, repo)`` of a ``https://github.com/org/repo`` URL."""
    match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?", url.strip())
    if match is None:
        raise ValueError(f"not a GitHub repository URL: {url!r}")
    return match.group(1), match.group(2)


def package_requirement(repo_url: str, pin: str) -> str:
    """The pip requirement of ``llmbook`` at ``pin``: GitHub's source archive, so no git is needed."""
    org, repo = github_repo(repo_url)
    return f"llmbook @ https://github.com/{org}/{repo}/archive/{pin}.tar.gz"


def install_cell(requirement: str, project: Project, packages: list[str], source_url: str) -> str:
    """The source of the first cell: install what the chapter needs unless ``llmbook`` imports.

    :param requirement: the pip requirement of ``llmbook`` (see :func:`package_requirement`).
    :param packages: further requirements (see :func:`chapter_requirements`).
    :param source_url: where the chapter's source is, for the reader.
    """
    q = json.dumps  # a Python string literal in double quotes
    torch = f"torch=={project.torch_version}"
    extra = "".join(f"\n        {q(p)}," for p in packages)
    # The checkpoint store the site was built with (LLMBOOK_ZOO_URL at build time): zoo models are
    # fetched by key from there instead of trained (on a Colab GPU the default profile is the full one).
    url = os.environ.get("LLMBOOK_ZOO_URL", "").strip()
    store = (
        "\nimport os\n\n"
        f'os.environ.setdefault("LLMBOOK_ZOO_URL", {q(url)})  # fetch zoo models, do not train them\n'
        if url
        else ""
    )
    return f"""\
# Installs what this chapter needs when the llmbook package is missing (Colab, Binder, a downloaded
# copy), and does nothing where it is installed (the repository's environment): first {torch}
# unless a torch{project.torch_range} is there (Colab keeps its own; a CPU wheel on Linux without an
# NVIDIA GPU), then llmbook at the commit the book was built from (or the pip requirement in the
# LLMBOOK_INSTALL environment variable) and the packages listed below. The chapter's source:
# {source_url}
import importlib.util

if importlib.util.find_spec("llmbook") is None:
    import os
    import platform
    import shutil
    import subprocess
    import sys
    from importlib.metadata import PackageNotFoundError, version

    def pip_install(*args, probe=False):
        if not probe:
            print("pip install", *args, flush=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", *args]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode and not probe:
            raise RuntimeError(f"pip install failed:\\n{{done.stdout}}{{done.stderr}}")
        return done.returncode == 0

    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        from pip._vendor.packaging.specifiers import SpecifierSet
    try:
        have_torch = version("torch") in SpecifierSet({q(project.torch_range)})
    except PackageNotFoundError:
        have_torch = False
    if not have_torch:
        if pip_install("--no-index", "--no-deps", {q(torch)}, probe=True):
            pip_install({q(torch)})  # a local wheel that pip is set up to find; now its dependencies
        elif shutil.which("nvidia-smi") or platform.system() != "Linux":
            pip_install({q(torch)})
        else:
            pip_install({q(torch)}, "--index-url", {q(CPU_INDEX)}, "--extra-index-url", "https://pypi.org/simple")
    pip_install(
        os.environ.get("LLMBOOK_INSTALL") or {q(requirement)},{extra}
    )
    importlib.invalidate_caches()
    print("installed llmbook", version("llmbook"), "with torch", version("torch"))
{store}"""


def runnable_notebook(
    source: Path,
    *,
    repo_url: str,
    pin: str,
    project: Project,
    root: Path = ROOT,
    relpath: str | None = None,
) -> nbformat.NotebookNode:
    """A chapter as ``.ipynb``, without outputs, with :func:`install_cell` first.

    :param source: the chapter's MyST markdown file.
    :param repo_url: the GitHub repository, e.g. ``https://github.com/llmbook/llmbook``.
    :param pin: the commit (or ref) to install ``llmbook`` from.
    :param root: the repository root, which holds the ``llmbook`` package.
    :param relpath: the chapter's path in the repository (default: ``source`` relative to ``root``).
    """
    nb = jupytext.read(source)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    if relpath is None:
        relpath = source.resolve().relative_to(root.resolve()).as_posix()
    org, repo = github_repo(repo_url)
    cell = install_cell(
        package_requirement(repo_url, pin),
        project,
        chapter_requirements(code, project, root),
        f"https://github.com/{org}/{repo}/blob/{pin}/{relpath}",
    )
    # Without the text representation, no jupytext setup treats the .ipynb as paired with the .md.
    nb.metadata.pop("jupytext", None)
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.insert(0, nbformat.v4.new_code_cell(cell, metadata={"tags": ["llmbook-install"]}))
    nbformat.validator.normalize(nb)
    for i, c in enumerate(nb.cells):
        c.id = f"cell-{i}"  # stable ids: the same chapter and pin give the same file
    return nb


def write_notebook(nb: nbformat.NotebookNode, path: Path) -> None:
    """Write ``nb`` to ``path`` (parents created), validated as nbformat 4."""
    nbformat.validate(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# --- Sphinx ------------------------------------------------------------------------------------


def _chapter_docs(app) -> list[str]:
    env = app.env
    return sorted(
        doc
        for doc in env.found_docs
        if "kernelspec" in env.metadata.get(doc, {}) and str(env.doc2path(doc)).endswith(".md")
    )


def _settings(app) -> dict:
    opts = app.config.html_theme_options
    launch = opts.get("launch_buttons", {}) or {}
    relpath = opts.get("path_to_docs", "").strip("/")
    ui = {"classic": "tree", "jupyterlab": "lab/tree"}[launch.get("notebook_interface", "classic")]
    return {
        "repo_url": opts.get("repository_url", ""),
        "prefix": f"{relpath}/" if relpath else "",
        "binder": (launch.get("binderhub_url") or "").strip("/"),
        "colab": (launch.get("colab_url") or "").strip("/"),
        "ui": ui,
    }


def _pin(app, config) -> None:
    pin = build_pin(Path(app.srcdir))
    if pin is None:
        from sphinx.util import logging

        pin = config.html_theme_options.get("repository_branch") or "main"
        # A build outside git (a source tarball) still builds; the published site sets LLMBOOK_PIN.
        logging.getLogger(__name__).info(
            "llmbook_notebooks: no git HEAD and no LLMBOOK_PIN; the notebooks install llmbook from %r",
            pin,
        )
    app.llmbook_pin = pin


def _point_buttons(app, pagename, templatename, context, doctree) -> None:
    if pagename not in app.llmbook_chapters:
        return
    s = _settings(app)
    org, repo = github_repo(s["repo_url"])
    urls = {
        "download-notebook-button": context["pathto"](f"{NOTEBOOKS_DIR}/{pagename}.ipynb", 1),
        "Binder": f"{s['binder']}/v2/gh/{org}/{repo}/{app.llmbook_pin}"
        f"?urlpath={s['ui']}/{s['prefix']}{pagename}.ipynb",
        "Colab": f"{s['colab']}/github/{org}/{repo}/blob/{NOTEBOOKS_BRANCH}/{pagename}.ipynb",
    }
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []):
            key = button.get("label") if button.get("label") in urls else button.get("text")
            if key in urls:
                button["url"] = urls[key]


def _write_notebooks(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    root = Path(app.srcdir)
    project = Project.read(root)
    s = _settings(app)
    out = Path(app.outdir) / NOTEBOOKS_DIR
    shutil.rmtree(out, ignore_errors=True)  # no notebook of a chapter that is gone
    for doc in sorted(app.llmbook_chapters):
        source = Path(app.env.doc2path(doc))
        nb = runnable_notebook(
            source,
            repo_url=s["repo_url"],
            pin=app.llmbook_pin,
            project=project,
            root=root,
            relpath=f"{s['prefix']}{doc}{source.suffix}",
        )
        write_notebook(nb, out / f"{doc}.ipynb")


def _collect(app, env, *args) -> None:
    app.llmbook_chapters = set(_chapter_docs(app))


def setup(app):
    app.connect("config-inited", _pin)
    app.connect("env-updated", _collect)
    # after sphinx-book-theme (priority 501) has made its download and launch buttons
    app.connect("html-page-context", _point_buttons, priority=502)
    app.connect("build-finished", _write_notebooks)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}


# --- script (Binder's postBuild) ---------------------------------------------------------------


def chapter_sources(root: Path = ROOT) -> list[Path]:
    """Every MyST notebook under ``root/book`` (a kernelspec in its front matter)."""
    paths = []
    for path in sorted((root / "book").rglob("*.md")):
        if "api" in path.relative_to(root / "book").parts[:1]:
            continue
        text = path.read_text(encoding="utf-8")
        front = text.split("---", 2)[1] if text.startswith("---") else ""
        if re.search(r"^kernelspec:", front, re.MULTILINE):
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Write every chapter's notebook under ``--out``, at the chapter's path with ``.ipynb``."""
    import yaml

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the notebooks in")
    parser.add_argument("--pin", help="commit to install llmbook from (default: LLMBOOK_PIN, HEAD)")
    args = parser.parse_args(argv)
    pin = args.pin or build_pin(ROOT)
    if pin is None:
        parser.error("no --pin, no LLMBOOK_PIN and no git HEAD")
    repo_url = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["repository"][
        "url"
    ]
    project = Project.read(ROOT)
    sources = chapter_sources(ROOT)
    for source in sources:
        nb = runnable_notebook(source, repo_url=repo_url, pin=pin, project=project)
        write_notebook(nb, args.out / source.relative_to(ROOT).with_suffix(".ipynb"))
    print(f"wrote {len(sources)} notebooks under {args.out} (llmbook at {pin})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
