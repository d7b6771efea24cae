"""What a zoo checkpoint's key covers besides the recipe: the training code and the torch version.

A checkpoint is only as current as the code that trained it. :func:`source_digest` hashes the package
sources that determine the trained weights (:data:`TRAINING_SOURCES`), normalised with
:mod:`tokenize` so that comments, blank lines, docstrings and formatting do not change the key while
any change to the code does. The normalisation keeps only the tokens' kinds and text, and rebuilds
f-strings from the source (Python 3.12 splits them into several tokens), so the digest does not
depend on the Python version. :func:`torch_minor` is the torch release series (major.minor): kernels
and initialisation can change between series, not within one.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import tokenize
from pathlib import Path

import torch

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The ``llmbook`` package directory."""

TRAINING_SOURCES = (
    "model",
    "tokenizer",
    "train",
    "data",
    "tasks",
    "align",
    "generate",
    "adapt/lora.py",
    "adapt/token_rows.py",
    "zoo/recipes.py",
    "zoo/registry.py",
)
"""The sources the key covers, relative to the package: every module that building, tokenizing,
batching, training and resuming a zoo model runs (fine-tuning included: the tasks, the chat format,
and generation, which scores a fine-tuned model and, from Part 8 on, samples its training data). Left out on purpose: file I/O that either restores
the exact bytes or refuses (:mod:`llmbook.storage`, :mod:`llmbook.zoo.checkpoint`,
:mod:`llmbook.paths`), this module (it trains nothing), and the package ``__init__`` (its version
string changes nothing). ``tests/zoo/test_key.py`` checks that every module the training path imports
is covered."""

_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
_LAYOUT = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
_FSTART = getattr(tokenize, "FSTRING_START", None)
_FEND = getattr(tokenize, "FSTRING_END", None)


def _tokens(source: str) -> list[tuple[str, str]]:
    # (kind, text) pairs; an f-string becomes one STRING token, as before Python 3.12.
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def at(pos: tuple[int, int]) -> int:
        return offsets[pos[0] - 1] + pos[1]

    out: list[tuple[str, str]] = []
    depth, start = 0, (0, 0)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if _FSTART is not None and tok.type == _FSTART:
            if depth == 0:
                start = tok.start
            depth += 1
            continue
        if depth:
            if tok.type == _FEND:
                depth -= 1
                if depth == 0:
                    out.append(("STRING", source[at(start) : at(tok.end)]))
            continue
        if tok.type in _SKIP:
            continue
        kind = tokenize.tok_name[tok.type]
        out.append((kind, "" if tok.type in _LAYOUT else tok.string))
    return out


def normalised_source(source: str) -> str:
    """Python source reduced to what executes: no comments, blank lines, layout or docstrings.

    A statement made of string literals alone (a docstring, or an attribute's docstring) is dropped.

    :param source: the module's text.
    :returns: one ``KIND text`` line per remaining token.
    """
    statements: list[list[tuple[str, str]]] = [[]]
    for kind, text in _tokens(source):
        statements[-1].append((kind, text))
        if kind == "NEWLINE":
            statements.append([])
    kept = []
    for statement in statements:
        body = [t for t in statement if t[0] not in ("NEWLINE", "INDENT", "DEDENT")]
        if body and all(kind == "STRING" for kind, _ in body):
            statement = [t for t in statement if t[0] in ("INDENT", "DEDENT")]
        kept.extend(statement)
    return "\n".join(f"{kind} {text}" for kind, text in kept)


def _files(root: Path, sources: tuple[str, ...]) -> list[Path]:
    found = []
    for entry in sources:
        path = root / entry
        found.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return sorted(set(found))


@functools.lru_cache(maxsize=8)
def _digest(stamp: tuple) -> str:
    root = Path(stamp[0])
    h = hashlib.sha256()
    for rel, _, _ in stamp[1]:
        text = (root / rel).read_text(encoding="utf-8")
        h.update(rel.encode() + b"\0" + normalised_source(text).encode() + b"\0")
    return h.hexdigest()


def source_digest(root: Path | None = None, sources: tuple[str, ...] = TRAINING_SOURCES) -> str:
    """sha256 of the normalised training sources (see :func:`normalised_source`).

    :param root: the package directory (default: this installed ``llmbook``).
    :param sources: files and folders under ``root`` to cover.
    :returns: 64 hex digits. Cached per file modification time and size.
    :raises FileNotFoundError: when a listed source is missing.
    """
    root = (root or PACKAGE_ROOT).resolve()
    stamp = []
    for path in _files(root, sources):
        stat = path.stat()
        stamp.append((path.relative_to(root).as_posix(), stat.st_mtime_ns, stat.st_size))
    return _digest((str(root), tuple(stamp)))


def torch_minor(version: str | None = None) -> str:
    """The torch release series, ``"major.minor"``.

    :param version: a version string (default: ``torch.__version__``), e.g. ``"2.13.0+cpu"``.
    :returns: e.g. ``"2.13"``.
    :raises ValueError: when the version does not start with ``major.minor``.
    """
    version = str(torch.__version__) if version is None else version
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"torch version: cannot read major.minor from {version!r}")
    return f"{match.group(1)}.{match.group(2)}"
