"""The production path: a byte-level BPE trained and run by Hugging Face ``tokenizers`` (Rust),
behind the same interface as :class:`~llmbook.tokenizer.byte.ByteTokenizer` and
:class:`~llmbook.tokenizer.bpe.BPETokenizer`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from llmbook.tokenizer.bpe import bytes_to_unicode
from llmbook.tokenizer.byte import DEFAULT_SPECIALS, SpecialTokens


class HFTokenizer(SpecialTokens):
    """A ``tokenizers.Tokenizer`` with the book's tokenizer interface.

    :meth:`train` builds GPT-2's byte-level BPE: the ``ByteLevel`` pre-tokenizer (the GPT-2 regex,
    bytes shown as printable characters), all 256 bytes in the initial alphabet so that nothing is
    ever out of vocabulary, and ``BpeTrainer`` for the merges. ``tokenizers`` gives the specials the
    *first* ids (0, 1, 2, ...), then the bytes, then the merges; ask :attr:`bos_id` and friends rather
    than assuming numbers. The whole tokenizer is one JSON string (``tokenizer.json``), which
    :meth:`to_dict` and :meth:`save` store verbatim, so it travels with a model checkpoint.

    :param tokenizer: a ``tokenizers.Tokenizer`` (byte-level, for :meth:`decode_bytes` to be exact).

    Introduced in {doc}`/book/part4/01-bpe`.
    """

    def __init__(self, tokenizer) -> None:
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            raise ValueError(
                f"tokenizer: expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}"
            )
        self.tokenizer = tokenizer
        added = tokenizer.get_added_tokens_decoder()  # id -> AddedToken
        self.special_ids = {t.content: i for i, t in sorted(added.items()) if t.special}
        self.specials = tuple(self.special_ids)
        self._special_set = frozenset(self.special_ids.values())
        self._byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
        self._id_bytes: dict[int, bytes] = {}

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

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Turn text into ids; special tokens' text becomes their ids (``tokenizers``' behaviour).

        :param text: the text.
        :param bos: prepend the BOS id.
        :param eos: append the EOS id.
        :returns: a list of ids.
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Iterable[str], *, bos: bool = False, eos: bool = False):
        """Encode several texts (in parallel, in Rust).

        :param texts: strings.
        :param bos: prepend BOS to each.
        :param eos: append EOS to each.
        :returns: a list of id lists.
        """
        out = [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]
        for ids in out:
            if bos:
                ids.insert(0, self.bos_id)
            if eos:
                ids.append(self.eos_id)
        return out

    def _bytes_of(self, i: int) -> bytes:
        b = self._id_bytes.get(i)
        if b is None:
            token = self.tokenizer.id_to_token(i)
            if token is None:
                raise ValueError(f"ids: {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            try:
                b = bytes(self._byte_of[ch] for ch in token)
            except KeyError:
                b = token.encode("utf-8")  # an added, non-byte-level token
            self._id_bytes[i] = b
        return b

    def decode_bytes(self, ids: Iterable[int] | torch.Tensor, *, specials: str = "skip") -> bytes:
        """Turn ids back into the exact bytes (through the byte-level alphabet).

        :param ids: ids, as a list or a 1-D tensor.
        :param specials: ``"skip"``, ``"keep"`` or ``"error"``, as for the other tokenizers.
        :returns: the bytes.
        :raises ValueError: on an id outside the vocabulary, or a special id under ``"error"``.
        """
        ids = self._ids_to_decode(ids, specials)
        parts = []
        for i in ids:
            if i in self._special_set:
                if specials == "keep":
                    parts.append(self.tokenizer.id_to_token(i).encode("utf-8"))
                elif specials == "error":
                    raise ValueError(f"ids: special token id {i} where bytes were expected")
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"ids: {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            parts.append(self._bytes_of(i))
        return b"".join(parts)

    def decode(
        self, ids: Iterable[int] | torch.Tensor, *, errors: str = "replace", specials: str = "skip"
    ) -> str:
        """Turn ids into text.

        :param ids: ids, as a list or a 1-D tensor.
        :param errors: how to treat invalid UTF-8, as in :meth:`bytes.decode`.
        :param specials: see :meth:`decode_bytes`.
        :returns: the text.
        """
        return self.decode_bytes(ids, specials=specials).decode("utf-8", errors=errors)

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
