"""The byte-level tokenizer: every UTF-8 byte is a token, plus a few special tokens above 255."""

from __future__ import annotations

from collections.abc import Sequence

from llmbook.tokenizer.base import DEFAULT_SPECIALS, Tokenizer


class ByteTokenizer(Tokenizer):
    """Bytes 0–255 are ids 0–255; special tokens get the ids from 256 up.

    The vocabulary never misses: any string, in any script, and any byte string at all encodes, and
    :meth:`decode_bytes` gives back exactly the bytes that went in. The price is length: one token per
    byte, so non-ASCII text costs 2–4 tokens a character (Part 4's BPE fixes that).

    Special-token strings inside a text are ordinary text unless ``allowed_special`` names them (the
    contract of :class:`~llmbook.tokenizer.base.Tokenizer`): ``"<|eos|>"`` encodes as its seven bytes.
    :meth:`decode` handles invalid UTF-8 with Python's codec error handlers (``errors="replace"`` by
    default); use :meth:`decode_bytes` when you need the raw bytes.

    :param specials: the special tokens, in id order; the defaults are BOS, EOS and PAD. Later parts
        append chat tokens (user and assistant turns).

    Introduced in {doc}`/book/part2/01-byte-tokenizer`.
    """

    n_bytes = 256
    _accepts_bytes = True

    def __init__(self, specials: Sequence[str] = DEFAULT_SPECIALS) -> None:
        specials = self._checked_specials(specials)
        pieces: list[bytes | None] = [bytes([b]) for b in range(self.n_bytes)]
        pieces += [None] * len(specials)
        self._set_vocabulary({tok: self.n_bytes + i for i, tok in enumerate(specials)}, pieces)

    def _encode_ordinary(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def _join_ordinary(self, ids: list[int]) -> bytes | None:
        try:
            return bytes(ids)  # ids 0..255 are the bytes themselves; any other id raises
        except (ValueError, TypeError):
            return None

    def to_dict(self) -> dict:
        """A JSON description, saved next to checkpoints.

        :returns: ``{"type": "byte", "specials": [...]}``.
        """
        return {"type": "byte", "specials": list(self.specials)}

    @classmethod
    def from_dict(cls, data: dict) -> ByteTokenizer:
        """Rebuild a tokenizer from :meth:`to_dict`.

        :param data: the dict.
        :returns: the tokenizer.
        :raises ValueError: when the dict does not describe a byte tokenizer.
        """
        if not isinstance(data, dict) or data.get("type") != "byte":
            got = data.get("type") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"type: expected 'byte', got {got!r}")
        return cls(data.get("specials", DEFAULT_SPECIALS))

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, specials={self.specials})"
