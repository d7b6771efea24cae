"""What a chapter needs installed beside ``llmbook`` and torch, found from its imports.

A chapter's notebook (see ``llmbook_notebooks.py``) installs the packages of the ``book`` and
``test`` extras that the chapter imports, itself or through the ``llmbook`` modules it imports,
followed transitively and lazy imports included, so that a chapter that never touches the sentence
encoder does not download its 88 MB of weights. The versions come from ``pyproject.toml``, and the
torch the notebooks pin from the Makefile, so nothing here repeats them.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = ("book", "test")
"""The extras whose packages a chapter's install cell may add, first match wins."""


@dataclass(frozen=True)
class Project:
    """What the install cell pins, read from the repository's own files."""

    torch_version: str
    """The exact torch the Makefile installs (``TORCH_VERSION``)."""
    torch_range: str
    """The package's torch specifier (``pyproject.toml``), which an installed torch must satisfy."""
    extras: dict[str, str]
    """Canonical distribution name -> requirement string, from :data:`EXTRAS`."""
    core: frozenset[str]
    """Canonical names of the package's own dependencies (installed with it)."""

    @classmethod
    def read(cls, root: Path = ROOT) -> Project:
        """Read the Makefile and ``pyproject.toml`` under ``root``."""
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib

        makefile = (root / "Makefile").read_text(encoding="utf-8")
        match = re.search(r"^TORCH_VERSION\s*:?=\s*(\S+)", makefile, re.MULTILINE)
        if match is None:
            raise RuntimeError("the Makefile defines no TORCH_VERSION")
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        deps = [Requirement(r) for r in project["dependencies"]]
        torch = next(r for r in deps if r.name == "torch")
        extras: dict[str, str] = {}
        for extra in EXTRAS:
            for line in project["optional-dependencies"][extra]:
                extras.setdefault(canonicalize_name(Requirement(line).name), line)
        return cls(
            torch_version=match.group(1),
            torch_range=str(torch.specifier),
            extras=extras,
            core=frozenset(canonicalize_name(r.name) for r in deps),
        )


def _imports(source: str, module: str = "", is_package: bool = False) -> set[str]:
    """Absolute names imported anywhere in ``source`` (inside functions too), with ``from a import
    b`` also giving ``a.b`` (it may be a submodule). Relative imports resolve against ``module``."""
    # Jupyter magics and shell escapes are not Python.
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:  # a cell that shows an error on purpose: its import lines still count
        return set(re.findall(r"^\s*(?:from|import)\s+([\w.]+)", source, re.MULTILINE))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@functools.cache
def _file_imports(path: Path, module: str, is_package: bool) -> frozenset[str]:
    return frozenset(_imports(path.read_text(encoding="utf-8"), module, is_package))


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def _module_file(name: str, root: Path) -> tuple[Path, bool] | None:
    path = root.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py", True
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py"), False
    return None


def third_party_imports(code: list[str], root: Path = ROOT, package: str = "llmbook") -> set[str]:
    """Top-level modules outside the standard library that ``code`` imports, directly or through
    any module of ``package`` it imports (followed transitively, lazy imports included).

    :param code: the sources of a chapter's code cells.
    :param root: the directory that holds ``package``.
    :returns: top-level module names, e.g. ``{"torch", "matplotlib", "transformers"}``.
    """
    todo = set().union(*(_imports(cell) for cell in code)) if code else set()
    seen: set[str] = set()
    found: set[str] = set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        if parts[0] != package:
            found.add(parts[0])
            continue
        # importing a.b.c runs a/__init__.py and a/b/__init__.py as well
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            module = _module_file(prefix, root) if prefix not in seen else None
            seen.add(prefix)
            if module is not None:
                path, is_package = module
                todo |= _file_imports(path, prefix, is_package) - seen
    return {name for name in found if name and name not in sys.stdlib_module_names}


def chapter_requirements(code: list[str], project: Project, root: Path = ROOT) -> list[str]:
    """The extras' requirements a chapter needs beyond ``llmbook`` and torch, sorted.

    A module maps to its distributions through this environment's installed metadata, and to a
    distribution of the same name when it is not installed. Modules no extra declares (IPython,
    which every Jupyter kernel has; optional imports such as wandb) add nothing.
    """
    dists = _distributions()
    wanted: set[str] = set()
    for module in third_party_imports(code, root):
        for dist in [*dists.get(module, []), module]:
            name = canonicalize_name(dist)
            if name in project.extras and name not in project.core and name != "torch":
                wanted.add(name)
    return sorted(project.extras[name] for name in wanted)
