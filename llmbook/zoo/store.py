"""Published checkpoints: the GPU-trained zoo, fetched by key from a durable store.

A checkpoint directory (``<name>-<profile>-<key>``, see :func:`~llmbook.zoo.registry.checkpoint_dir`)
is published as two files side by side under one base URL:

- ``<name>-<profile>-<key>.tar``: the directory, as a deterministic tar (sorted members, no owners, no
  times), so the same checkpoint always gives the same archive;
- ``<name>-<profile>-<key>.tar.sha256``: its sha256, in ``sha256sum`` format.

The base URL comes from ``LLMBOOK_ZOO_URL`` (for the book's GitHub repository it is the download URL of
the release that holds the assets, ``https://github.com/<owner>/<repo>/releases/download/zoo``). The
key in the name is the code-aware zoo key, so a checkpoint is never fetched for code, data or a torch
release that did not train it. :func:`load_or_train` is the entry point chapters use
(``llmbook.zoo.load_or_train``): it fetches a published checkpoint when there is one and no local one,
then loads (or trains) through :func:`llmbook.zoo.registry.load_or_train`, and notes the checkpoint in
the record of the run in progress (see :mod:`llmbook.runinfo`).

Introduced in {doc}`/book/part2/06-training-loop`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from llmbook.paths import cache_dir, ensure_writable_dir
from llmbook.runinfo import note_checkpoint
from llmbook.zoo.checkpoint import CheckpointError, read_meta
from llmbook.zoo.recipes import ResolvedRecipe, resolve
from llmbook.zoo.registry import ZooModel, checkpoint_dir
from llmbook.zoo.registry import load_or_train as _load_or_train_locally

URL_ENV = "LLMBOOK_ZOO_URL"
"""The environment variable that names the store's base URL (unset: no store)."""

MAX_ARCHIVE_BYTES = 8 << 30
"""A published archive larger than this is refused (a guard against a wrong URL, not a format limit)."""

_CHUNK = 1 << 20
_SHA256 = re.compile(r"^([0-9a-f]{64})(?:\s|$)")


class StoreWarning(UserWarning):
    """The store could not be reached (the checkpoint is trained instead).

    Introduced in {doc}`/book/part2/06-training-loop`.
    """


@dataclass(frozen=True)
class Published:
    """One checkpoint packed for the store.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """

    recipe: str
    """The recipe name."""
    archive: Path
    """The ``.tar`` file."""
    checksum: Path
    """The ``.tar.sha256`` file beside it."""
    sha256: str
    """The archive's sha256 (hex)."""
    size: int
    """The archive's size in bytes."""


def store_url(url: str | None = None) -> str | None:
    """The store's base URL: ``url`` when given, else ``LLMBOOK_ZOO_URL``; None when neither is set.

    :param url: an explicit base URL (``http://``, ``https://`` or ``file://``).
    :returns: the URL without a trailing slash, or None.
    :raises ValueError: for a URL of another scheme, naming ``LLMBOOK_ZOO_URL`` when it came from there.
    """
    source = "url"
    if url is None:
        url, source = os.environ.get(URL_ENV, "").strip() or None, URL_ENV
    if url is None:
        return None
    if not url.startswith(("http://", "https://", "file://")):
        raise ValueError(f"{source}: expected an http(s):// or file:// URL, got {url!r}")
    return url.rstrip("/")


def archive_name(recipe: ResolvedRecipe) -> str:
    """The archive's file name in the store: the checkpoint directory's name plus ``.tar``.

    :param recipe: the resolved recipe.
    :returns: e.g. ``"shakespeare-byte-gpu-0123456789abcdef.tar"``.
    """
    return checkpoint_dir(recipe, Path(".")).name + ".tar"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pack(directory: str | Path, out_dir: str | Path) -> tuple[Path, str]:
    """Write a checkpoint directory as a deterministic tar, and its ``.sha256`` beside it.

    Members are the directory's regular files (temporaries skipped), sorted, under the directory's
    name, with mode 0644, owner 0 and time 0: packing the same checkpoint twice gives the same bytes.

    :param directory: the checkpoint directory (it must hold ``checkpoint.json``).
    :param out_dir: where the two files go (created when missing).
    :returns: ``(archive path, sha256 hex)``.
    :raises CheckpointError: when the directory is not a readable checkpoint.
    """
    directory = Path(directory)
    read_meta(directory)  # a broken checkpoint is never published
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / (directory.name + ".tar")
    files = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.is_symlink() and ".tmp" not in p.name
    )
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(f"{directory.name}/{path.name}")
            info.size = path.stat().st_size
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = (
                0o644,
                0,
                0,
                0,
                "",
                "",
            )
            with open(path, "rb") as f:
                tar.addfile(info, f)
    sha = _file_sha256(archive)
    archive.with_name(archive.name + ".sha256").write_text(f"{sha}  {archive.name}\n")
    return archive, sha


