import json
import math
from collections import Counter

import pytest
import regex
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.research.boundless_bpe import BoundlessBPETokenizer, merge_by_rank
from llmbook.research.boundless_train import (
    JOIN_PATTERN,
    interleave,
    merge_counts,
    renyi_efficiency,
    superword_runs,
    train_supermerges,
)
from llmbook.tokenizer.bpe import GPT2_PATTERN, BPETokenizer, count_pretokens, merge_pair

LINES = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
    "All:\nSpeak, speak.\n\n",
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n",
    "MENENIUS:\nI tell you, friends, most charitable care\nHave the patricians of you.\n\n",
    "KING RICHARD III:\nNow is the winter of our discontent, my lord; I will not.\n\n",
    "It's 2024; we'll pay 3,000 ducats -- naïve café, 日本語 😀. I'll go to the king.\n",
]
TEXT = "".join(LINES[k % len(LINES)] for k in range(40)) + "of the king and of the lord. " * 30
WORDS = sorted(set(regex.findall(GPT2_PATTERN, TEXT)))


@pytest.fixture(scope="module")
def tok():
    return BoundlessBPETokenizer.train(TEXT, 256 + 150 + 3)


def naive_counts(text, n_merges):
    """Test oracle: recount every pair before each merge; return the merges and their counts."""
    words = Counter(tuple(c.encode()) for c in regex.findall(GPT2_PATTERN, text))
    merges, counts = [], []
    for k in range(n_merges):
        pairs = Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        counts.append(pairs[best])
        merged = Counter()
        for word, freq in words.items():
            merged[tuple(merge_pair(word, best, 256 + k))] += freq
        words = merged
    return merges, counts


def reference_encode(tok, text):
    """Test oracle, the reference inference of the paper's code: every operation of the training
    order in turn, over the whole text; a merge acts inside pre-tokens, a supermerge on two adjacent
    pre-tokens that are single tokens."""
    chunks = [list(c.encode()) for c in regex.findall(GPT2_PATTERN, text)]
    i = j = 0
    for kind in tok.order:
        if kind == "w":
            pair, new_id = tok.merges[i], 256 + i
            chunks = [merge_pair(c, pair, new_id) for c in chunks]
            i += 1
        else:
            (a, b), new_id = tok.supermerges[j], tok.first_super_id + j
            out, k = [], 0
            while k < len(chunks):
                if k + 1 < len(chunks) and chunks[k] == [a] and chunks[k + 1] == [b]:
                    out.append([new_id])
                    k += 2
                else:
                    out.append(chunks[k])
                    k += 1
            chunks = out
            j += 1
    return [t for c in chunks for t in c]


# ---- the tokenizer --------------------------------------------------------------------------------


def test_learns_superwords_at_equal_vocabulary(tok):
    bpe = BPETokenizer.train(TEXT, tok.vocab_size)
    assert tok.vocab_size == bpe.vocab_size == 256 + 150 + 3
    assert len(tok.merges) + len(tok.supermerges) == len(bpe.merges)
    assert tok.merges == bpe.merges[: len(tok.merges)]  # phase 1 is a prefix of standard BPE
    assert len(tok.supermerges) > 5
    supers = {
        tok.token_bytes(i)
        for i in range(tok.first_super_id, tok.first_super_id + len(tok.supermerges))
    }
    assert b" of the" in supers
    # Ordinary tokens are standard BPE's; each superword spans two or more word-like pre-tokens.
    assert tok.vocab[: tok.first_super_id] == bpe.vocab[: tok.first_super_id]
    join = regex.compile(JOIN_PATTERN)
    for i in range(tok.first_super_id, tok.first_super_id + len(tok.supermerges)):
        pieces = regex.findall(GPT2_PATTERN, tok.token_bytes(i).decode())
        assert tok.is_superword(i) and len(pieces) >= 2 and all(map(join.match, pieces))
    assert not tok.is_superword(tok.first_super_id - 1) and not tok.is_superword(tok.bos_id)
    ids = tok.encode(" of the king and of the lord, of the king")
    assert [tok.token_bytes(i) for i in ids] == [
        b" of the king and of the lord",
        b",",
        b" of the",
        b" king",
    ]
    assert len(tok.encode(TEXT)) < len(bpe.encode(TEXT))


