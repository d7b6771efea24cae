r"""BoundlessBPE: byte-level BPE that may also merge two whole pre-tokens into a superword.

Standard BPE ({doc}`/book/part4/01-bpe`) never merges across the pieces of its pre-tokenization regex,
so its longest tokens are whole words. BoundlessBPE (Schmidt et al., 2025) keeps ordinary merges inside
pre-tokens and adds **supermerges**: two *adjacent* pre-tokens may join once each of them is a single
token, and only when both are word-like (letters, optionally with a leading space or an apostrophe).
A supermerge's result is again a single token, so superwords grow phrase by phrase: `` of`` +
`` the`` gives `` of the``, which may later join `` king``.

Training follows the two-phase form of the algorithm: phase 1 is Part 4's trainer
(:func:`~llmbook.tokenizer.bpe.train_merges`); phase 2 runs the same trainer over runs of adjacent
single-token pre-tokens and lets the two lists of merges compete by their counts for the same
number of vocabulary slots (:mod:`llmbook.research.boundless_train`). The
encoder applies the ordinary merges inside each pre-token, then the supermerges by rank across runs of
adjacent single-token pre-tokens (:class:`BoundlessBPETokenizer`).

Introduced in {doc}`/book/part10/08-boundless-bpe`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import regex

from llmbook.research.boundless_train import (
    JOIN_PATTERN,
    interleave,
    merge_counts,
    superword_runs,
    train_supermerges,
)
from llmbook.tokenizer.base import DEFAULT_SPECIALS, Tokenizer
from llmbook.tokenizer.bpe import (
    GPT2_PATTERN,
    N_BYTES,
    BPETokenizer,
    count_pretokens,
    merge_pair,
    train_merges,
)

_NEVER = 1 << 62  # a rank larger than any real one
_RUN_CACHE_LIMIT = 1 << 16


def merge_by_rank(ids: Sequence[int], ranks: Mapping[tuple[int, int], int]) -> list[int]:
    """Apply merges to one sequence of ids by rank: repeatedly merge the adjacent pair of lowest rank.

    This is the encoder of {doc}`/book/part4/01-bpe` for any alphabet of ids; ``ranks`` maps a pair to
    the id it creates, and ids grow with rank, so the smallest new id is the earliest merge.

    :param ids: the ids to merge (bytes of a pre-token, or the tokens of a run of pre-tokens).
    :param ranks: pair -> the id its merge creates.
    :returns: the merged ids (a new list).

    Introduced in {doc}`/book/part10/08-boundless-bpe`.
    """
    word = list(ids)
    while len(word) >= 2:
        pair = min(zip(word, word[1:]), key=lambda p: ranks.get(p, _NEVER))
        new_id = ranks.get(pair)
        if new_id is None:
            break
        word = merge_pair(word, pair, new_id)
    return word


class BoundlessBPETokenizer(Tokenizer):
    """BoundlessBPE: ordinary BPE merges inside pre-tokens, then supermerges across them.

    Ids 0–255 are bytes, ``256 .. 256 + len(merges) - 1`` the ordinary merges, then one id per
    supermerge, then the specials. Encoding pre-tokenizes with ``pattern``, encodes each pre-token with
    the ordinary merges (:class:`~llmbook.tokenizer.bpe.BPETokenizer`), and collects runs of adjacent
    pre-tokens that became single tokens which some supermerge uses; each run is merged by supermerge
    rank (:func:`merge_by_rank`). Decoding concatenates bytes, so every input round-trips.

    Besides ``str``, :meth:`encode` takes ``bytes``: invalid UTF-8 is carried through the
    pre-tokenizer as Python's ``surrogateescape`` code points and comes back as the same bytes.

    :param merges: the ordinary merges in order; merge ``k`` creates id ``256 + k``.
    :param supermerges: the supermerges in order; supermerge ``j`` creates id
        ``256 + len(merges) + j``. Both ids of a pair must exist already and be word-like tokens
        (``join_pattern`` matches their text).
    :param specials: the special tokens, in id order.
    :param pattern: the pre-tokenization regex.
    :param join_pattern: which tokens may take part in a supermerge
        (:data:`~llmbook.research.boundless_train.JOIN_PATTERN`).
    :param order: optional training record: one letter per merge in the order training chose them,
        ``"w"`` ordinary, ``"s"`` supermerge (see :func:`~llmbook.research.boundless_train.interleave`);
        needed by :meth:`truncate`.

    Introduced in {doc}`/book/part10/08-boundless-bpe`.
    """

    n_bytes = N_BYTES
    _accepts_bytes = True

    def __init__(
        self,
        merges: Sequence[tuple[int, int]] = (),
        supermerges: Sequence[tuple[int, int]] = (),
        specials: Sequence[str] = DEFAULT_SPECIALS,
        pattern: str = GPT2_PATTERN,
        join_pattern: str = JOIN_PATTERN,
        order: str | None = None,
    ) -> None:
        self.words = BPETokenizer(merges, specials=(), pattern=pattern)  # checks merges and pattern
        specials = self._checked_specials(specials)
        try:
            join = regex.compile(join_pattern)
        except (regex.error, TypeError) as err:
            raise ValueError(f"join_pattern: not a valid regex ({err})") from None
        vocab = list(self.words.vocab)
        self.first_super_id = len(vocab)
        checked: list[tuple[int, int]] = []
        for j, pair in enumerate(supermerges):
            if (
                not isinstance(pair, (tuple, list))
                or len(pair) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
            ):
                raise ValueError(
                    f"supermerges: entry {j} must be a pair of integer ids, got {pair!r}"
                )
            if not all(0 <= x < len(vocab) for x in pair):
                raise ValueError(
                    f"supermerges: entry {j} {list(pair)} refers to an id that does not exist yet "
                    f"(ids must be in 0..{len(vocab) - 1})"
                )
            for x in pair:
                try:
                    ok = join.match(vocab[x].decode("utf-8")) is not None
                except UnicodeDecodeError:
                    ok = False
                if not ok:
                    raise ValueError(
                        f"supermerges: entry {j} joins token {x} ({vocab[x]!r}), which "
                        "join_pattern does not allow in a superword"
                    )
            checked.append((pair[0], pair[1]))
            vocab.append(vocab[pair[0]] + vocab[pair[1]])
        self.super_ranks = {pair: self.first_super_id + j for j, pair in enumerate(checked)}
        if len(self.super_ranks) != len(checked):
            raise ValueError("supermerges: the same pair is merged twice")
        if order is not None and (
            not isinstance(order, str)
            or set(order) - {"w", "s"}
            or order.count("w") != len(self.words.merges)
            or order.count("s") != len(checked)
        ):
            raise ValueError(
                f"order: must be a string of {len(self.words.merges)} 'w' and {len(checked)} 's', "
                f"got {order!r}"
            )
        self.supermerges = checked
        self.pattern, self.join_pattern, self.order = pattern, join_pattern, order
        self.vocab = vocab
        self._regex = regex.compile(pattern)
        self._joinable = frozenset(x for pair in checked for x in pair)
        self._run_cache: dict[tuple[int, ...], list[int]] = {}
        first = len(vocab)
        self._set_vocabulary(
            {tok: first + i for i, tok in enumerate(specials)}, [*vocab, *[None] * len(specials)]
        )

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The ordinary merges (inside pre-tokens), in order."""
        return self.words.merges

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        *,
        special_tokens: Sequence[str] = DEFAULT_SPECIALS,
        pattern: str = GPT2_PATTERN,
        join_pattern: str = JOIN_PATTERN,
        words: BPETokenizer | None = None,
    ) -> BoundlessBPETokenizer:
        """Learn a BoundlessBPE of ``vocab_size`` ids, the same budget a standard BPE would get.

        Phase 1 learns ``n = vocab_size - 256 - len(special_tokens)`` ordinary merges, exactly the
        standard BPE of that size (pass it as ``words`` to skip retraining). Phase 2 learns up to
        ``n`` supermerges over the runs of pre-tokens that phase 1 made single tokens, and
        :func:`~llmbook.research.boundless_train.interleave` keeps the ``n`` merges of the two lists
        with the highest counts.

        :param text: the training text, or an iterable of documents.
        :param vocab_size: the total vocabulary size, specials included.
        :param special_tokens: the specials, in id order; their text is cut out of the training data.
        :param pattern: the pre-tokenization regex.
        :param join_pattern: which pre-tokens may join
            (:data:`~llmbook.research.boundless_train.JOIN_PATTERN`).
        :param words: a standard BPE already trained on ``text`` with ``pattern`` and at least ``n``
            merges; its first ``n`` merges are phase 1.
        :returns: the trained tokenizer, with its ``order``.
        :raises ValueError: when ``vocab_size`` is too small, or ``words`` has another pattern or
            fewer than ``n`` merges.
        """
        special_tokens = tuple(special_tokens)
        valid = isinstance(vocab_size, int) and not isinstance(vocab_size, bool)
        n_ops = vocab_size - N_BYTES - len(special_tokens) if valid else -1
        if n_ops < 0:
            raise ValueError(
                f"vocab_size: must be an integer >= {N_BYTES + len(special_tokens)} "
                f"(256 bytes + {len(special_tokens)} specials), got {vocab_size!r}"
            )
        text = [text] if isinstance(text, str) else list(text)  # read twice: once per phase
        counts = count_pretokens(text, pattern, special_tokens)
        if words is None:
            merges = train_merges(counts, n_ops)
        else:
            if words.pattern != pattern:
                raise ValueError("words: was trained with another pre-tokenization pattern")
            if len(words.merges) < n_ops:
                raise ValueError(f"words: has {len(words.merges)} merges, {n_ops} are needed")
            merges = list(words.merges[:n_ops])
        full = BPETokenizer(merges, specials=(), pattern=pattern)
        runs = superword_runs(text, full, join_pattern=join_pattern, specials=special_tokens)
        n_ids = N_BYTES + len(merges)
        supers, super_counts = train_supermerges(runs, n_ops, n_ids)
        order = interleave(merge_counts(counts, merges), super_counts, n_ops)
        return cls._from_order(merges, supers, n_ids, order, special_tokens, pattern, join_pattern)

    @classmethod
    def _from_order(cls, merges, supers, n_ids, order, specials, pattern, join_pattern):
        """Keep the merges ``order`` names; ``supers`` use ids ``n_ids + j`` for superword ``j``."""
        k, m = order.count("w"), order.count("s")
        first = N_BYTES + k

        def renumber(t: int) -> int:
            if t >= n_ids:
                return first + (t - n_ids)
            if t >= first:  # cannot happen: a parent's count is at least its superword's
                raise RuntimeError(f"supermerge uses token {t}, which this vocabulary drops")
            return t

        kept = [(renumber(a), renumber(b)) for a, b in supers[:m]]
        return cls(merges[:k], kept, specials, pattern, join_pattern, order)

    def truncate(self, vocab_size: int) -> BoundlessBPETokenizer:
        """The BoundlessBPE of a smaller vocabulary: the first merges of the training ``order``.

        Both lists of merges are greedy and the competition compares counts that only fall, so
        training at the smaller size directly chooses the same merges (the tests check it).

        :param vocab_size: the smaller total vocabulary size, specials included.
        :returns: the smaller tokenizer.
        :raises ValueError: without a training ``order``, or for a size outside the valid range.
        """
        if self.order is None:
            raise ValueError("order: this tokenizer has no training order to truncate")
        n_specials = len(self.specials)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise ValueError(f"vocab_size: must be an integer, got {vocab_size!r}")
        n_ops = vocab_size - N_BYTES - n_specials
        if n_ops < 0:
            raise ValueError(f"vocab_size: must be >= {N_BYTES + n_specials}, got {vocab_size}")
        if n_ops > len(self.order):
            raise ValueError(f"vocab_size: must be at most {self.vocab_size}, got {vocab_size}")
        return self._from_order(
            self.words.merges,
            self.supermerges,
            self.first_super_id,
            self.order[:n_ops],
            self.specials,
            self.pattern,
            self.join_pattern,
        )

    # ---- encoding -------------------------------------------------------------------------------

    def _chunk_ids(self, chunk: str, escaped: bool) -> tuple[int, ...]:
        if not escaped:
            return self.words.encode_chunk(chunk)  # raises on lone surrogates, like BPETokenizer
        try:
            return self.words.encode_chunk(chunk)
        except UnicodeEncodeError:  # invalid UTF-8 from bytes input: its bytes, merged by rank
            data = chunk.encode("utf-8", "surrogateescape")
            return tuple(merge_by_rank(data, self.words.ranks))

    def _join_run(self, run: list[int]) -> list[int]:
        if len(run) < 2:
            return run
        key = tuple(run)
        out = self._run_cache.get(key)
        if out is None:
            out = merge_by_rank(run, self.super_ranks)
            if len(self._run_cache) >= _RUN_CACHE_LIMIT:
                self._run_cache.clear()
            self._run_cache[key] = out
        return out

    def _encode_ordinary(self, text: str | bytes) -> list[int]:
        escaped = isinstance(text, bytes)
        if escaped:
            text = text.decode("utf-8", "surrogateescape")
        joinable = self._joinable
        ids: list[int] = []
        run: list[int] = []
        for chunk in self._regex.findall(text):
            piece = self._chunk_ids(chunk, escaped)
            if len(piece) == 1 and piece[0] in joinable:
                run.append(piece[0])
                continue
            if run:
                ids.extend(self._join_run(run))
                run = []
            ids.extend(piece)
        if run:
            ids.extend(self._join_run(run))
        return ids

    def is_superword(self, i: int) -> bool:
        """Whether an id is a superword, a token that spans two or more pre-tokens.

        :param i: the id.
        :returns: True for the ids that supermerges created.
        """
        return self.first_super_id <= i < self.first_super_id + len(self.supermerges)

    def token_bytes(self, i: int) -> bytes:
        """The bytes one id stands for (a special's UTF-8 text for a special id).

        :param i: the id.
        :returns: its bytes.
        """
        return self.decode_bytes([i], specials="keep")

    # ---- saving ---------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON description: both lists of merges as id pairs, specials, patterns, training order.

        :returns: ``{"type": "boundless-bpe", "merges": ..., "supermerges": ..., "specials": ...,
            "pattern": ..., "join_pattern": ..., "order": ...}``.
        """
        return {
            "type": "boundless-bpe",
            "merges": [[a, b] for a, b in self.words.merges],
            "supermerges": [[a, b] for a, b in self.supermerges],
            "specials": list(self.specials),
            "pattern": self.pattern,
            "join_pattern": self.join_pattern,
            "order": self.order,
        }

    @classmethod
    def from_dict(cls, data: dict) -> BoundlessBPETokenizer:
        """Rebuild a tokenizer from :meth:`to_dict`, checking every field.

        :param data: the dict.
        :returns: the tokenizer.
        :raises ValueError: naming the field that is missing or wrong.
        """
        if not isinstance(data, dict):
            raise ValueError(f"tokenizer: expected a JSON object, got {type(data).__name__}")
        if data.get("type") != "boundless-bpe":
            raise ValueError(f"type: expected 'boundless-bpe', got {data.get('type')!r}")
        known = {"type", "merges", "supermerges", "specials", "pattern", "join_pattern", "order"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: not a field of a BoundlessBPE tokenizer description")
        for key in ("merges", "supermerges", "specials"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"{key}: expected a list, got {type(data.get(key)).__name__}")
        pairs = {}
        for key in ("merges", "supermerges"):
            for k, pair in enumerate(data[key]):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise ValueError(f"{key}: entry {k} must be a pair [a, b], got {pair!r}")
            pairs[key] = [tuple(p) for p in data[key]]
        return cls(
            pairs["merges"],
            pairs["supermerges"],
            data["specials"],
            data.get("pattern", GPT2_PATTERN),
            data.get("join_pattern", JOIN_PATTERN),
            data.get("order"),
        )

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (never pickle).

        :param path: the file to write.
        :returns: the path.
        """
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> BoundlessBPETokenizer:
        """Read a tokenizer written by :meth:`save`.

        :param path: the JSON file.
        :returns: the tokenizer.
        :raises ValueError: when the file is not valid JSON or not a BoundlessBPE description.
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

    def __repr__(self) -> str:
        return (
            f"BoundlessBPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"supermerges={len(self.supermerges)}, specials={self.specials})"
        )
