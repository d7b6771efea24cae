"""The byte-level tokenizer: every UTF-8 byte is a token, plus a few special tokens above 255."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

DEFAULT_SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")
"""The special tokens every byte tokenizer has, in id order after the 256 byte ids."""
SPECIAL_POLICIES = ("skip", "keep", "error")
"""What :meth:`ByteTokenizer.decode` may do with special ids."""


class SpecialTokens:
    """The special-token ids every tokenizer of the book exposes, looked up in ``self.special_ids``.

    A tokenizer sets ``special_ids`` (special token text to id) and inherits ``bos_id``, ``eos_id`` and
    ``pad_id``; asking for a special it does not have raises a :class:`ValueError`.

    Introduced in {doc}`/book/part2/01-byte-tokenizer`.
    """

    special_ids: dict[str, int]

    @staticmethod
    def _checked_specials(specials: Sequence[str]) -> tuple[str, ...]:
        """The special tokens as a tuple, after checking they are distinct, non-empty strings."""
        specials = tuple(specials)
        if len(set(specials)) != len(specials):
            raise ValueError(f"specials: duplicate special tokens in {specials}")
        for tok in specials:
            if not isinstance(tok, str) or not tok:
                raise ValueError(
                    f"specials: each special token must be a non-empty string, got {tok!r}"
                )
        return specials

    @staticmethod
    def _ids_to_decode(ids: Iterable[int] | torch.Tensor, specials: str) -> Iterable[int]:
        """Check a decode's ``specials`` policy and turn a tensor of ids into a list."""
        if specials not in SPECIAL_POLICIES:
            raise ValueError(f"specials: must be one of {SPECIAL_POLICIES}, got {specials!r}")
        return ids.tolist() if isinstance(ids, torch.Tensor) else ids

    def _special(self, token: str) -> int:
        try:
            return self.special_ids[token]
        except KeyError:
            raise ValueError(f"specials: this tokenizer has no {token!r} token") from None

    @property
    def bos_id(self) -> int:
        """Id of the beginning-of-sequence token."""
        return self._special("<|bos|>")

    @property
    def eos_id(self) -> int:
        """Id of the end-of-sequence token."""
        return self._special("<|eos|>")

    @property
    def pad_id(self) -> int:
        """Id of the padding token."""
        return self._special("<|pad|>")


class ByteTokenizer(SpecialTokens):
    """Bytes 0–255 are ids 0–255; special tokens get the ids from 256 up.

    The vocabulary never misses: any string, in any script, and any byte string at all encodes, and
    :meth:`decode_bytes` gives back exactly the bytes that went in. The price is length: one token per
    byte, so non-ASCII text costs 2–4 tokens a character (Part 4's BPE fixes that).

    **Invalid UTF-8 on decode.** A model can emit any byte sequence, including ones that are not UTF-8
    (a multi-byte character cut in half). :meth:`decode` follows Python's codec error handlers: the
    default ``errors="replace"`` puts U+FFFD (�) where a byte sequence is invalid, ``"strict"`` raises
    :class:`UnicodeDecodeError`, and ``"backslashreplace"`` shows the bytes as ``\\xNN``. Use
    :meth:`decode_bytes` when you need the raw bytes.

    :param specials: the special tokens, in id order; the defaults are BOS, EOS and PAD. Later parts
        append chat tokens (user and assistant turns).

    Introduced in {doc}`/book/part2/01-byte-tokenizer`.
    """

    n_bytes = 256

    def __init__(self, specials: Sequence[str] = DEFAULT_SPECIALS) -> None:
        self.specials = self._checked_specials(specials)
        self.special_ids = {tok: self.n_bytes + i for i, tok in enumerate(self.specials)}

    @property
    def vocab_size(self) -> int:
        """256 byte ids plus the special tokens."""
        return self.n_bytes + len(self.specials)

    def encode(self, text: str | bytes, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Turn text (UTF-8 encoded) or raw bytes into ids.

        Special-token strings inside ``text`` are *not* parsed: ``"<|eos|>"`` in the input encodes as
        its seven bytes, so text from users can never inject control tokens.

        :param text: a string or a bytes-like object.
        :param bos: prepend the BOS id.
        :param eos: append the EOS id.
        :returns: a list of ids.
        """
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        ids = list(data)
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Iterable[str | bytes], *, bos: bool = False, eos: bool = False):
        """Encode several texts.

        :param texts: strings or bytes.
        :param bos: prepend BOS to each.
        :param eos: append EOS to each.
        :returns: a list of id lists.
        """
        return [self.encode(t, bos=bos, eos=eos) for t in texts]

    def decode_bytes(self, ids: Iterable[int] | torch.Tensor, *, specials: str = "skip") -> bytes:
        """Turn ids back into the exact bytes (the lossless direction).

        :param ids: ids, as a list or a 1-D tensor.
        :param specials: ``"skip"`` drops special ids, ``"keep"`` writes their text (e.g. ``<|eos|>``),
            ``"error"`` raises on them.
        :returns: the bytes.
        :raises ValueError: on an id outside the vocabulary, or a special id under ``"error"``.
        """
        ids = self._ids_to_decode(ids, specials)
        out = bytearray()
        for i in ids:
            if 0 <= i < self.n_bytes:
                out.append(i)
            elif self.n_bytes <= i < self.vocab_size:
                if specials == "keep":
                    out += self.specials[i - self.n_bytes].encode("utf-8")
                elif specials == "error":
                    raise ValueError(f"ids: special token id {i} where bytes were expected")
            else:
                raise ValueError(f"ids: {i} is outside the vocabulary (0..{self.vocab_size - 1})")
        return bytes(out)

    def decode(
        self, ids: Iterable[int] | torch.Tensor, *, errors: str = "replace", specials: str = "skip"
    ) -> str:
        """Turn ids into text.

        :param ids: ids, as a list or a 1-D tensor.
        :param errors: how to treat invalid UTF-8, as in :meth:`bytes.decode`: ``"replace"`` (U+FFFD),
            ``"strict"`` (raise), ``"backslashreplace"``, ``"ignore"``.
        :param specials: see :meth:`decode_bytes`.
        :returns: the text.
        """
        return self.decode_bytes(ids, specials=specials).decode("utf-8", errors=errors)

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
        if data.get("type") != "byte":
            raise ValueError(f"type: expected 'byte', got {data.get('type')!r}")
        return cls(data.get("specials", DEFAULT_SPECIALS))

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, specials={self.specials})"
