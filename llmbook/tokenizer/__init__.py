"""Tokenizers: bytes to ids and back, all with the contract of :class:`~llmbook.tokenizer.base.Tokenizer`.

Introduced in {doc}`/book/part2/01-byte-tokenizer` (bytes) and {doc}`/book/part4/01-bpe` (BPE).
"""

from llmbook.tokenizer.base import DEFAULT_SPECIALS, Tokenizer
from llmbook.tokenizer.bpe import (
    GPT2_PATTERN,
    BPETokenizer,
    bytes_to_unicode,
    count_pretokens,
    merge_pair,
    train_merges,
)
from llmbook.tokenizer.byte import ByteTokenizer
from llmbook.tokenizer.hf import HFTokenizer

TOKENIZER_TYPES = {"byte": ByteTokenizer, "bpe": BPETokenizer, "hf-bpe": HFTokenizer}
"""The ``"type"`` written by each tokenizer's ``to_dict``, mapped to its class."""


def tokenizer_from_dict(data: dict):
    """Rebuild any of the book's tokenizers from its ``to_dict()``, dispatching on ``data["type"]``.

    :param data: a dict written by ``to_dict()`` (``"byte"``, ``"bpe"`` or ``"hf-bpe"``).
    :returns: a :class:`ByteTokenizer`, :class:`BPETokenizer` or :class:`HFTokenizer` (all
        :class:`Tokenizer`).
    :raises ValueError: for a missing or unknown type, naming it.

    Introduced in {doc}`/book/part4/01-bpe`.
    """
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in TOKENIZER_TYPES:
        raise ValueError(
            f"type: unknown tokenizer type {kind!r} (known: {sorted(TOKENIZER_TYPES)})"
        )
    return TOKENIZER_TYPES[kind].from_dict(data)


__all__ = [
    "DEFAULT_SPECIALS",
    "GPT2_PATTERN",
    "TOKENIZER_TYPES",
    "BPETokenizer",
    "ByteTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "bytes_to_unicode",
    "count_pretokens",
    "merge_pair",
    "tokenizer_from_dict",
    "train_merges",
]
