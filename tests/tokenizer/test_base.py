"""The special-token contract that the byte, BPE and Hugging Face tokenizers share (base.Tokenizer)."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.tokenizer import BPETokenizer, ByteTokenizer, HFTokenizer, Tokenizer

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    "It's 2024; we'll pay 3,000 ducats. <|eos|> is not the end. Ünïcödé: naïve café, 日本語 😀.\n"
) * 10
SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")


@pytest.fixture(scope="module")
def tokenizers():
    bpe = BPETokenizer.train(TEXT, 256 + 3 + 60)
    return {
        "byte": ByteTokenizer(),
        "bpe": bpe,
        "hf": HFTokenizer.train(TEXT, 256 + 3 + 60),
        "hf-export": HFTokenizer(bpe.to_hf()),  # the same ids as "bpe", encoded by Rust
    }


KINDS = ["byte", "bpe", "hf", "hf-export"]


def test_all_share_the_base_class(tokenizers):
    for tok in tokenizers.values():
        assert isinstance(tok, Tokenizer)
        assert tok.specials == SPECIALS
        assert set(tok.special_ids.values()) == {tok.bos_id, tok.eos_id, tok.pad_id}


@pytest.mark.parametrize("kind", KINDS)
def test_special_text_is_ordinary_text_by_default(tokenizers, kind):
    tok = tokenizers[kind]
    specials = set(tok.special_ids.values())
    ids = tok.encode("hi<|eos|>")
    assert not specials & set(ids), f"{kind} turned text into a special id: {ids}"
    assert tok.decode(ids, errors="strict") == "hi<|eos|>"
    assert tok.decode(ids, specials="error") == "hi<|eos|>"  # no special id to complain about
    batch = tok.encode_batch(["hi<|eos|>", "<|bos|>x"])
    assert batch == [ids, tok.encode("<|bos|>x")] and tok.bos_id not in batch[1]


@pytest.mark.parametrize("kind", KINDS)
def test_allowed_special_parses_exactly_the_named_ones(tokenizers, kind):
    tok = tokenizers[kind]
    ids = tok.encode("hi<|eos|>", allowed_special={"<|eos|>"})
    assert ids == [*tok.encode("hi"), tok.eos_id]
    assert ids.count(tok.eos_id) == 1
    mixed = tok.encode("<|bos|>hi<|eos|>", allowed_special={"<|eos|>"})
    assert tok.bos_id not in mixed and mixed == [*tok.encode("<|bos|>hi"), tok.eos_id]
    every = tok.encode("<|bos|>hi<|eos|><|pad|>", allowed_special="all")
    assert every == [tok.bos_id, *tok.encode("hi"), tok.eos_id, tok.pad_id]
    assert tok.decode(every, specials="keep") == "<|bos|>hi<|eos|><|pad|>"
    framed = tok.encode("hi<|eos|>", bos=True, eos=True, allowed_special=["<|eos|>"])
    assert framed == [tok.bos_id, *tok.encode("hi"), tok.eos_id, tok.eos_id]
    assert tok.encode_batch(["a<|pad|>", "b"], allowed_special="all") == [
        [*tok.encode("a"), tok.pad_id],
        tok.encode("b"),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_allowed_special_names_itself(tokenizers, kind):
    tok = tokenizers[kind]
    with pytest.raises(ValueError, match=re.escape("allowed_special: '<|user|>'")):
        tok.encode("x", allowed_special={"<|user|>"})
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special="<|eos|>")  # a single string is not a collection of them
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special=3)
    with pytest.raises(TypeError, match="texts"):
        tok.encode_batch("one string")
    with pytest.raises(TypeError, match="text: expected str"):
        tok.encode(17)


def test_hf_wrapper_matches_tokenizers_when_all_specials_are_allowed(tokenizers):
    """With every special allowed, the wrapper is exactly ``tokenizers``' own behaviour."""
    for kind in ("hf", "hf-export"):
        tok = tokenizers[kind]
        text = "<|bos|>" + TEXT[:300] + "<|eos|><|pad|>" + TEXT[300:500] + "<|eos|>"
        reference = tok.tokenizer.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, allowed_special="all") == reference


