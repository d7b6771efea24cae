"""Byte-level byte-pair encoding (BPE), from scratch: an incremental trainer, an encoder that applies
merges by rank, JSON save/load, and an export to Hugging Face ``tokenizers`` with the same merges."""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import regex

from llmbook.tokenizer.base import DEFAULT_SPECIALS, Tokenizer, special_splitter

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokenization regex: English contractions, runs of letters, of digits and of other
symbols (each with at most one leading space), and whitespace. BPE never merges across its pieces.
It is the pattern ``tokenizers.pre_tokenizers.ByteLevel(use_regex=True)`` uses."""

N_BYTES = 256
"""Ids 0..255 are the raw bytes; merges and specials come after."""

_CACHE_LIMIT = 1 << 16


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to 256 printable Unicode characters.

    Bytes that are printable Latin-1 characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to
    themselves; the other 68 (control characters, space, ...) map to U+0100 and up, in byte order.
    Tokenizer files store tokens as strings of these characters, so every token is printable text.

    :returns: byte value -> one character.

    Introduced in {doc}`/book/part4/01-bpe`.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    mapping, shift = {}, 0
    for b in range(N_BYTES):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(N_BYTES + shift)
            shift += 1
    return mapping


def merge_pair(word: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``word`` by ``new_id``, scanning left to right.

    Occurrences cannot overlap: in ``a a a`` the pair ``(a, a)`` becomes ``X a``, never ``a X``.

    :param word: a sequence of token ids.
    :param pair: the two adjacent ids to merge.
    :param new_id: the id that replaces them.
    :returns: the merged ids (a new list).

    Introduced in {doc}`/book/part4/01-bpe`.
    """
    a, b = pair
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if word[i] == a and i + 1 < n and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def count_pretokens(
    text: str | Iterable[str], pattern: str = GPT2_PATTERN, specials: Iterable[str] = ()
) -> dict[bytes, int]:
    """Split text into pre-tokens with ``pattern`` and count each distinct one, as UTF-8 bytes.

    :param text: one string, or an iterable of strings (documents), each split separately.
    :param pattern: the pre-tokenization regex (``regex`` module syntax).
    :param specials: special-token strings cut out of the text first, so they are never learned.
    :returns: each distinct pre-token (as bytes) mapped to its frequency (a ``Counter``).

    Introduced in {doc}`/book/part4/01-bpe`.
    """
    docs = [text] if isinstance(text, str) else text
    compiled = regex.compile(pattern)
    splitter = special_splitter(specials)
    counts: Counter = Counter()
    for doc in docs:
        pieces = splitter.split(doc) if splitter is not None else [doc]
        for k, piece in enumerate(pieces):
            if splitter is not None and k % 2 == 1:  # a special token itself
                continue
            counts.update(compiled.findall(piece))
    return Counter({chunk.encode("utf-8"): n for chunk, n in counts.items()})


def train_merges(
    word_counts: dict[bytes, int], n_merges: int, *, progress: bool = False
) -> list[tuple[int, int]]:
    """Learn BPE merges from pre-token counts, updating the pair counts incrementally.

    Each round merges the most frequent adjacent pair; **ties go to the smallest pair** ``(a, b)`` in
    id order (compare ``a``, then ``b``), so training is deterministic. Instead of recounting every pair
    of the corpus per merge, the trainer keeps ``pair -> count`` and ``pair -> words that contain it``;
    a merge only revisits those words, subtracts their old pairs and adds their new ones. A max-heap of
    ``(count, pair)`` picks the best pair; entries whose count has since changed are stale and skipped
    when popped (lazy invalidation), because every count change pushes a fresh entry.

    :param word_counts: distinct pre-tokens (bytes) and their frequencies.
    :param n_merges: how many merges to learn; fewer are returned when no pair is left.
    :param progress: show a progress bar.
    :returns: the merges in order; merge ``k`` creates id ``256 + k``.

    Introduced in {doc}`/book/part4/01-bpe`.
    """
    if isinstance(n_merges, bool) or not isinstance(n_merges, int) or n_merges < 0:
        raise ValueError(f"n_merges: must be a non-negative integer, got {n_merges!r}")
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]  # min-heap of -count: max count
    heapq.heapify(heap)  # tuples compare count first, then the pair: ties go to the smallest pair
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_merges, desc="bpe", unit="merge", mininterval=1.0, leave=False)
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue  # stale: the pair's count changed after this entry was pushed
        new_id = N_BYTES + len(merges)
        merges.append(pair)
        a, b = pair
        touched: set[tuple[int, int]] = set()
        for i in where.pop(pair):
            word = words[i]
            # The set may hold words that lost the pair to an earlier merge: check before work.
            for j in range(len(word) - 1):
                if word[j] == a and word[j + 1] == b:
                    break
            else:
                continue
            freq = freqs[i]
            new = merge_pair(word, pair, new_id)
            for p in zip(word, word[1:]):
                pair_counts[p] -= freq
                touched.add(p)
            for p in zip(new, new[1:]):
                pair_counts[p] += freq
                where[p].add(i)
                touched.add(p)
            words[i] = new
        for p in touched:
            count = pair_counts[p]
            if count > 0:
                heapq.heappush(heap, (-count, p))
            else:
                del pair_counts[p]
                where.pop(p, None)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return merges


