"""Text corpora: TinyShakespeare and WikiText-2, verified by sha256, with a mirror and an offline fallback.

Where a corpus comes from, in order: the local mirror (``LLMBOOK_DATA_DIR``), the cache
(``LLMBOOK_CACHE_DIR``), a download from the canonical source; and when all of these fail, a fallback
corpus that ships with Python itself (the text of Python's own help topics), announced by a
:class:`FallbackCorpusWarning` and in :attr:`Corpus.origin` so it is never used silently.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llmbook.paths import cache_dir, data_mirror


@dataclass(frozen=True)
class CorpusFile:
    """One file of a corpus: where it lives in a mirror, and how to fetch and check it."""

    name: str
    """Path inside the mirror and cache, e.g. ``"wikitext-2/valid.txt"``."""
    url: str
    """The canonical download (a text file, or a zip archive holding ``member``)."""
    sha256: str
    """Checksum of the file itself (every corpus is verified, and zoo keys use it)."""
    member: str | None = None
    """Path of the file inside the zip archive at ``url``."""
    archive_sha256: str | None = None
    """Checksum of the zip archive."""


@dataclass(frozen=True)
class Corpus:
    """A loaded corpus and where it came from.

    Introduced in {doc}`/book/part2/02-batching`.
    """

    name: str
    """Corpus and split, e.g. ``"tinyshakespeare"`` or ``"wikitext-2/valid"``."""
    text: str
    """The whole text."""
    origin: str
    """``"mirror"``, ``"cache"``, ``"download"`` or ``"fallback"``."""
    path: Path | None
    """The file read, None for the fallback."""


_WIKITEXT_ZIP = "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip"
_WIKITEXT_ZIP_SHA = "92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c"

CORPORA: dict[str, CorpusFile] = {
    "tinyshakespeare": CorpusFile(
        name="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    "wikitext-2/train": CorpusFile(
        name="wikitext-2/train.txt",
        url=_WIKITEXT_ZIP,
        # The pytorch/examples copy (same bytes as the zip member, like valid and test) publishes it.
        sha256="9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
        member="wikitext-2/wiki.train.tokens",
        archive_sha256=_WIKITEXT_ZIP_SHA,
    ),
    "wikitext-2/valid": CorpusFile(
        name="wikitext-2/valid.txt",
        url=_WIKITEXT_ZIP,
        sha256="f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
        member="wikitext-2/wiki.valid.tokens",
        archive_sha256=_WIKITEXT_ZIP_SHA,
    ),
    "wikitext-2/test": CorpusFile(
        name="wikitext-2/test.txt",
        url=_WIKITEXT_ZIP,
        sha256="d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
        member="wikitext-2/wiki.test.tokens",
        archive_sha256=_WIKITEXT_ZIP_SHA,
    ),
}
"""The corpora llmbook knows, by name: TinyShakespeare and the three WikiText-2 splits."""


class FallbackCorpusWarning(UserWarning):
    """The real corpus was unavailable and the offline fallback corpus is used instead.

    Introduced in {doc}`/book/part2/02-batching`.
    """


class ChecksumError(ValueError):
    """A corpus file does not have the sha256 it should: corrupt, truncated or a different file."""


def sha256_of(data: bytes) -> str:
    """Hex sha256 of some bytes.

    :param data: the bytes.
    :returns: 64 hex digits.
    """
    return hashlib.sha256(data).hexdigest()


def _check(data: bytes, expected: str | None, where: str) -> None:
    if expected is not None and sha256_of(data) != expected:
        raise ChecksumError(
            f"{where}: sha256 {sha256_of(data)[:16]}… does not match the expected {expected[:16]}…; "
            "the file is corrupt, truncated or not the right corpus"
        )


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _download(spec: CorpusFile, timeout: float) -> bytes:
    with urllib.request.urlopen(spec.url, timeout=timeout) as response:  # noqa: S310 (fixed https URLs)
        payload = response.read()
    if spec.member is None:
        _check(payload, spec.sha256, spec.url)
        return payload
    _check(payload, spec.archive_sha256, spec.url)
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        data = archive.read(spec.member)
    _check(data, spec.sha256, f"{spec.url}:{spec.member}")
    return data


def fallback_text() -> str:
    """The offline fallback corpus: Python's own help topics (``pydoc_data.topics``), about half a
    megabyte of English prose and code that ships with every CPython.

    :returns: the text, topics in sorted order separated by blank lines.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"


