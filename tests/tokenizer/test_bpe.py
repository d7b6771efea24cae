import json
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.data.corpora import load_tinyshakespeare
from llmbook.tokenizer import HFTokenizer, tokenizer_from_dict
from llmbook.tokenizer.bpe import (
    GPT2_PATTERN,
    BPETokenizer,
    bytes_to_unicode,
    count_pretokens,
    merge_pair,
    train_merges,
)

SAMPLE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "It's 2024; we'll pay 3,000 ducats -- aaaa bbbb aaaaaa! Ünïcödé: naïve café, 日本語のテキスト 😀😀.\n"
    "    indented\tcode  = x + 1   \n"
)
TEXT = SAMPLE * 3 + "".join(f"word{i} line {i * 7 % 13}\n" for i in range(200))


def naive_train(text: str, n_merges: int) -> list[tuple[int, int]]:
    """Test oracle: recount every pair of every pre-token before each merge."""
    words = Counter(tuple(c.encode("utf-8")) for c in regex.findall(GPT2_PATTERN, text))
    merges = []
    for k in range(n_merges):
        counts = Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += freq
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, then the smallest pair
        merges.append(best)
        new_id = 256 + k
        merged = Counter()
        for word, freq in words.items():
            merged[tuple(merge_pair(word, best, new_id))] += freq
        words = merged
    return merges


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, 256 + 150 + 3)


def test_incremental_trainer_equals_naive_recount():
    counts = count_pretokens(TEXT, specials=())
    for n in (0, 1, 40, 300):
        assert train_merges(counts, n) == naive_train(TEXT, n)
    # The corpus runs out of pairs long before 10,000 merges: both stop at the same point.
    full = naive_train(TEXT, 10_000)
    assert len(full) < 10_000
    assert train_merges(counts, 10_000) == full


def test_merge_pair_is_left_to_right_and_non_overlapping():
    assert merge_pair([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge_pair([1, 1, 1, 1], (1, 1), 9) == [9, 9]
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge_pair([2, 1], (1, 2), 9) == [2, 1]


def test_ids_layout_and_vocab_size(tok):
    assert tok.vocab_size == 256 + len(tok.merges) + 3 == 256 + 150 + 3
    assert tok.special_ids == {"<|bos|>": 406, "<|eos|>": 407, "<|pad|>": 408}
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (406, 407, 408)
    for k, (a, b) in enumerate(tok.merges):
        assert tok.vocab[256 + k] == tok.vocab[a] + tok.vocab[b]
    assert tok.vocab[256] == b"in"  # from "line" (200 times), "First", "indented", ...


def test_smaller_vocabulary_is_a_prefix(tok):
    small = BPETokenizer.train(TEXT, 256 + 40 + 3)
    assert small.merges == tok.merges[:40]


def test_compresses_and_round_trips(tok):
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT.encode()) / 2
    assert tok.decode(ids, errors="strict") == TEXT
    assert tok.decode_bytes(ids) == TEXT.encode()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_text_round_trip_property(tok, text):
    assert tok.decode(tok.encode(text), errors="strict") == text


def test_specials_map_to_their_ids(tok):
    text = "<|bos|>Speak, speak.<|eos|><|pad|>"
    ids = tok.encode(text, allowed_special="all")
    assert ids[0] == tok.bos_id and ids[-2:] == [tok.eos_id, tok.pad_id]
    assert tok.encode("Speak, speak.") == ids[1:-2]
    assert tok.decode(ids) == "Speak, speak."
    assert tok.decode(ids, specials="keep") == text
    with pytest.raises(ValueError, match="special"):
        tok.decode(ids, specials="error")
    # Not allowed (the default): special text is ordinary text, so input cannot inject control tokens.
    plain = tok.encode(text)
    assert plain == tok.encode(text, allowed_special=())
    assert not {tok.bos_id, tok.eos_id, tok.pad_id} & set(plain) and tok.decode(plain) == text
    only_eos = tok.encode(text, allowed_special={"<|eos|>"})
    assert tok.eos_id in only_eos and tok.bos_id not in only_eos
    with pytest.raises(ValueError, match="not a special"):
        tok.encode("x", allowed_special={"<|nope|>"})
    framed = tok.encode("hi", bos=True, eos=True)
    assert framed[0] == tok.bos_id and framed[-1] == tok.eos_id and framed[1:-1] == tok.encode("hi")


def test_specials_are_not_learned_from_training_text():
    text = "<|eos|>" * 200 + "ab " * 50
    tok = BPETokenizer.train(text, 256 + 20 + 3)
    assert all(b"<" not in v and b"|" not in v for v in tok.vocab[256:])


def test_out_of_vocabulary_id(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_dict_and_file_round_trip(tok, tmp_path):
    data = json.loads(json.dumps(tok.to_dict()))
    back = BPETokenizer.from_dict(data)
    assert back.merges == tok.merges and back.specials == tok.specials
    assert back.encode(TEXT) == tok.encode(TEXT)
    assert isinstance(tokenizer_from_dict(data), BPETokenizer)
    path = tok.save(tmp_path / "bpe.json")
    loaded = BPETokenizer.load(path)
    assert loaded.to_dict() == tok.to_dict()
    assert loaded.encode(TEXT) == tok.encode(TEXT)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not a valid JSON"),
        ('{"type": "byte", "specials": []}', "type: expected 'bpe'"),
        ('{"type": "bpe", "specials": []}', "merges: missing"),
        ('{"type": "bpe", "merges": [[1, 2, 3]], "specials": []}', "entry 0"),
        ('{"type": "bpe", "merges": [[1, 300]], "specials": []}', "does not exist"),
        ('{"type": "bpe", "merges": [], "specials": ["a", "a"]}', "duplicate"),
        ('{"type": "bpe", "merges": [], "specials": [], "vocab": 3}', "vocab: not a field"),
    ],
)
def test_corrupt_file_raises_value_error(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        BPETokenizer.load(path)


def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"


def test_bad_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("abc", 258)


def test_to_hf_encodes_identically(tok):
    hf = tok.to_hf()
    assert hf.get_vocab_size(with_added_tokens=True) == tok.vocab_size
    assert hf.encode(TEXT).ids == tok.encode(TEXT)
    assert hf.token_to_id("<|eos|>") == tok.eos_id
    assert hf.decode(tok.encode(TEXT)) == TEXT


# Code points that this Python's Unicode database calls unassigned (Cn) are left out: the regex
# module and tokenizers' Oniguruma ship newer, different Unicode versions, and disagree on whether a
# character assigned only recently is a letter (about 17,000 such code points in 2026). Every character
# assigned in both behaves identically; the pre-tokenizer's Unicode version is part of a tokenizer.
ASSIGNED_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=300)


