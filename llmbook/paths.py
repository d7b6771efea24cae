"""Where llmbook keeps downloads and checkpoints, and where it finds a local mirror of the corpora."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


class CacheDirError(RuntimeError):
    """The cache directory is missing permissions, is a file, or cannot be created.

    Introduced in {doc}`/book/part2/02-batching`.
    """


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that it is a directory this process can write to.

    The check creates and removes a temporary file, so a read-only mount or a directory without write
    permission is caught before any work (a training run) that would only fail when it saves.

    :param path: the directory.
    :returns: the directory as a :class:`~pathlib.Path`.
    :raises CacheDirError: when the path is a file, cannot be created, or is not writable; the one-line
        message names the path and ``LLMBOOK_CACHE_DIR``.

    Introduced in {doc}`/book/part2/02-batching`.
    """
    path = _make_dir(Path(path).expanduser())
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CacheDirError(
            f"cache directory {str(path)!r} is not writable ({_why(err)}); {_HINT}"
        ) from err
    return path


_HINT = "set LLMBOOK_CACHE_DIR to a writable directory"


def _why(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _make_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise CacheDirError(f"cache directory {str(path)!r} is a file, not a directory; {_HINT}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheDirError(
            f"cannot create cache directory {str(path)!r} ({_why(err)}); {_HINT}"
        ) from err
    return path


def cache_dir() -> Path:
    """The root for downloads and zoo checkpoints.

    ``LLMBOOK_CACHE_DIR`` when set; otherwise the user cache directory: ``$XDG_CACHE_HOME/llmbook`` or
    ``~/.cache/llmbook`` on Linux, ``~/Library/Caches/llmbook`` on macOS, ``%LOCALAPPDATA%\\llmbook``
    on Windows. Created on first use.

    :returns: the directory.
    :raises CacheDirError: when the directory is a file or cannot be created.

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
    return _make_dir(root)


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