def publish(names, profile: str | None, out_dir: str | Path, *, root: Path | None = None):
    """Pack the local checkpoints of ``names`` (one profile) for upload to the store.

    :param names: recipe names.
    :param profile: ``"cpu"``, ``"gpu"`` or None for the default profile.
    :param out_dir: where the archives and checksums go.
    :param root: cache root (default: :func:`llmbook.paths.cache_dir`).
    :returns: ``(published, missing)``: a :class:`Published` per checkpoint found, and the names of
        recipes that have no local checkpoint of the current key.
    """
    published, missing = [], []
    for name in names:
        recipe = resolve(name, profile)
        directory = checkpoint_dir(recipe, root)
        if not directory.is_dir():
            missing.append(name)
            continue
        archive, sha = pack(directory, out_dir)
        published.append(
            Published(
                name,
                archive,
                archive.with_name(archive.name + ".sha256"),
                sha,
                archive.stat().st_size,
            )
        )
    return published, missing


def _open(url: str, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "llmbook"})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked in store_url)


def _published_sha256(url: str, timeout: float) -> str | None:
    """The sha256 the store publishes at ``url``, None when it has none (404 or a missing file)."""
    try:
        with _open(url, timeout) as response:
            text = response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise
    except urllib.error.URLError as err:
        if url.startswith("file://") and isinstance(err.reason, FileNotFoundError | OSError):
            return None
        raise
    match = _SHA256.match(text.strip().lower())
    if match is None:
        raise CheckpointError(f"{url}: not a sha256 checksum file (it starts {text[:40]!r})")
    return match.group(1)


def is_published(recipe: ResolvedRecipe, *, url: str | None = None, timeout: float = 30.0) -> bool:
    """Whether the store holds the checkpoint of ``recipe`` (its checksum file exists).

    :param recipe: the resolved recipe.
    :param url: the store's base URL (default: ``LLMBOOK_ZOO_URL``).
    :param timeout: seconds per request.
    :returns: True when published.
    :raises ValueError: when no store URL is set.
    :raises OSError: when the store cannot be reached (a network error, an HTTP error other than 404).
    """
    base = store_url(url)
    if base is None:
        raise ValueError(f"{URL_ENV}: no checkpoint store is set")
    return _published_sha256(f"{base}/{archive_name(recipe)}.sha256", timeout) is not None


def _safe_members(tar: tarfile.TarFile, top: str) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        parts = m.name.split("/")
        if not m.isfile() or len(parts) != 2 or parts[0] != top or parts[1] in ("", ".", ".."):
            raise CheckpointError(
                f"{top}.tar: unexpected member {m.name!r} (only the files of {top}/ may be in it)"
            )
    return members


