import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    HFTokenizer,
    tokenizer_from_dict,
)

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    "It's 2024; we'll pay 3,000 ducats. Ünïcödé: naïve café, 日本語 😀.\n"
) * 20


@pytest.fixture(scope="module")
def tok():
    return HFTokenizer.train(TEXT, 256 + 3 + 80)


def test_train_layout(tok):
    assert tok.vocab_size == 256 + 3 + 80
    assert tok.specials == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)  # tokenizers puts specials first
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT.encode()) / 2


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_round_trip_any_text(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids, errors="strict") == text
    assert tok.decode_bytes(ids) == text.encode()


def test_specials(tok):
    ids = tok.encode("<|bos|>Speak<|eos|>", allowed_special="all")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "Speak"
    assert tok.decode(ids, specials="keep") == "<|bos|>Speak<|eos|>"
    with pytest.raises(ValueError, match="special"):
        tok.decode(ids, specials="error")
    framed = tok.encode("Speak", bos=True, eos=True)
    assert framed == [tok.bos_id, *tok.encode("Speak"), tok.eos_id]
    assert tok.encode_batch(["Speak", "hear"], eos=True) == [
        tok.encode("Speak", eos=True),
        tok.encode("hear", eos=True),
    ]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="no '<|user|>'"):
        tok._special("<|user|>")


def test_dict_round_trip_is_exact(tok):
    data = json.loads(json.dumps(tok.to_dict()))
    back = HFTokenizer.from_dict(data)
    assert back.to_dict() == tok.to_dict()
    assert back.encode(TEXT) == tok.encode(TEXT)


def test_save_load_identical(tok, tmp_path):
    path = tok.save(tmp_path / "tokenizer.json")
    assert path.read_text() == tok.tokenizer.to_str()
    loaded = HFTokenizer.load(path)
    assert loaded.to_dict() == tok.to_dict()
    assert loaded.encode(TEXT) == tok.encode(TEXT)
    assert HFTokenizer.load(tmp_path).encode(TEXT) == tok.encode(TEXT)  # the directory form


def test_corrupt_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        HFTokenizer.load(path)
    path.write_text('{"model": 3}')
    with pytest.raises(ValueError, match="tokenizer_json"):
        HFTokenizer.load(path)
    with pytest.raises(ValueError, match="type"):
        HFTokenizer.from_dict({"type": "bpe"})


def test_same_merges_as_ours_on_a_tie_free_text():
    """Both trainers pick the most frequent pair; they only break ties differently."""
    text = "aaab " * 9 + "ab " * 4 + "cd " * 3
    ours = BPETokenizer.train(text, 256 + 3 + 4)
    theirs = HFTokenizer.train(text, 256 + 3 + 4)
    merged = {theirs.decode([i]) for i in range(259, theirs.vocab_size)}
    assert merged == {ours.decode([i]) for i in range(256, 256 + len(ours.merges))}


def test_tokenizer_from_dict_dispatch(tok):
    assert isinstance(tokenizer_from_dict(ByteTokenizer().to_dict()), ByteTokenizer)
    assert isinstance(tokenizer_from_dict(BPETokenizer([(97, 98)]).to_dict()), BPETokenizer)
    assert isinstance(tokenizer_from_dict(tok.to_dict()), HFTokenizer)
    with pytest.raises(ValueError, match="'sentencepiece'"):
        tokenizer_from_dict({"type": "sentencepiece"})
    with pytest.raises(ValueError, match="None"):
        tokenizer_from_dict({})


def test_bad_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        HFTokenizer.train("abc", 100)