def test_encoder_equals_the_reference_inference(tok):
    for text in [TEXT, TEXT[::-1], " of the king, of the lord\nof the", "I'll go to the king."]:
        assert tok.encode(text) == reference_encode(tok, text)


def test_supermerges_never_cross_punctuation_newlines_or_digits(tok):
    for text in ["of, the", "of\nthe", "of 3 the", "of. the king"]:
        assert not any(tok.is_superword(i) for i in tok.encode(text)), text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_round_trips_any_text(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids, errors="strict") == text
    assert tok.decode_bytes(ids) == text.encode()
    assert tok.encode(text.encode()) == ids  # valid UTF-8 bytes encode as the text does


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_round_trips_any_byte_string(tok, data):
    assert tok.decode_bytes(tok.encode(data)) == data


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([*WORDS, "\x80", b"\xff".decode("latin-1"), "<|eos|>"]), max_size=60)
)
def test_round_trips_text_made_of_its_own_words(tok, parts):
    text = "".join(parts)
    ids = tok.encode(text)
    assert tok.decode(ids, errors="strict") == text
    assert ids == reference_encode(tok, text)
    raw = text.encode() + b"\xe9\xff of the"  # invalid UTF-8 in the middle of superwords
    assert tok.decode_bytes(tok.encode(raw)) == raw


def test_empty_input(tok):
    assert tok.encode("") == [] and tok.encode(b"") == []
    assert tok.decode([]) == "" and tok.decode_bytes([]) == b""
    assert tok.encode("", bos=True, eos=True) == [tok.bos_id, tok.eos_id]


def test_lone_surrogates_in_text_raise_like_bpe(tok):
    with pytest.raises(UnicodeEncodeError):
        BPETokenizer(tok.merges).encode("a\udc80b")
    with pytest.raises(UnicodeEncodeError):
        tok.encode("a\udc80b")


def test_specials_stay_text_unless_allowed_and_cut_runs(tok):
    forged = tok.encode("of the<|eos|>")
    assert tok.eos_id not in forged and tok.decode(forged) == "of the<|eos|>"
    allowed = tok.encode(" of<|eos|> the", allowed_special={"<|eos|>"})
    assert allowed == tok.encode(" of") + [tok.eos_id] + tok.encode(" the")
    assert tok.encode(" of the", bos=True) == [tok.bos_id, *tok.encode(" of the")]


def test_deterministic_and_ids_fit_a_model(tok):
    again = BoundlessBPETokenizer.train(TEXT, tok.vocab_size)
    assert again.to_dict() == tok.to_dict()
    ids = tok.encode(TEXT)
    assert ids == tok.encode(TEXT) == again.encode(TEXT)
    x = torch.tensor(ids[:32]).view(1, 32)
    model = GPT(
        ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    )
    assert model(x).logits.shape == (1, 32, tok.vocab_size)


def test_dict_and_file_round_trip(tok, tmp_path):
    data = json.loads(json.dumps(tok.to_dict()))
    back = BoundlessBPETokenizer.from_dict(data)
    assert back.to_dict() == tok.to_dict() and back.encode(TEXT) == tok.encode(TEXT)
    path = tok.save(tmp_path / "boundless.json")
    assert BoundlessBPETokenizer.load(path).encode(TEXT) == tok.encode(TEXT)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        BoundlessBPETokenizer.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"type": "bpe"}, "^type:"),
        ({"supermerges": "x"}, "^supermerges:"),
        ({"supermerges": [[1, 2, 3]]}, "^supermerges: entry 0"),
        ({"extra": 1}, "^extra:"),
        ({"order": "ws"}, "^order:"),
    ],
)
def test_from_dict_names_the_bad_field(tok, change, match):
    with pytest.raises(ValueError, match=match):
        BoundlessBPETokenizer.from_dict({**tok.to_dict(), **change})