@settings(max_examples=300, deadline=None)
@given(ASSIGNED_TEXT)
def test_to_hf_parity_on_random_unicode(tok, text):
    hf = _hf(tok)
    assert hf.encode(text).ids == tok.encode(text, allowed_special="all")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["<|bos|>", "<|eos|>", "a", " the", "é", "\n", "  ", "'s", "9"])))
def test_to_hf_parity_with_specials(tok, parts):
    """A bare ``tokenizers.Tokenizer`` always parses specials: ours does when every one is allowed."""
    text = "".join(parts)
    assert _hf(tok).encode(text).ids == tok.encode(text, allowed_special="all")
    # Wrapped, the Rust tokenizer keeps the default contract too: special text stays text.
    assert HFTokenizer(_hf(tok)).encode(text) == tok.encode(text)


_HF_CACHE = {}


def _hf(tok):
    if id(tok) not in _HF_CACHE:
        _HF_CACHE[id(tok)] = tok.to_hf()
    return _HF_CACHE[id(tok)]


@pytest.fixture(scope="module")
def shakespeare():
    corpus = load_tinyshakespeare(download=False)
    if corpus.origin == "fallback":
        pytest.skip("TinyShakespeare is not available (no LLMBOOK_DATA_DIR mirror or cache)")
    return corpus.text


@pytest.mark.slow
def test_tinyshakespeare_4096_identical_to_tokenizers(shakespeare):
    """The full-size run: every merge is learned, and Rust encodes the corpus to the same ids.

    Training time is measured by the benchmark (``bench/run.py``'s tokenizer stage, against
    ``tokenizers``), not asserted here: a wall-clock bound in a unit test fails on a busy machine.
    """
    tok = BPETokenizer.train(shakespeare, 4096)
    assert tok.vocab_size == 4096 and len(tok.merges) == 4096 - 256 - 3
    ids = tok.encode(shakespeare)
    assert tok.to_hf().encode(shakespeare).ids == ids
    assert tok.decode(ids, errors="strict") == shakespeare
    assert len(shakespeare.encode()) / len(ids) > 3.0  # about 3.2 bytes per token


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("abc", "4096")
    with pytest.raises(ValueError, match="pattern"):
        BPETokenizer(pattern="(unclosed")
    with pytest.raises(ValueError, match="same pair"):
        BPETokenizer([(97, 98), (97, 98)])
    with pytest.raises(ValueError, match="allowed_special"):
        BPETokenizer().encode("x", allowed_special="none")
    with pytest.raises(TypeError, match="str"):
        BPETokenizer().encode(b"bytes")


def test_iterable_of_documents_never_merges_across_documents():
    tok = BPETokenizer.train(["ab", "ab", "cd"], 256 + 3 + 10)
    assert [tok.vocab[i] for i in range(256, tok.vocab_size - 3)] == [b"ab", b"cd"]
