"""The contract every tokenizer of the book keeps: special tokens, ``encode`` and the decode path.

A tokenizer subclass supplies two things: how ordinary text (never parsed for specials) becomes ids,
and the bytes each ordinary id stands for. Everything else lives here, once: which special strings may
be read from text (none by default), BOS/EOS around a text, batches, and decoding with a policy for
special ids and for invalid UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import regex
import torch

DEFAULT_SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")
"""The special tokens every tokenizer of the book has by default, in id order."""
SPECIAL_POLICIES = ("skip", "keep", "error")
"""What :meth:`Tokenizer.decode_bytes` may do with special ids."""


def special_splitter(specials: Iterable[str], *, binary: bool = False):
    """A compiled regex whose ``split`` keeps each special token as its own (odd-numbered) piece.

    The alternatives are tried longest first, so a special that is a prefix of another one never wins
    over it: the leftmost, then longest match, as ``tokenizers`` matches its added tokens.

    :param specials: the special-token strings to cut out; may be empty.
    :param binary: build a pattern over the specials' UTF-8 bytes, to split ``bytes`` instead of ``str``.
    :returns: the compiled pattern, or ``None`` when there are no specials.

    Introduced in {doc}`/book/part4/01-bpe`.
    """
    ordered = sorted(set(specials), key=len, reverse=True)
    if not ordered:
        return None
    if binary:
        return regex.compile(
            b"(" + b"|".join(regex.escape(s.encode("utf-8")) for s in ordered) + b")"
        )
    return regex.compile("(" + "|".join(regex.escape(s) for s in ordered) + ")")


class Tokenizer:
    """The base class of the book's tokenizers: special tokens, ``encode`` and the decode path.

    **The special-token contract.** :meth:`encode` never turns text into special ids by default: the
    characters ``<|eos|>`` inside a text encode as ordinary text, exactly as any other seven characters
    would, so text from a user (placed inside a chat template, say) cannot forge a control token. Special
    ids enter a sequence only when the program asks: ``bos=True``/``eos=True``, writing the id itself,
    or naming the special strings that may be parsed from this text in ``allowed_special``. Text between
    allowed specials encodes exactly as it would on its own.

    **Decoding** is shared: :meth:`decode_bytes` joins the bytes of every id (a token may end inside a
    UTF-8 character, so ids are decoded together) and applies a policy to special ids; :meth:`decode`
    turns those bytes into text with one of Python's codec error handlers.

    A subclass calls :meth:`_set_vocabulary` in its constructor and implements
    :meth:`_encode_ordinary` (text to ids, with no special parsing); it may override
    :meth:`_encode_ordinary_batch` to encode many pieces at once.

    :ivar specials: the special-token strings, in id order.
    :ivar special_ids: each special-token string mapped to its id.

    Introduced in {doc}`/book/part2/01-byte-tokenizer`.
    """

    specials: tuple[str, ...]
    special_ids: dict[str, int]
    _accepts_bytes = False  # only the byte tokenizer can encode arbitrary, non-UTF-8 bytes

    # ---- set-up, for subclasses -------------------------------------------------------------------

    @staticmethod
    def _checked_specials(specials: Sequence[str]) -> tuple[str, ...]:
        """The special tokens as a tuple, after checking they are distinct, non-empty strings."""
        if isinstance(specials, str):
            raise ValueError(
                f"specials: expected a sequence of strings, got the string {specials!r}"
            )
        specials = tuple(specials)
        if len(set(specials)) != len(specials):
            raise ValueError(f"specials: duplicate special tokens in {specials}")
        for tok in specials:
            if not isinstance(tok, str) or not tok:
                raise ValueError(
                    f"specials: each special token must be a non-empty string, got {tok!r}"
                )
        return specials

    def _set_vocabulary(
        self, special_ids: dict[str, int], pieces: list[bytes | None] | None
    ) -> None:
        """Record the specials and, per id, the bytes an ordinary id stands for (``None`` for specials).

        ``pieces`` may be ``None`` when the subclass builds the table lazily in :meth:`_pieces`.
        """
        self.special_ids = dict(special_ids)
        self.specials = tuple(self.special_ids)
        self._special_set = frozenset(self.special_ids.values())
        self._special_bytes = {i: s.encode("utf-8") for s, i in self.special_ids.items()}
        self._id_pieces = pieces
        self._splitters: dict[tuple[frozenset, bool], object] = {}

    def _pieces(self) -> list[bytes | None]:
        """Id -> its bytes, ``None`` for a special id; the list's length is the vocabulary size."""
        return self._id_pieces

    def _encode_ordinary(self, text: str | bytes) -> list[int]:
        """Ids of ``text`` read as ordinary text: special strings in it are not parsed."""
        raise NotImplementedError

    def _encode_ordinary_batch(self, texts: list) -> list[list[int]]:
        """:meth:`_encode_ordinary` of several pieces; override to batch (the Rust tokenizer does)."""
        return [self._encode_ordinary(t) for t in texts]

    def _join_ordinary(self, ids: list[int]) -> bytes | None:
        """The bytes of ``ids`` when they are all ordinary ids of the vocabulary, else ``None``."""
        table = self._pieces()
        if not ids:
            return b""
        low, high = min(ids), max(ids)
        if low < 0 or high >= len(table):
            return None
        # Specials sit together at one end of the ids: a range that misses them needs no lookups.
        specials = self._special_set
        if specials and high >= min(specials) and low <= max(specials):
            if not specials.isdisjoint(ids):
                return None
        try:
            return b"".join(map(table.__getitem__, ids))
        except TypeError:  # a hole in the ids (None in the table)
            return None

    # ---- special tokens ---------------------------------------------------------------------------

    def _special(self, token: str) -> int:
        try:
            return self.special_ids[token]
        except KeyError:
            raise ValueError(f"specials: this tokenizer has no {token!r} token") from None

    @property
    def bos_id(self) -> int:
        """Id of the beginning-of-sequence token ``<|bos|>`` (:class:`ValueError` if there is none)."""
        return self._special("<|bos|>")

    @property
    def eos_id(self) -> int:
        """Id of the end-of-sequence token ``<|eos|>`` (:class:`ValueError` if there is none)."""
        return self._special("<|eos|>")

    @property
    def pad_id(self) -> int:
        """Id of the padding token ``<|pad|>`` (:class:`ValueError` if there is none)."""
        return self._special("<|pad|>")

    @property
    def vocab_size(self) -> int:
        """The number of ids: ordinary tokens and specials."""
        return len(self._pieces())

    # ---- encoding ---------------------------------------------------------------------------------

    def _allowed(self, allowed_special) -> frozenset:
        if isinstance(allowed_special, str):
            if allowed_special == "all":
                return frozenset(self.specials)
            raise ValueError(
                "allowed_special: must be 'all' or a collection of special tokens such as "
                f"{{'<|eos|>'}}, got the string {allowed_special!r}"
            )
        try:
            allowed = frozenset(allowed_special)
        except TypeError:
            raise ValueError(
                f"allowed_special: must be 'all' or a collection of special tokens, "
                f"got {type(allowed_special).__name__}"
            ) from None
        unknown = sorted(map(repr, allowed - set(self.specials)))
        if unknown:
            raise ValueError(
                f"allowed_special: {unknown[0]} is not a special token of this tokenizer"
            )
        return allowed

    def _checked_text(self, text):
        if isinstance(text, str):
            return text
        if self._accepts_bytes and isinstance(text, (bytes, bytearray, memoryview)):
            return bytes(text)
        expected = "str or bytes" if self._accepts_bytes else "str"
        raise TypeError(f"text: expected {expected}, got {type(text).__name__}")

    def encode(
        self,
        text: str,
        *,
        bos: bool = False,
        eos: bool = False,
        allowed_special: str | Iterable[str] = (),
    ) -> list[int]:
        """Turn text into ids; by default, special-token strings in ``text`` stay ordinary text.

        :param text: the text (the byte tokenizer also takes ``bytes``).
        :param bos: prepend the BOS id.
        :param eos: append the EOS id.
        :param allowed_special: the special strings that may be read from ``text`` as their ids: a
            collection such as ``{"<|eos|>"}``, or ``"all"`` for every special of the tokenizer. The
            default ``()`` parses none, which is what untrusted text needs.
        :returns: a list of ids.
        :raises TypeError: when ``text`` is not a string.
        :raises ValueError: when ``allowed_special`` names a token that is not a special, or ``bos``
            or ``eos`` is asked of a tokenizer without that special.
        """
        return self.encode_batch([text], bos=bos, eos=eos, allowed_special=allowed_special)[0]

    def encode_batch(
        self,
        texts: Iterable[str],
        *,
        bos: bool = False,
        eos: bool = False,
        allowed_special: str | Iterable[str] = (),
    ) -> list[list[int]]:
        """Encode several texts, each exactly as :meth:`encode` would.

        :param texts: an iterable of texts (not a single string).
        :param bos: prepend BOS to each.
        :param eos: append EOS to each.
        :param allowed_special: see :meth:`encode`.
        :returns: a list of id lists.
        :raises TypeError: when ``texts`` is a single string, or holds something that is not a text.
        :raises ValueError: as :meth:`encode`.
        """
        if isinstance(texts, (str, bytes, bytearray)):
            raise TypeError(
                f"texts: expected an iterable of texts, got a single {type(texts).__name__}"
            )
        allowed = self._allowed(allowed_special)
        texts = [self._checked_text(t) for t in texts]
        head = [self.bos_id] if bos else []
        tail = [self.eos_id] if eos else []
        # Each text becomes a layout of special ids and slots (None) for its ordinary pieces, and all
        # ordinary pieces of all texts are encoded in one call.
        layouts: list[list[int | None]] = []
        ordinary: list = []
        for text in texts:
            if allowed:
                parts = self._splitter(allowed, isinstance(text, bytes)).split(text)
            else:
                parts = [text]
            layout: list[int | None] = []
            for k, piece in enumerate(parts):
                if k % 2:  # a special token itself
                    key = piece.decode("utf-8") if isinstance(piece, bytes) else piece
                    layout.append(self.special_ids[key])
                elif piece:
                    layout.append(None)
                    ordinary.append(piece)
            layouts.append(layout)
        encoded = iter(self._encode_ordinary_batch(ordinary))
        out = []
        for layout in layouts:
            if not head and layout and layout[0] is None:
                ids = next(encoded)  # a fresh list: extend it rather than copy a long text's ids
                layout = layout[1:]
            else:
                ids = list(head)
            for slot in layout:
                if slot is None:
                    ids.extend(next(encoded))
                else:
                    ids.append(slot)
            ids.extend(tail)
            out.append(ids)
        return out

    def _splitter(self, allowed: frozenset, binary: bool):
        key = (allowed, binary)
        splitter = self._splitters.get(key)
        if splitter is None:
            splitter = self._splitters[key] = special_splitter(allowed, binary=binary)
        return splitter

    # ---- decoding ---------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int] | torch.Tensor, *, specials: str = "skip") -> bytes:
        """Turn ids back into the exact bytes (the lossless direction).

        :param ids: ids, as a list or a 1-D tensor.
        :param specials: ``"skip"`` drops special ids, ``"keep"`` writes their text (e.g.
            ``<|eos|>``), ``"error"`` raises on them.
        :returns: the bytes.
        :raises ValueError: on an id outside the vocabulary, a special id under ``"error"``, or an
            unknown ``specials`` policy.
        """
        if specials not in SPECIAL_POLICIES:
            raise ValueError(f"specials: must be one of {SPECIAL_POLICIES}, got {specials!r}")
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        table = self._pieces()
        n = len(table)
        fast = self._join_ordinary(ids)  # the common case, at C speed
        if fast is not None:
            return fast
        parts = []
        for i in ids:
            piece = table[i] if 0 <= i < n else None
            if piece is not None:
                parts.append(piece)
            elif i in self._special_set:
                if specials == "keep":
                    parts.append(self._special_bytes[i])
                elif specials == "error":
                    raise ValueError(f"ids: special token id {i} where bytes were expected")
            else:
                raise ValueError(f"ids: {i} is outside the vocabulary (0..{n - 1})")
        return b"".join(parts)

    def decode(
        self, ids: Iterable[int] | torch.Tensor, *, errors: str = "replace", specials: str = "skip"
    ) -> str:
        """Turn ids into text: :meth:`decode_bytes`, then UTF-8 with Python's codec error handlers.

        A model can emit any id sequence, including bytes that are not UTF-8 (a multi-byte character
        cut in half): the default ``errors="replace"`` puts U+FFFD (�) there, ``"strict"`` raises
        :class:`UnicodeDecodeError`, ``"backslashreplace"`` shows the bytes as ``\\xNN``.

        :param ids: ids, as a list or a 1-D tensor.
        :param errors: how to treat invalid UTF-8, as in :meth:`bytes.decode`: ``"replace"``,
            ``"strict"``, ``"backslashreplace"``, ``"ignore"``.
        :param specials: what to do with special ids, see :meth:`decode_bytes`.
        :returns: the text.
        """
        return self.decode_bytes(ids, specials=specials).decode("utf-8", errors=errors)