def test_constructor_checks_supermerges():
    merges = [(ord("o"), ord("f")), (32, 256)]  # "of", " of"
    with pytest.raises(ValueError, match="does not exist yet"):
        BoundlessBPETokenizer(merges, [(257, 300)])
    with pytest.raises(ValueError, match="join_pattern does not allow"):
        BoundlessBPETokenizer(merges, [(257, ord(","))])  # punctuation never joins
    with pytest.raises(ValueError, match="twice"):
        BoundlessBPETokenizer(merges, [(257, 257), (257, 257)])
    ok = BoundlessBPETokenizer(merges, [(257, 257)])
    assert ok.token_bytes(258) == b" of of" and ok.vocab_size == 259 + 3
    assert ok.encode(" of of of") == [258, 257]


def test_without_supermerges_it_is_standard_bpe(tok):
    plain = BoundlessBPETokenizer(tok.merges)
    bpe = BPETokenizer(tok.merges)
    assert plain.encode(TEXT) == bpe.encode(TEXT)
    assert plain.special_ids == bpe.special_ids


def test_bad_vocab_size():
    with pytest.raises(ValueError, match="^vocab_size"):
        BoundlessBPETokenizer.train(TEXT, 258)
    with pytest.raises(ValueError, match="^words"):
        BoundlessBPETokenizer.train(TEXT, 400, words=BPETokenizer.train(TEXT, 300))


# ---- training -------------------------------------------------------------------------------------


def test_merge_counts_equal_a_naive_recount():
    merges, counts = naive_counts(TEXT, 200)
    assert merge_counts(count_pretokens(TEXT), merges) == counts
    assert all(a >= b for a, b in zip(counts, counts[1:]))  # greedy: counts only fall


def test_superword_runs_by_hand():
    text = "the cat sat, on the mat\nthe cat sat"
    words = BPETokenizer.train(text, 256 + 200)  # every pre-token becomes one token
    runs = superword_runs(text, words)
    as_text = {tuple(words.decode([t]) for t in run): n for run, n in runs.items()}
    assert as_text == {("the", " cat", " sat"): 2, (" on", " the", " mat"): 1}


def test_train_supermerges_by_hand():
    a, b, c = 300, 301, 302  # ordinary ids; 400 ordinary ids in all
    supers, counts = train_supermerges({(a, b, c): 3, (a, b): 2, (c, a): 1}, 10, 400)
    assert supers == [(a, b), (400, c), (c, a)]  # 400 is the first superword, "ab"
    assert counts == [5, 3, 1]
    with pytest.raises(ValueError, match="^runs"):
        train_supermerges({(a, 400): 1}, 10, 400)


def test_interleave_by_hand():
    assert interleave([10, 8, 5, 2], [9, 8, 3], 5) == "wswsw"  # a tie goes to the word merge
    assert interleave([4], [9, 8, 3], 10) == "ssws"  # then whichever list is left
    assert interleave([], [], 5) == ""


def test_truncation_equals_training_smaller():
    big = BoundlessBPETokenizer.train(TEXT, 256 + 400 + 3)
    for size in (256 + 3, 256 + 60 + 3, 256 + 150 + 3, 256 + 230 + 3):
        small = BoundlessBPETokenizer.train(TEXT, size)
        assert big.truncate(size).to_dict() == small.to_dict()
    with pytest.raises(ValueError, match="^order"):
        BoundlessBPETokenizer(big.merges).truncate(300)
    with pytest.raises(ValueError, match="^vocab_size"):
        big.truncate(big.vocab_size + 1)


def test_merge_by_rank_matches_the_bpe_encoder(tok):
    bpe = BPETokenizer(tok.merges)
    for word in WORDS:
        assert tuple(merge_by_rank(word.encode(), bpe.ranks)) == bpe.encode_chunk(word)


def test_join_pattern():
    join = regex.compile(JOIN_PATTERN)
    for ok in [" the", "the", "'s", " don't", " naïve", "snake_case", " Straße"]:
        assert join.match(ok), ok
    for no in [" ", "\n", ",", " 12", " a1", "--", "'", " 日本語!"]:
        assert not join.match(no), no