def fetch(
    recipe: ResolvedRecipe,
    *,
    url: str | None = None,
    root: Path | None = None,
    timeout: float = 60.0,
) -> Path | None:
    """Download the published checkpoint of ``recipe`` into the cache, verified, when the store has it.

    The archive's sha256 must equal the published one, and the unpacked checkpoint's own checksums
    and key must hold, before it is moved into place (atomically: a half-downloaded checkpoint is never
    seen). A checkpoint already in the cache is left alone.

    :param recipe: the resolved recipe.
    :param url: the store's base URL (default: ``LLMBOOK_ZOO_URL``).
    :param root: cache root (default: :func:`llmbook.paths.cache_dir`).
    :param timeout: seconds per request.
    :returns: the checkpoint directory, or None when no store is set, the store does not have this
        key, or it cannot be reached (then with a :class:`StoreWarning`).
    :raises CheckpointError: when the download does not match its published sha256, or the archive is
        not a checkpoint of this key; nothing is installed then.
    """
    base = store_url(url)
    if base is None:
        return None
    root = ensure_writable_dir(root or cache_dir())
    directory = checkpoint_dir(recipe, root)
    if directory.is_dir():
        return directory
    name = archive_name(recipe)
    try:
        expected = _published_sha256(f"{base}/{name}.sha256", timeout)
    except (urllib.error.URLError, OSError) as err:
        warnings.warn(
            f"{base}: checkpoint store unreachable ({err}); training instead",
            StoreWarning,
            stacklevel=2,
        )
        return None
    if expected is None:
        return None
    zoo = ensure_writable_dir(directory.parent)
    with tempfile.TemporaryDirectory(dir=zoo, prefix=f".{name}.download-") as tmp:
        archive = Path(tmp) / name
        digest, size = hashlib.sha256(), 0
        try:
            with _open(f"{base}/{name}", timeout) as response, open(archive, "wb") as out:
                while chunk := response.read(_CHUNK):
                    size += len(chunk)
                    if size > MAX_ARCHIVE_BYTES:
                        raise CheckpointError(
                            f"{base}/{name}: larger than {MAX_ARCHIVE_BYTES} bytes; refused"
                        )
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as err:
            warnings.warn(
                f"{base}/{name}: download failed ({err}); training instead",
                StoreWarning,
                stacklevel=2,
            )
            return None
        got = digest.hexdigest()
        if got != expected:
            raise CheckpointError(
                f"{base}/{name}: sha256 {got} does not match the published {expected}; nothing was installed"
            )
        with tarfile.open(archive) as tar:
            members = _safe_members(tar, directory.name)
            unpacked = Path(tmp) / "unpacked"
            for member in members:
                target = unpacked / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        staged = unpacked / directory.name
        meta = read_meta(staged)  # checkpoint.json parses and names its files' checksums
        for file, sha in meta.get("sha256", {}).items():
            if not (staged / file).is_file() or _file_sha256(staged / file) != sha:
                raise CheckpointError(
                    f"{base}/{name}: {file} does not match the sha256 in its checkpoint.json"
                )
        if meta.get("key") != recipe.key:
            raise CheckpointError(
                f"{base}/{name}: the checkpoint inside has key {meta.get('key')!r}, not {recipe.key!r}"
            )
        try:
            os.replace(staged, directory)
        except OSError:
            if (
                not directory.is_dir()
            ):  # another process installing the same checkpoint won the race
                raise
    return directory


def load_or_train(
    name: str,
    profile: str | None = None,
    *,
    device: torch.device | str | None = None,
    root: Path | None = None,
    retrain: bool = False,
    progress: bool = True,
    log_every: int = 0,
    url: str | None = None,
) -> ZooModel:
    """A trained model for a recipe: from the local cache, else from the checkpoint store, else trained.

    The same as :func:`llmbook.zoo.registry.load_or_train` (see there for keys, the fallback corpus,
    locking and corrupt checkpoints), with two additions: when there is no local checkpoint and a store
    is set (``url`` or ``LLMBOOK_ZOO_URL``), the published checkpoint of the same key is fetched first
    (:func:`fetch`); and the model is noted in the record of the run in progress
    (:func:`llmbook.runinfo.note_checkpoint`), with its key, where it came from and its metrics.

    :param name: the recipe name (see :data:`llmbook.zoo.recipes.RECIPES`).
    :param profile: ``"cpu"``, ``"gpu"`` or None for the default.
    :param device: where to train or load.
    :param root: cache root (default: :func:`llmbook.paths.cache_dir`).
    :param retrain: train even when a checkpoint exists (nothing is fetched then).
    :param progress: show a progress bar while training.
    :param log_every: print a log line every this many steps while training (0: never).
    :param url: the store's base URL (default: ``LLMBOOK_ZOO_URL``; unset: no store).
    :returns: the :class:`~llmbook.zoo.registry.ZooModel`.
    :raises CheckpointError: when a fetched checkpoint fails its checksums.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    fetched = None
    if not retrain:
        recipe = resolve(name, profile)
        if not checkpoint_dir(recipe, root).is_dir():
            fetched = fetch(recipe, url=url, root=root)
    zoo = _load_or_train_locally(
        name,
        profile,
        device=device,
        root=root,
        retrain=retrain,
        progress=progress,
        log_every=log_every,
    )
    source = "trained" if zoo.trained_now else ("fetched" if fetched == zoo.path else "cache")
    note_checkpoint(
        {
            "recipe": name,
            "profile": zoo.recipe.profile,
            "key": zoo.recipe.key,
            "source": source,
            "fallback": zoo.fallback,
            "metrics": json.loads(json.dumps(zoo.meta.get("metrics", {}), default=str)),
        }
    )
    return zoo
