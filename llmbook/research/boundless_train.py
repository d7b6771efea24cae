r"""Learning BoundlessBPE's supermerges with Part 4's trainer, and measuring token distributions.

Phase 1 of BoundlessBPE is standard BPE (:func:`~llmbook.tokenizer.bpe.train_merges`). Phase 2 finds
the runs of adjacent pre-tokens that phase 1 turned into single word-like tokens
(:func:`superword_runs`), learns supermerges over them with the same trainer
(:func:`train_supermerges`), and lets both lists compete by count for the vocabulary
(:func:`interleave`). :func:`renyi_efficiency` measures how evenly a tokenizer uses its vocabulary.

Introduced in {doc}`/book/part10/08-boundless-bpe`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import regex

from llmbook.tokenizer.base import special_splitter
from llmbook.tokenizer.bpe import N_BYTES, BPETokenizer, merge_pair, train_merges

JOIN_PATTERN = r"^(?=.*\p{L})(?:\p{L}\p{M}*|[ _'\u2019])+$"
"""Which pre-tokens may take part in a supermerge: letters (with their combining marks), spaces,
underscores and straight or curly apostrophes, with at least one letter. It is the eligibility rule of
the BoundlessBPE reference code; digits, punctuation, whitespace runs and newlines never join."""

_NEVER = 1 << 62  # a rank larger than any real one


def merge_counts(
    word_counts: Mapping[Sequence[int], int], merges: Sequence[tuple[int, int]]
) -> list[int]:
    """The count each merge had when :func:`~llmbook.tokenizer.bpe.train_merges` chose it.

    Encoding a training word by rank replays exactly what training did to it, merge after merge, so
    the count of merge ``k`` is the sum, over the distinct words, of the word's frequency times the
    (overlapping) occurrences of the pair in the word just before merge ``k`` applies to it.

    :param word_counts: the sequences the merges were trained on (pre-token bytes, or tuples of ids)
        and their frequencies.
    :param merges: the merges in order; merge ``k`` created id ``256 + k``.
    :returns: one count per merge, in merge order (non-increasing for a greedy trainer).

    Introduced in {doc}`/book/part10/08-boundless-bpe`.
    """
    ranks = {pair: N_BYTES + k for k, pair in enumerate(merges)}
    counts = [0] * len(merges)
    for word, freq in word_counts.items():
        seq = list(word)
        while len(seq) >= 2:
            pairs = list(zip(seq, seq[1:]))
            pair = min(pairs, key=lambda p: ranks.get(p, _NEVER))
            new_id = ranks.get(pair)
            if new_id is None:
                break
            counts[new_id - N_BYTES] += freq * pairs.count(pair)
            seq = merge_pair(seq, pair, new_id)
    return counts


def superword_runs(
    text: str | Iterable[str],
    words: BPETokenizer,
    *,
    join_pattern: str = JOIN_PATTERN,
    specials: Iterable[str] = (),
) -> Counter:
    """Count the runs of adjacent pre-tokens that supermerges may join, as tuples of token ids.

    A pre-token belongs to a run when ``words`` encodes it as a single token and it matches
    ``join_pattern``; any other pre-token (and a special token, and the end of a document) ends the
    run. Only runs of two or more pre-tokens are kept: a lone one has no neighbour to join.

    :param text: one string, or an iterable of documents.
    :param words: the ordinary BPE (phase 1) whose single tokens are the candidates.
    :param join_pattern: the eligibility regex (:data:`JOIN_PATTERN`).
    :param specials: special-token strings cut out of the text first.
    :returns: a ``Counter`` mapping each distinct run (a tuple of ids) to its frequency.

    Introduced in {doc}`/book/part10/08-boundless-bpe`.
    """
    docs = [text] if isinstance(text, str) else text
    join = regex.compile(join_pattern)
    split = regex.compile(words.pattern).findall
    splitter = special_splitter(specials)
    single: dict[str, int | None] = {}  # pre-token -> its one joinable id, or None
    runs: Counter = Counter()
    for doc in docs:
        pieces = splitter.split(doc) if splitter is not None else [doc]
        for k, piece in enumerate(pieces):
            if splitter is not None and k % 2 == 1:  # a special token: never part of a run
                continue
            run: list[int] = []
            for chunk in split(piece):
                if chunk not in single:
                    ids = words.encode_chunk(chunk)
                    single[chunk] = ids[0] if len(ids) == 1 and join.match(chunk) else None
                token = single[chunk]
                if token is not None:
                    run.append(token)
                    continue
                if len(run) >= 2:
                    runs[tuple(run)] += 1
                run = []
            if len(run) >= 2:
                runs[tuple(run)] += 1
    return runs


def train_supermerges(
    runs: Mapping[tuple[int, ...], int], n_merges: int, n_ids: int
) -> tuple[list[tuple[int, int]], list[int]]:
    """Learn supermerges: Part 4's BPE trainer, run over runs of single-token pre-tokens.

    :func:`~llmbook.tokenizer.bpe.train_merges` only needs sequences of integer ids, and it numbers its
    new ids from 256. The runs' ids are therefore shifted above every id the trainer can create before
    it sees them, and mapped back afterwards: in the result, an id below ``n_ids`` is a token of the
    ordinary BPE, and ``n_ids + j`` is the superword that supermerge ``j`` creates.

    :param runs: each distinct run (a tuple of ordinary token ids) and its frequency
        (:func:`superword_runs`).
    :param n_merges: how many supermerges to learn at most.
    :param n_ids: the number of ordinary ids (256 + the ordinary merges); every id in ``runs`` is below.
    :returns: ``(supermerges, counts)``: the pairs in order, and the count each had when it was chosen.
    :raises ValueError: when a run holds an id outside ``0..n_ids - 1``.

    Introduced in {doc}`/book/part10/08-boundless-bpe`.
    """
    shift = N_BYTES + n_merges  # the trainer creates ids 256 .. 256 + n_merges - 1: stay above them
    shifted: dict[tuple[int, ...], int] = {}
    for run, freq in runs.items():
        if not all(0 <= t < n_ids for t in run):
            raise ValueError(f"runs: {run} holds an id outside 0..{n_ids - 1}")
        shifted[tuple(t + shift for t in run)] = freq
    local = train_merges(shifted, n_merges)
    counts = merge_counts(shifted, local)

    def back(t: int) -> int:
        return t - shift if t >= shift else n_ids + (t - N_BYTES)

    return [(back(a), back(b)) for a, b in local], counts


def interleave(regular_counts: Sequence[int], super_counts: Sequence[int], n_ops: int) -> str:
    """Let ordinary merges and supermerges compete for ``n_ops`` vocabulary slots by their counts.

    Both lists are in the order they were learned, with non-increasing counts. At each slot the next
    supermerge wins when its count is strictly larger than the next ordinary merge's; a tie goes to
    the ordinary merge (which may create a token the supermerge needs). When one list runs out, the
    other fills the remaining slots.

    :param regular_counts: the count of each ordinary merge (:func:`merge_counts`).
    :param super_counts: the count of each supermerge (:func:`train_supermerges`).
    :param n_ops: the number of slots (vocabulary size minus bytes and specials).
    :returns: the order, one letter per slot: ``"w"`` for an ordinary (word) merge, ``"s"`` for a
        supermerge; it may be shorter than ``n_ops`` when both lists run out.

    Introduced in {doc}`/book/part10/08-boundless-bpe`.
    """
    i = j = 0
    order = []
    while len(order) < n_ops and (i < len(regular_counts) or j < len(super_counts)):
        take_super = j < len(super_counts) and (
            i == len(regular_counts) or super_counts[j] > regular_counts[i]
        )
        order.append("s" if take_super else "w")
        j, i = (j + 1, i) if take_super else (j, i + 1)
    return "".join(order)


def renyi_efficiency(counts: Iterable[int], vocab_size: int, alpha: float = 2.5) -> float:
    r"""How evenly a tokenization uses its vocabulary: Rényi entropy over its maximum.

    With $p_i$ the share of token $i$ among all tokens of an encoded text,

    $$\operatorname{eff}_\alpha = \frac{H_\alpha(p)}{\log V},\qquad
    H_\alpha(p) = \frac{1}{1-\alpha}\log\sum_i p_i^\alpha ,$$

    which is 1 when all $V$ ids are used equally often and falls as a few ids dominate. Zouhar et al.
    (2023) found that $\alpha = 2.5$ correlates best with downstream quality; $\alpha = 1$ is the
    Shannon entropy. Larger $\alpha$ weighs the most frequent tokens more.

    :param counts: how often each id occurs (zeros allowed; ids never used simply add nothing).
    :param vocab_size: $V$, the size of the vocabulary (at least 2).
    :param alpha: the order, a positive finite number.
    :returns: the efficiency, in $[0, 1]$ when no more than $V$ ids have counts.
    :raises ValueError: for a negative or non-integer count, no tokens at all, ``vocab_size < 2``, or
        an ``alpha`` that is not positive and finite.

    Introduced in {doc}`/book/part10/08-boundless-bpe`.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size: must be an integer >= 2, got {vocab_size!r}")
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not (math.isfinite(alpha) and alpha > 0)
    ):
        raise ValueError(f"alpha: must be a positive finite number, got {alpha!r}")
    values = list(counts)
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in values):
        raise ValueError("counts: every count must be a non-negative integer")
    total = sum(values)
    if total == 0:
        raise ValueError("counts: there are no tokens to measure")
    p = [c / total for c in values if c]
    if alpha == 1:
        entropy = -math.fsum(q * math.log(q) for q in p)
    else:
        entropy = math.log(math.fsum(q**alpha for q in p)) / (1 - alpha)
    return entropy / math.log(vocab_size)