# ---- Rényi efficiency -----------------------------------------------------------------------------


def test_renyi_efficiency_by_hand():
    assert renyi_efficiency([5] * 8, 8) == pytest.approx(1.0)
    # p = (1/2, 1/4, 1/4), V = 4: H_2 = -ln(3/8), Shannon = 1.5 bits of log2(4) = 2 bits.
    assert renyi_efficiency([2, 1, 1, 0], 4, alpha=2) == pytest.approx(
        -math.log(3 / 8) / math.log(4)
    )
    assert renyi_efficiency([2, 1, 1], 4, alpha=1) == pytest.approx(0.75)
    assert renyi_efficiency([2, 1, 1], 4, alpha=1.000001) == pytest.approx(0.75, abs=1e-5)
    assert renyi_efficiency([99, 1], 2) < renyi_efficiency([60, 40], 2) < 1


@pytest.mark.parametrize(
    "args, match",
    [
        (([1, 2], 1), "^vocab_size"),
        (([1, 2], 4, 0), "^alpha"),
        (([1, 2], 4, math.nan), "^alpha"),
        (([1, -2], 4), "^counts"),
        (([0, 0], 4), "^counts"),
    ],
)
def test_renyi_efficiency_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        renyi_efficiency(*args)


def one_phase_boundless(text, n_ops):
    """Test oracle, the algorithm as the paper states it, recounting everything at every step: the
    text is a list of pre-tokens (units); each step takes the most frequent pair inside a unit, or,
    if strictly more frequent, the most frequent pair of adjacent units that are single word-like
    tokens. Ties between pairs go to the smaller pair, with superwords before all other tokens (the
    order in which :func:`train_supermerges` compares them). Returns bytes, not ids."""
    join = regex.compile(JOIN_PATTERN)
    units = [(list(c.encode()), bool(join.match(c))) for c in regex.findall(GPT2_PATTERN, text)]
    vocab = {i: bytes([i]) for i in range(256)}
    key = {i: (1, i) for i in range(256)}
    merges, supers, order = [], [], []
    for _ in range(n_ops):
        inside, across = Counter(), Counter()
        for tokens, _ in units:
            inside.update(zip(tokens, tokens[1:]))
        for (t, word), (u, word2) in zip(units, units[1:]):
            if word and word2 and len(t) == 1 and len(u) == 1:
                across[t[0], u[0]] += 1
        best_in = min(inside, key=lambda p: (-inside[p], key[p[0]], key[p[1]]), default=None)
        best_x = min(across, key=lambda p: (-across[p], key[p[0]], key[p[1]]), default=None)
        if best_in is None and best_x is None:
            break
        new = len(vocab)
        if best_x is not None and (best_in is None or across[best_x] > inside[best_in]):
            a, b = best_x
            supers.append((vocab[a], vocab[b]))
            key[new] = (0, len(supers) - 1)
            out, k = [], 0
            while k < len(units):
                if k + 1 < len(units) and units[k] == ([a], True) and units[k + 1] == ([b], True):
                    out.append(([new], True))
                    k += 2
                else:
                    out.append(units[k])
                    k += 1
            units = out
            order.append("s")
        else:
            a, b = best_in
            merges.append((vocab[a], vocab[b]))
            key[new] = (1, 256 + len(merges) - 1)
            units = [(merge_pair(t, best_in, new), w) for t, w in units]
            order.append("w")
        vocab[new] = vocab[a] + vocab[b]
    return merges, supers, "".join(order)


@pytest.mark.parametrize("n_ops", [40, 150, 240])
def test_two_phase_training_equals_the_one_phase_algorithm(n_ops):
    tok = BoundlessBPETokenizer.train(TEXT, 256 + n_ops + 3)
    merges, supers, order = one_phase_boundless(TEXT, n_ops)
    as_bytes = lambda pairs: [(tok.vocab[a], tok.vocab[b]) for a, b in pairs]  # noqa: E731
    assert tok.order == order
    assert as_bytes(tok.merges) == merges
    assert as_bytes(tok.supermerges) == supers
