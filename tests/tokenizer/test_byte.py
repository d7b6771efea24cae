import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llmbook.tokenizer.byte import ByteTokenizer

TOK = ByteTokenizer()


@given(st.binary(max_size=512))
def test_bytes_round_trip(data):
    ids = TOK.encode(data)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(data)
    assert TOK.decode_bytes(ids) == data
    assert TOK.decode_bytes(TOK.encode(data, bos=True, eos=True)) == data


@given(st.text(max_size=200))
def test_text_round_trip(text):
    assert TOK.decode(TOK.encode(text), errors="strict") == text


def test_specials_are_above_the_bytes():
    assert (TOK.bos_id, TOK.eos_id, TOK.pad_id) == (256, 257, 258)
    assert TOK.vocab_size == 259
    assert TOK.encode("hi", bos=True, eos=True) == [256, 104, 105, 257]


def test_special_text_in_input_is_not_a_special_token():
    ids = TOK.encode("<|eos|>")
    assert TOK.eos_id not in ids and len(ids) == 7


def test_special_policies():
    ids = [256, 104, 105, 257]
    assert TOK.decode(ids) == "hi"
    assert TOK.decode(ids, specials="keep") == "<|bos|>hi<|eos|>"
    with pytest.raises(ValueError, match="special"):
        TOK.decode(ids, specials="error")


def test_invalid_utf8_policy():
    cut = "é".encode()[:1]  # half of a two-byte character
    assert TOK.decode(list(cut)) == "\ufffd"
    assert TOK.decode(list(cut), errors="backslashreplace") == "\\xc3"
    with pytest.raises(UnicodeDecodeError):
        TOK.decode(list(cut), errors="strict")


def test_out_of_vocabulary_and_tensors():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOK.decode([300])
    assert TOK.decode(torch.tensor([104, 105])) == "hi"


def test_extra_specials_and_round_trip_dict():
    tok = ByteTokenizer(("<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>"))
    assert tok.vocab_size == 261 and tok.special_ids["<|assistant|>"] == 260
    assert ByteTokenizer.from_dict(tok.to_dict()).specials == tok.specials
    with pytest.raises(ValueError, match="specials"):
        ByteTokenizer(("<|a|>", "<|a|>"))
    with pytest.raises(ValueError, match="specials"):
        _ = ByteTokenizer(("<|x|>",)).eos_id
