"""Finding the book's chapters and executing them through the build's own jupyter-cache.

The chapter tests and ``jupyter-book build`` share one cache (``_build/.jupyter_cache``): a chapter
executed by either is matched by the other through the hash of its code cells, so CI executes every
chapter once.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / "_build" / ".jupyter_cache"
# A hang guard, not the budget: the 120 s chapter budget is checked by the chapter tests on the
# reference machine, and a slower machine (one core, a busy laptop) must still run every cell.
# Keep equal to ``execute.timeout`` in _config.yml (a test checks).
CELL_TIMEOUT_S = 600


def toc_files() -> list[Path]:
    """Every document the table of contents lists, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries):
        for entry in entries:
            if "file" in entry:  # globs (the generated API pages) hold no chapters
                files.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return [ROOT / f"{f}.md" for f in files]


def is_notebook(path: Path) -> bool:
    """A MyST text notebook declares a kernelspec in its front matter."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if not text.startswith("---"):
        return False
    front = text.split("---", 2)[1]
    return "kernelspec" in (yaml.safe_load(front) or {})


def chapters() -> list[Path]:
    """The executable chapters of the book."""
    return [p for p in toc_files() if is_notebook(p)]


def read_notebook(path: Path):
    """Read a chapter exactly as myst-nb does during the build, so the cache hashes agree."""
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    extensions = config.get("parse", {}).get("myst_enable_extensions", [])
    return read_myst_markdown_notebook(
        path.read_text(encoding="utf-8"), MdParserConfig(enable_extensions=extensions)
    )


@dataclass
class Execution:
    """The outcome of running (or finding cached) one chapter."""

    notebook: object
    seconds: float
    cached: bool
    error: str | None


def execute_chapter(path: Path, *, use_cache: bool = True) -> Execution:
    """Run a chapter top to bottom, or reuse a cached run of exactly this code.

    :param path: the chapter's ``.md`` file.
    :param use_cache: look for and store results in the build's jupyter-cache.
    :returns: the executed notebook, its execution time and any error traceback.
    """
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from jupyter_cache.executors.utils import single_nb_execution

    nb = read_notebook(path)
    cache = get_cache(str(CACHE_DIR)) if use_cache else None
    if cache is not None:
        try:
            record = cache.match_cache_notebook(nb)
        except KeyError:
            record = None
        if record is not None:
            _, executed = cache.merge_match_into_notebook(nb)
            return Execution(executed, float(record.data.get("execution_seconds", 0.0)), True, None)

    start = time.perf_counter()
    result = single_nb_execution(
        nb, cwd=str(path.parent), allow_errors=False, timeout=CELL_TIMEOUT_S, meta_override=True
    )
    seconds = time.perf_counter() - start
    if result.err is not None:
        message = re.sub(r"\x1b\[[0-9;]*m", "", result.exc_string or repr(result.err))
        return Execution(nb, seconds, False, message)
    if cache is not None:
        cache.cache_notebook_bundle(
            CacheBundleIn(nb, str(path), data={"execution_seconds": result.time}),
            check_validity=False,
            overwrite=True,
        )
    return Execution(nb, result.time, False, None)


def error_outputs(nb) -> list[str]:
    """Tracebacks left in an executed notebook's outputs."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"{out.get('ename')}: {out.get('evalue')}")
    return found
