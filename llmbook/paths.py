"""Where llmbook keeps downloads and checkpoints, and where it finds a local mirror of the corpora."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """The root for downloads and zoo checkpoints.

    ``LLMBOOK_CACHE_DIR`` when set; otherwise the user cache directory: ``$XDG_CACHE_HOME/llmbook`` or
    ``~/.cache/llmbook`` on Linux, ``~/Library/Caches/llmbook`` on macOS, ``%LOCALAPPDATA%\\llmbook``
    on Windows. Created on first use.

    :returns: the directory.

    Introduced in {doc}`/book/part2/02-batching`.
    """
    env = os.environ.get("LLMBOOK_CACHE_DIR", "").strip()
    if env:
        root = Path(env).expanduser()
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Caches" / "llmbook"
    elif os.name == "nt":
        root = Path(os.environ.get("LOCALAPPDATA", Path.home())) / "llmbook"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmbook"
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_mirror() -> Path | None:
    """The local mirror of the corpora named by ``LLMBOOK_DATA_DIR``, if set.

    :returns: the directory, or None when the variable is unset or empty.
    :raises FileNotFoundError: when the variable names a directory that does not exist.

    Introduced in {doc}`/book/part2/02-batching`.
    """
    env = os.environ.get("LLMBOOK_DATA_DIR", "").strip()
    if not env:
        return None
    path = Path(env).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"LLMBOOK_DATA_DIR={env!r} is not a directory")
    return path
