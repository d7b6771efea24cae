"""Build the API reference alone: sphinx-autodoc2 with the book's own settings, no chapter executed.

The API-reference tests need only the generated ``llmbook`` pages, not the whole book (which executes
every chapter). This builds a throwaway Sphinx project whose autodoc2 and MyST settings are read from
``_config.yml``, so the pages the tests read are rendered exactly as the book renders them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.book.chapters import ROOT

CONF = """\
import json
settings = json.loads({settings!r})
globals().update(settings)
extensions = ["myst_parser", "autodoc2"]
project = "llmbook API"
html_theme = "basic"
suppress_warnings = ["myst.xref_missing", "ref.doc", "toc.not_included"]
"""

INDEX = """\
# API

```{toctree}
api/llmbook/llmbook
```
"""


def book_settings(confdir: Path) -> dict:
    """The autodoc2 and MyST settings of the book (``_config.yml``), as Sphinx config values.

    :param confdir: where the throwaway ``conf.py`` lives (autodoc2 wants paths relative to it).
    :returns: config name to value; ``autodoc2_packages`` points at this checkout's package.
    """
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    sphinx = config["sphinx"]["config"]
    settings = {k: v for k, v in sphinx.items() if k.startswith("autodoc2_")}
    settings["autodoc2_packages"] = [
        {**p, "path": os.path.relpath(ROOT / p["path"], confdir)}
        for p in settings["autodoc2_packages"]
    ]
    settings["autodoc2_output_dir"] = "api"
    settings.pop("autodoc2_index_template", None)
    # linkify needs an extra package and matters for prose only.
    extensions = config.get("parse", {}).get("myst_enable_extensions", [])
    settings["myst_enable_extensions"] = [e for e in extensions if e != "linkify"]
    return settings


def build_api_reference(out: Path) -> Path:
    """Render the API pages of ``llmbook`` into ``out`` (about half a minute).

    :param out: an empty working directory.
    :returns: the folder holding one HTML page per module (``<out>/html/api/llmbook``).
    :raises RuntimeError: when Sphinx fails, with its output.
    """
    import json

    src = out / "src"
    src.mkdir(parents=True)
    (src / "conf.py").write_text(CONF.format(settings=json.dumps(book_settings(src))))
    (src / "index.md").write_text(INDEX)
    html = out / "html"
    run = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-q", str(src), str(html)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    # An autodoc2 configuration warning means pages silently missing: fail loudly instead.
    if run.returncode != 0 or "[autodoc2" in run.stderr:
        raise RuntimeError(f"sphinx failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    return html / "api" / "llmbook"