def load_corpus(name: str, *, download: bool = True, timeout: float = 30.0) -> Corpus:
    """Load a corpus by name, from the mirror, the cache, the network, or the offline fallback.

    :param name: a key of :data:`CORPORA`: ``"tinyshakespeare"``, ``"wikitext-2/train"``,
        ``"wikitext-2/valid"`` or ``"wikitext-2/test"``.
    :param download: try the canonical source when mirror and cache lack the file.
    :param timeout: seconds to wait for the network.
    :returns: the :class:`Corpus`; ``origin == "fallback"`` means the real corpus was unavailable
        (a :class:`FallbackCorpusWarning` says so too).
    :raises KeyError: for an unknown corpus name.
    :raises ChecksumError: when a mirror or cached file has the wrong checksum (never replaced silently).

    Introduced in {doc}`/book/part2/02-batching`.
    """
    if name not in CORPORA:
        raise KeyError(f"unknown corpus {name!r}; known: {sorted(CORPORA)}")
    spec = CORPORA[name]
    mirror = data_mirror()
    if mirror is not None and (mirror / spec.name).is_file():
        path = mirror / spec.name
        data = path.read_bytes()
        _check(data, spec.sha256, str(path))
        return Corpus(name, data.decode("utf-8"), "mirror", path)
    cached = cache_dir() / "data" / spec.name
    if cached.is_file():
        data = cached.read_bytes()
        _check(data, spec.sha256, str(cached))
        return Corpus(name, data.decode("utf-8"), "cache", cached)
    problem = "downloads disabled"
    if download:
        try:
            data = _download(spec, timeout)
        except (OSError, zipfile.BadZipFile, KeyError, ChecksumError) as err:
            problem = f"download from {spec.url} failed ({type(err).__name__}: {err})"
        else:
            _write_atomic(cached, data)
            return Corpus(name, data.decode("utf-8"), "download", cached)
    warnings.warn(
        f"llmbook: corpus {name!r} is not available ({problem}; no mirror in LLMBOOK_DATA_DIR); "
        "using the OFFLINE FALLBACK corpus instead: Python's own help topics (pydoc_data.topics). "
        "Losses and samples will not match the book.",
        FallbackCorpusWarning,
        stacklevel=2,
    )
    return Corpus(name, fallback_text(), "fallback", None)


def load_tinyshakespeare(**kwargs) -> Corpus:
    """TinyShakespeare (about 1.1 MB of plays), the book's pretraining corpus.

    :param kwargs: passed to :func:`load_corpus`.
    :returns: the corpus.

    Introduced in {doc}`/book/part2/02-batching`.
    """
    return load_corpus("tinyshakespeare", **kwargs)


def load_wikitext2(split: str = "valid", **kwargs) -> Corpus:
    """WikiText-2 (Wikipedia articles, word-tokenized with ``<unk>``), one split.

    :param split: ``"train"``, ``"valid"`` or ``"test"``.
    :param kwargs: passed to :func:`load_corpus`.
    :returns: the corpus.
    :raises ValueError: for an unknown split.

    Introduced in {doc}`/book/part2/02-batching`.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split: must be 'train', 'valid' or 'test', got {split!r}")
    return load_corpus(f"wikitext-2/{split}", **kwargs)


def on_real_corpus(source, claim: str) -> bool:
    """Whether a claim that holds only on the real corpus should be checked for this run.

    A chapter asserts what it measured (a loss reached, a sample's wording, a ranking of models). Some
    of these hold on TinyShakespeare and not on the offline fallback corpus, where the book still has
    to run. Guard such an assertion with this function: on the real corpus it returns True and the
    assertion runs; on the fallback it prints a visible note naming the claim and returns False, so
    the claim is skipped out loud, never silently.

    :param source: where the text came from: a :class:`Corpus`, a zoo model (anything with a
        ``fallback`` attribute, see :class:`llmbook.zoo.registry.ZooModel`), or an origin string
        (``"mirror"``, ``"cache"``, ``"download"``, ``"fallback"``).
    :param claim: the claim in a few words, e.g. ``"the byte model's validation loss is below 2"``.
    :returns: True when the real corpus was used.
    :raises TypeError: for a source that says nothing about its corpus.

    Introduced in {doc}`/book/part2/02-batching`.
    """
    if isinstance(source, str):
        fallback = source == "fallback"
    elif isinstance(source, Corpus):
        fallback = source.origin == "fallback"
    elif hasattr(source, "fallback"):
        fallback = bool(source.fallback)
    else:
        raise TypeError(
            f"source: expected a Corpus, a zoo model or an origin string, got {type(source).__name__}"
        )
    if fallback:
        print(
            f"NOTE: not checked on the offline fallback corpus: {claim} "
            "(this holds on TinyShakespeare; see the data section of the README)"
        )
    return not fallback
