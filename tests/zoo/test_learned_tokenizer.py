"""Zoo recipes whose BPE tokenizer is learned on the corpus's training split."""

from dataclasses import replace

import pytest

from llmbook.data.corpora import fallback_text
from llmbook.tokenizer.bpe import BPETokenizer
from llmbook.zoo import recipes
from llmbook.zoo.recipes import RECIPES, check_tokenizer_spec, recipe_tokenizer, register
from llmbook.zoo.registry import load_or_train
from tests.conftest import TOY_TEXT

LEARNED = {"type": "bpe", "learn": {"vocab_size": 280}}


@pytest.fixture
def bpe_toy(toy_zoo, monkeypatch):
    toy = RECIPES["toy"]
    recipe = replace(
        toy,
        tokenizer=LEARNED,
        model={**toy.model, "vocab_size": 280},
        train={**toy.train, "bos_id": 277},  # after 256 bytes and 21 merges
    )
    monkeypatch.setitem(recipes.RECIPES, "toy", recipe)
    return recipe


def test_the_tokenizer_is_learned_on_the_training_text_only(bpe_toy):
    text = TOY_TEXT.decode() + "qxjqxj" * 50  # a validation tail of pairs the training text lacks
    tok = recipe_tokenizer(replace(bpe_toy, train_fraction=len(TOY_TEXT) / len(text)), text)
    assert tok.to_dict() == BPETokenizer.train(TOY_TEXT.decode(), 280).to_dict()
    assert all(
        b"q" not in tok.token_bytes(i) or len(tok.token_bytes(i)) == 1 for i in range(256, 277)
    )


def test_a_learned_tokenizer_trains_once_and_loads_back(bpe_toy):
    first = load_or_train("toy", "cpu", progress=False)
    assert first.trained_now and isinstance(first.tokenizer, BPETokenizer)
    assert first.tokenizer.vocab_size == 280 and first.tokenizer.bos_id == 277
    again = load_or_train("toy", "cpu", progress=False)
    assert not again.trained_now
    assert again.tokenizer.to_dict() == first.tokenizer.to_dict()
    text = "Before we proceed any further"
    assert again.tokenizer.encode(text) == first.tokenizer.encode(text)
    assert len(first.tokenizer.encode(text)) < len(text.encode())  # merges are in use


def test_a_bos_id_that_is_not_the_tokenizers_is_refused(bpe_toy, monkeypatch):
    monkeypatch.setitem(
        recipes.RECIPES, "toy", replace(bpe_toy, train={**bpe_toy.train, "bos_id": 256})
    )
    with pytest.raises(ValueError, match="train.bos_id: 256 is not the tokenizer's BOS id 277"):
        load_or_train("toy", "cpu", progress=False)


def test_a_model_vocabulary_smaller_than_the_tokenizers_is_refused(bpe_toy, monkeypatch):
    small = replace(bpe_toy, model={**bpe_toy.model, "vocab_size": 270})
    monkeypatch.setitem(
        recipes.RECIPES, "toy", replace(small, train={**small.train, "bos_id": None})
    )
    with pytest.raises(ValueError, match="model.vocab_size: 270"):
        load_or_train("toy", "cpu", progress=False)


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"type": "bpe", "learn": {"vocab_size": 100}}, "vocab_size"),
        ({"type": "bpe", "learn": {"vocab_size": True}}, "vocab_size"),
        ({"type": "bpe", "learn": {"vocab_size": "512"}}, "vocab_size"),
        ({"type": "bpe", "learn": {"vocab_size": 512, "min_count": 2}}, "learned BPE"),
        ({"type": "bpe", "learn": {"vocab_size": 512}, "merges": []}, "learned BPE"),
        ({"type": "nope"}, "type"),
    ],
)
def test_bad_tokenizer_descriptions_are_refused(spec, field):
    with pytest.raises(ValueError, match=field):
        check_tokenizer_spec(spec)


def test_only_a_pretraining_recipe_learns_its_tokenizer():
    recipe = replace(RECIPES["sft"], name="sft-learned", tokenizer=LEARNED)
    with pytest.raises(ValueError, match="only a pretraining recipe"):
        register(recipe)
    assert "sft-learned" not in RECIPES


@pytest.mark.slow
def test_the_book_recipes_bos_id_is_its_learned_tokenizers_on_the_fallback_corpus_too():
    # The mirror and the fallback corpus both have the pairs for every merge, so BOS lands where the
    # recipe says; a reader without the mirror trains on the fallback text.
    recipe = RECIPES["shakespeare-bpe"]
    tok = recipe_tokenizer(recipe, fallback_text())
    assert tok.vocab_size == recipe.model["vocab_size"]
    assert tok.bos_id == recipe.train["bos_id"]


def test_an_unreadable_learned_tokenizer_is_moved_aside_and_retrained(bpe_toy):
    import json

    from llmbook.storage import CheckpointWarning

    first = load_or_train("toy", "cpu", progress=False)
    meta_path = first.path / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["tokenizer"] = {"type": "nope"}
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(CheckpointWarning, match="invalid tokenizer"):
        again = load_or_train("toy", "cpu", progress=False)
    assert again.trained_now and again.tokenizer.to_dict() == first.tokenizer.to_dict()
