"""The production path: a byte-level BPE trained and run by Hugging Face ``tokenizers`` (Rust),
behind the same interface as :class:`~llmbook.tokenizer.byte.ByteTokenizer` and
:class:`~llmbook.tokenizer.bpe.BPETokenizer`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from llmbook.tokenizer.base import DEFAULT_SPECIALS, Tokenizer
from llmbook.tokenizer.bpe import bytes_to_unicode


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` with the book's tokenizer interface.

    :meth:`train` builds GPT-2's byte-level BPE: the ``ByteLevel`` pre-tokenizer (the GPT-2 regex,
    bytes shown as printable characters), all 256 bytes in the initial alphabet so that nothing is
    ever out of vocabulary, and ``BpeTrainer`` for the merges. ``tokenizers`` gives the specials the
    *first* ids (0, 1, 2, ...), then the bytes, then the merges; ask :attr:`bos_id` and friends rather
    than assuming numbers. The whole tokenizer is one JSON string (``tokenizer.json``), which
    :meth:`to_dict` and :meth:`save` store verbatim, so it travels with a model checkpoint.

    **Special tokens.** A bare ``tokenizers.Tokenizer`` reads the text of every added token as its id,
    whatever ``add_special_tokens`` says (that flag only controls the post-processor's template). This
    wrapper keeps the contract of :class:`~llmbook.tokenizer.base.Tokenizer` instead: ordinary text is
    encoded by a copy of the tokenizer that does not know its special tokens, so ``<|eos|>`` in a text
    is pre-tokenized and merged like any other characters; the strings named in ``allowed_special``
    are cut out first and become their ids, and the text between them encodes as it would alone.

    :param tokenizer: a ``tokenizers.Tokenizer`` (byte-level, for :meth:`decode_bytes` to be exact).

    :ivar tokenizer: the wrapped ``tokenizers.Tokenizer``, unchanged (its own ``encode`` parses specials).

    Introduced in {doc}`/book/part4/01-bpe`.
    """

    def __init__(self, tokenizer) -> None:
        import tokenizers

        if not isinstance(tokenizer, tokenizers.Tokenizer):
            raise ValueError(
                f"tokenizer: expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}"
            )
        self.tokenizer = tokenizer
        added = tokenizer.get_added_tokens_decoder()  # id -> AddedToken
        self._set_vocabulary({t.content: i for i, t in sorted(added.items()) if t.special}, None)
        self._plain = _without_special_tokens(tokenizer)

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        *,
        special_tokens: Sequence[str] = DEFAULT_SPECIALS,
        min_frequency: int = 0,
        progress: bool = False,
    ) -> HFTokenizer:
        """Train a byte-level BPE with ``tokenizers``' ``BpeTrainer``, in-process.

        :param text: the training text, or an iterable of documents (streamed, not held in memory).
        :param vocab_size: the total vocabulary size, specials and the 256 bytes included.
        :param special_tokens: the specials (they get ids 0, 1, ...).
        :param min_frequency: stop merging pairs seen fewer times than this.
        :param progress: show ``tokenizers``' progress bar.
        :returns: the trained tokenizer.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        special_tokens = list(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise ValueError(f"vocab_size: must be an integer, got {vocab_size!r}")
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(
                f"vocab_size: must be >= {256 + len(special_tokens)} (256 bytes + specials), "
                f"got {vocab_size}"
            )
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=progress,
        )
        docs = [text] if isinstance(text, str) else text
        tokenizer.train_from_iterator(docs, trainer=trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        """All ids: bytes, merges and specials."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if len(texts) == 1:  # one text needs no thread pool (and forks stay quiet afterwards)
            out = [self._plain.encode(texts[0], add_special_tokens=False).ids]
        else:
            out = [e.ids for e in self._plain.encode_batch(texts, add_special_tokens=False)]
        for ids in out:
            if not self._special_set.isdisjoint(ids):
                # Only a model that can emit a special token's vocabulary entry by itself gets here
                # (one with ignore_merges, or a one-character special): refuse rather than forge.
                found = sorted(self._special_set.intersection(ids))[0]
                raise ValueError(
                    f"specials: this tokenizers model turns ordinary text into the special id {found}"
                )
        return out

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._encode_ordinary_batch([text])[0]

    def _pieces(self) -> list[bytes | None]:
        if self._id_pieces is None:
            byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
            pieces: list[bytes | None] = []
            for i in range(self.tokenizer.get_vocab_size(with_added_tokens=True)):
                token = self.tokenizer.id_to_token(i)
                if token is None or i in self._special_set:
                    pieces.append(None)  # a special, or a hole in the ids
                elif all(ch in byte_of for ch in token):
                    pieces.append(bytes(byte_of[ch] for ch in token))
                else:
                    pieces.append(token.encode("utf-8"))  # an added, non-byte-level token
            self._id_pieces = pieces
        return self._id_pieces

    def to_dict(self) -> dict:
        """The tokenizer as a dict holding ``tokenizers``' own JSON string, unchanged.

        :returns: ``{"type": "hf-bpe", "tokenizer_json": "..."}``.
        """
        return {"type": "hf-bpe", "tokenizer_json": self.tokenizer.to_str()}

    @classmethod
    def from_dict(cls, data: dict) -> HFTokenizer:
        """Rebuild from :meth:`to_dict`.

        :param data: the dict.
        :returns: the tokenizer.
        :raises ValueError: when the dict is not an ``hf-bpe`` description or its JSON is broken.
        """
        from tokenizers import Tokenizer

        if not isinstance(data, dict) or data.get("type") != "hf-bpe":
            got = data.get("type") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"type: expected 'hf-bpe', got {got!r}")
        blob = data.get("tokenizer_json")
        if not isinstance(blob, str):
            raise ValueError("tokenizer_json: missing, or not a string")
        try:
            return cls(Tokenizer.from_str(blob))
        except Exception as err:  # tokenizers raises its own Exception subclass
            raise ValueError(f"tokenizer_json: not a valid tokenizers JSON ({err})") from None

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` (a directory gets one inside it).

        :param path: a file, or an existing directory.
        :returns: the file written.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        path.write_text(self.tokenizer.to_str(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> HFTokenizer:
        """Read a ``tokenizer.json`` (or the one inside a directory).

        :param path: the file or directory.
        :returns: the tokenizer.
        :raises ValueError: when the file is not a valid ``tokenizers`` JSON.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        text = path.read_text(encoding="utf-8")
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        try:
            return cls.from_dict({"type": "hf-bpe", "tokenizer_json": text})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, specials={self.specials})"


def _without_special_tokens(tokenizer):
    """A copy of ``tokenizer`` that does not know its special added tokens.

    ``tokenizers`` cuts every added token out of the text before anything else, whatever
    ``add_special_tokens`` says (that flag is about the post-processor's template). The copy leaves
    the special strings to the pre-tokenizer and the merges, as ordinary text, and encodes everything
    else exactly as the original does.
    """
    import tokenizers

    data = json.loads(tokenizer.to_str())
    data["added_tokens"] = [t for t in data.get("added_tokens") or [] if not t.get("special")]
    plain = tokenizers.Tokenizer.from_str(json.dumps(data))
    plain.no_padding()
    plain.no_truncation()
    return plain
