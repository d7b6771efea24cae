"""Tokenizers: bytes to ids and back.

Introduced in {doc}`/book/part2/01-byte-tokenizer`.
"""

from llmbook.tokenizer.byte import DEFAULT_SPECIALS, ByteTokenizer

__all__ = ["DEFAULT_SPECIALS", "ByteTokenizer"]