def test_bpe_and_its_rust_export_agree_under_every_policy(tokenizers):
    ours, rust = tokenizers["bpe"], tokenizers["hf-export"]
    text = "<|bos|>" + TEXT + "<|eos|>"
    for allowed in ((), {"<|eos|>"}, "all"):
        assert ours.encode(text, allowed_special=allowed) == rust.encode(
            text, allowed_special=allowed
        )


def test_ordinary_text_keeps_its_ids(tokenizers):
    """Text without special strings encodes as before: the zoo's checkpoints depend on those ids."""
    byte, bpe, hf = tokenizers["byte"], tokenizers["bpe"], tokenizers["hf"]
    assert byte.encode("Hi, Ω!") == list("Hi, Ω!".encode())
    plain = TEXT.replace("<|eos|>", "")
    assert bpe.encode(plain) == bpe.to_hf().encode(plain).ids
    assert hf.encode(plain) == hf.tokenizer.encode(plain, add_special_tokens=False).ids
    for tok in tokenizers.values():
        assert tok.encode(plain) == tok.encode(plain, allowed_special="all")


def test_byte_tokenizer_splits_bytes_on_allowed_specials():
    tok = ByteTokenizer()
    assert tok.encode(b"\xffhi<|eos|>", allowed_special="all") == [255, 104, 105, 257]
    assert tok.encode(bytearray(b"<|eos|>")) == list(b"<|eos|>")
    assert tok.decode_bytes(tok.encode(b"\xff<|pad|>")) == b"\xff<|pad|>"


def test_bos_of_a_tokenizer_without_one_names_it():
    tok = ByteTokenizer(("<|eos|>",))
    assert tok.encode("a", eos=True) == [97, 256]
    with pytest.raises(ValueError, match=re.escape("no '<|bos|>' token")):
        tok.encode("a", bos=True)


def test_hf_refuses_a_model_that_emits_a_special_from_ordinary_text():
    """A BPE with ``ignore_merges`` looks whole words up in its vocabulary, specials included."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {"h": 0, "i": 1, "hi": 2}
    model = models.BPE(vocab=vocab, merges=[("h", "i")], ignore_merges=True)
    raw = Tokenizer(model)
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens([AddedToken("hi", special=True)])
    tok = HFTokenizer(raw)
    assert tok.special_ids == {"hi": 2}
    with pytest.raises(ValueError, match="special id 2"):
        tok.encode("hi")
    assert tok.encode("hi", allowed_special="all") == [2]


PIECES = st.sampled_from([*SPECIALS, "<|", "|>", "eos", "a", " the", "é", "\n", "  ", "'s", "9"])
MIXED = st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=12).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=MIXED)
def test_default_encode_never_yields_a_special_id(tokenizers, text):
    for kind, tok in tokenizers.items():
        specials = set(tok.special_ids.values())
        ids = tok.encode(text)
        assert not specials & set(ids), kind
        assert tok.decode(ids, errors="strict") == text, kind
        parsed = tok.encode(text, allowed_special="all")
        n_special = sum(text.count(s) for s in SPECIALS)  # these three can never overlap
        assert sum(i in specials for i in parsed) == n_special, kind
        assert tok.decode(parsed, specials="keep", errors="strict") == text, kind


@pytest.mark.parametrize("kind", KINDS)
def test_shared_decode_path(tokenizers, kind):
    tok = tokenizers[kind]
    ids = tok.encode("Speak, speak.")
    framed = [tok.bos_id, *ids, tok.eos_id]
    assert tok.decode(torch.tensor(framed)) == tok.decode(iter(framed)) == "Speak, speak."
    assert tok.decode(framed, specials="keep") == "<|bos|>Speak, speak.<|eos|>"
    assert tok.decode([]) == "" and tok.decode_bytes([tok.pad_id]) == b""
    with pytest.raises(ValueError, match="special token id"):
        tok.decode(framed, specials="error")
    with pytest.raises(ValueError, match="specials: must be one of"):
        tok.decode(ids, specials="drop")
    for bad in (-1, tok.vocab_size):
        with pytest.raises(ValueError, match=f"ids: {bad} is outside the vocabulary"):
            tok.decode([*ids, bad])
