"""Sphinx extension: serve MathJax from a local copy when ``LLMBOOK_MATHJAX_DIR`` is set.

The hosted site loads MathJax 3 from its CDN (Sphinx's default). An offline build, such as the one
the browser test opens, sets ``LLMBOOK_MATHJAX_DIR`` to a MathJax 3 ``es5`` directory installed from
npm (``make book`` does this); the directory is copied to ``_static/mathjax/`` of the output and
``mathjax_path`` points there. It is kept out of the source ``_static/`` folder on purpose: Jupyter Book
adds every script in that folder to every page.
"""

from __future__ import annotations

import os
from pathlib import Path


def _use_local_mathjax(app, config) -> None:
    root = os.environ.get("LLMBOOK_MATHJAX_DIR", "").strip()
    if not root:
        return
    es5 = Path(root).resolve()
    if not (es5 / "tex-chtml.js").is_file():
        raise RuntimeError(
            f"LLMBOOK_MATHJAX_DIR={root!r} has no tex-chtml.js; point it at mathjax's es5 directory"
        )
    # html_static_path copies the *contents* of each entry into _static/, so add the parent of a
    # folder named "mathjax" that links to es5.
    staging = Path(app.outdir).parent / ".mathjax-static"
    staging.mkdir(parents=True, exist_ok=True)
    link = staging / "mathjax"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(es5, target_is_directory=True)
    config.html_static_path = list(config.html_static_path) + [str(staging)]
    config.mathjax_path = "mathjax/tex-chtml.js"


def setup(app):
    app.connect("config-inited", _use_local_mathjax)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