class BPETokenizer(Tokenizer):
    """Byte-level BPE: ids 0–255 are bytes, each learned merge adds one id, specials come last.

    Text is first cut into pre-tokens by :data:`GPT2_PATTERN` (merges never cross a pre-token), each
    pre-token becomes its UTF-8 bytes, and merges are applied by rank: repeatedly, the adjacent pair
    with the lowest merge rank is merged, until no adjacent pair has a merge. Like the byte tokenizer it
    never misses: any string encodes, and :meth:`decode_bytes` returns exactly the bytes that went in.

    **Special tokens** (``<|bos|>``, ``<|eos|>``, ``<|pad|>`` by default) get the ids after the merges.
    As for every tokenizer of the book (:class:`~llmbook.tokenizer.base.Tokenizer`), :meth:`encode`
    reads a special token's text as its id only when ``allowed_special`` names it; by default the text
    ``<|eos|>`` is pre-tokenized and merged like any other text, so text can never inject a control
    token. Text between allowed specials is pre-tokenized on its own, as ``tokenizers`` does.

    :param merges: the learned merges in order; merge ``k`` turns the pair into id ``256 + k``. Each
        id in a pair must already exist (a byte or an earlier merge).
    :param specials: the special tokens, in id order.
    :param pattern: the pre-tokenization regex.

    Introduced in {doc}`/book/part4/01-bpe`.
    """

    n_bytes = N_BYTES

    def __init__(
        self,
        merges: Sequence[tuple[int, int]] = (),
        specials: Sequence[str] = DEFAULT_SPECIALS,
        pattern: str = GPT2_PATTERN,
    ) -> None:
        checked: list[tuple[int, int]] = []
        for k, pair in enumerate(merges):
            if (
                not isinstance(pair, (tuple, list))
                or len(pair) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
            ):
                raise ValueError(f"merges: entry {k} must be a pair of integer ids, got {pair!r}")
            if not all(0 <= x < N_BYTES + k for x in pair):
                raise ValueError(
                    f"merges: entry {k} {list(pair)} refers to an id that does not exist yet "
                    f"(ids must be in 0..{N_BYTES + k - 1})"
                )
            checked.append((pair[0], pair[1]))
        specials = self._checked_specials(specials)
        if not isinstance(pattern, str):
            raise ValueError(f"pattern: must be a regex string, got {pattern!r}")
        self.merges = checked
        self.ranks = {pair: N_BYTES + k for k, pair in enumerate(checked)}
        if len(self.ranks) != len(checked):
            raise ValueError("merges: the same pair is merged twice")
        self.vocab = [bytes([b]) for b in range(N_BYTES)]
        for a, b in checked:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        first = N_BYTES + len(checked)
        self._set_vocabulary(
            {tok: first + i for i, tok in enumerate(specials)},
            [*self.vocab, *[None] * len(specials)],
        )
        self.pattern = pattern
        try:
            self._regex = regex.compile(pattern)
        except regex.error as err:
            raise ValueError(f"pattern: not a valid regex ({err})") from None
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        *,
        special_tokens: Sequence[str] = DEFAULT_SPECIALS,
        pattern: str = GPT2_PATTERN,
        progress: bool = False,
    ) -> BPETokenizer:
        """Learn a tokenizer of ``vocab_size`` ids (256 bytes + merges + specials) from text.

        Pre-tokens are counted once (:func:`count_pretokens`); then :func:`train_merges` learns
        ``vocab_size - 256 - len(special_tokens)`` merges (fewer if the text runs out of pairs). The
        merges of a smaller vocabulary are a prefix of those of a larger one.

        :param text: the training text, or an iterable of documents.
        :param vocab_size: the total vocabulary size, specials included (as in ``tokenizers``).
        :param special_tokens: the specials, in id order; their text is cut out of the training data.
        :param pattern: the pre-tokenization regex.
        :param progress: show a progress bar.
        :returns: the trained tokenizer.
        :raises ValueError: when ``vocab_size`` is smaller than 256 plus the specials.
        """
        special_tokens = tuple(special_tokens)
        valid = isinstance(vocab_size, int) and not isinstance(vocab_size, bool)
        n_merges = vocab_size - N_BYTES - len(special_tokens) if valid else -1
        if n_merges < 0:
            raise ValueError(
                f"vocab_size: must be an integer >= {N_BYTES + len(special_tokens)} "
                f"(256 bytes + {len(special_tokens)} specials), got {vocab_size!r}"
            )
        counts = count_pretokens(text, pattern, special_tokens)
        merges = train_merges(counts, n_merges, progress=progress)
        return cls(merges, special_tokens, pattern)

    def encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Encode one pre-token: its UTF-8 bytes, then merges by rank (lowest rank first).

        :param chunk: a piece of text produced by the pre-tokenization regex.
        :returns: its ids.
        """
        ids = self._cache.get(chunk)
        if ids is not None:
            return ids
        word = list(chunk.encode("utf-8"))
        ranks = self.ranks
        while len(word) >= 2:
            pair = min(zip(word, word[1:]), key=lambda p: ranks.get(p, 1 << 62))
            new_id = ranks.get(pair)
            if new_id is None:
                break  # no adjacent pair has a merge
            word = merge_pair(word, pair, new_id)
        ids = tuple(word)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[chunk] = ids
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for chunk in self._regex.findall(text):
            ids.extend(self.encode_chunk(chunk))
        return ids

    def token_bytes(self, i: int) -> bytes:
        """The bytes one id stands for (a special's UTF-8 text for a special id).

        :param i: the id.
        :returns: its bytes.
        """
        return self.decode_bytes([i], specials="keep")

    def to_dict(self) -> dict:
        """A JSON description: merges as id pairs, the specials and the pattern.

        :returns: ``{"type": "bpe", "merges": [[a, b], ...], "specials": [...], "pattern": ...}``.
        """
        return {
            "type": "bpe",
            "merges": [[a, b] for a, b in self.merges],
            "specials": list(self.specials),
            "pattern": self.pattern,
        }

    @classmethod
    def from_dict(cls, data: dict) -> BPETokenizer:
        """Rebuild a tokenizer from :meth:`to_dict`, checking every field.

        :param data: the dict.
        :returns: the tokenizer.
        :raises ValueError: naming the field that is missing or wrong.
        """
        if not isinstance(data, dict):
            raise ValueError(f"tokenizer: expected a JSON object, got {type(data).__name__}")
        if data.get("type") != "bpe":
            raise ValueError(f"type: expected 'bpe', got {data.get('type')!r}")
        for key in ("merges", "specials"):
            if key not in data:
                raise ValueError(f"{key}: missing from the tokenizer description")
            if not isinstance(data[key], list):
                raise ValueError(f"{key}: expected a list, got {type(data[key]).__name__}")
        unknown = sorted(set(data) - {"type", "merges", "specials", "pattern"})
        if unknown:
            raise ValueError(f"{unknown[0]}: not a field of a BPE tokenizer description")
        merges = data["merges"]
        for k, pair in enumerate(merges):
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError(f"merges: entry {k} must be a pair [a, b], got {pair!r}")
        return cls([tuple(p) for p in merges], data["specials"], data.get("pattern", GPT2_PATTERN))

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (never pickle).

        :param path: the file to write.
        :returns: the path.
        """
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`.

        :param path: the JSON file.
        :returns: the tokenizer.
        :raises ValueError: when the file is not valid JSON or does not describe a BPE tokenizer.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a valid JSON tokenizer file ({err})") from None
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def to_hf(self):
        """The same tokenizer as a Hugging Face ``tokenizers.Tokenizer`` with identical ids.

        The vocabulary writes every id's bytes through :func:`bytes_to_unicode`, the merges are the
        same pairs in the same order, the pre-tokenizer is ``ByteLevel(add_prefix_space=False)`` (the
        GPT-2 pattern), the decoder ``ByteLevel``, and the specials are added special tokens with our
        ids. A bare ``tokenizers.Tokenizer`` always reads special strings in text as their ids (it
        encodes like ``allowed_special="all"``); wrap it in :class:`~llmbook.tokenizer.hf.HFTokenizer`
        for the book's contract, where text never becomes a special id unless allowed.

        :returns: a ``tokenizers.Tokenizer``.
        :raises ValueError: when the pattern is not GPT-2's, or two ids share the same bytes (the
            ``tokenizers`` vocabulary is keyed by string).
        """
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        if self.pattern != GPT2_PATTERN:
            raise ValueError("pattern: only the GPT-2 pattern maps onto tokenizers' ByteLevel")
        table = bytes_to_unicode()
        strings = ["".join(table[b] for b in token) for token in self.vocab]
        vocab = {s: i for i, s in enumerate(strings)}
        if len(vocab) != len(strings):
            raise ValueError(
                "merges: two merges produce the same bytes; tokenizers cannot hold both"
            )
        for tok in self.specials:
            if tok in vocab:
                raise ValueError(f"specials: {tok!r} is also a learned token")
        merges = [(strings[a], strings[b]) for a, b in self.merges]
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([AddedToken(s, special=True) for s in self.specials])
        return tokenizer

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"specials={self.specials})"
        )
