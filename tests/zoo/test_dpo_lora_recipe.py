"""Part 10's zoo recipes: SFT with LoRA (a plain model comes back) and DPO on top of a fine-tune."""

from __future__ import annotations

import pytest

from llmbook.align.dpo import DPOHistory
from llmbook.model import GPT
from llmbook.zoo import recipes
from llmbook.zoo.recipes import Recipe, resolve
from llmbook.zoo.registry import load_or_train
from tests.zoo.test_sft_recipe import sft_zoo  # noqa: F401  (the fixture)


@pytest.fixture
def part10_zoo(sft_zoo, monkeypatch):  # noqa: F811
    base = recipes.RECIPES["toy-sft"]
    lora = Recipe(
        **{
            **base.__dict__,
            "name": "toy-lora",
            "train": {**base.train, "lora_rank": 2, "lora_alpha": 4.0, "lr": 1e-2},
        }
    )
    dpo = Recipe(
        name="toy-dpo",
        description="test DPO",
        corpus="toy",
        kind="dpo",
        parent="toy-sft",
        tokenizer=base.tokenizer,
        train={
            "tasks": ["add", "reverse"],
            "kinds": ["off_by_one", "truncated"],
            "max_steps": 3,
            "batch_size": 4,
            "eval_interval": 0,
            "eval_pairs": 4,
            "eval_examples": 4,
            "sample_examples": 16,
        },
    )
    monkeypatch.setitem(recipes.RECIPES, "toy-lora", lora)
    monkeypatch.setitem(recipes.RECIPES, "toy-dpo", dpo)
    return sft_zoo


def test_lora_recipe_trains_adapters_and_serves_a_plain_model(part10_zoo):
    full = load_or_train("toy-sft", "cpu", progress=False)
    lora = load_or_train("toy-lora", "cpu", progress=False)
    assert lora.trained_now and type(lora.model) is GPT
    assert set(lora.model.state_dict()) == set(full.model.state_dict())
    m, f = lora.meta["metrics"], full.meta["metrics"]
    assert 0 < m["trainable_parameters"] < f["trainable_parameters"]
    assert m["optimizer_state_bytes"] < f["optimizer_state_bytes"]
    assert resolve("toy-lora", "cpu").key != resolve("toy-sft", "cpu").key
    again = load_or_train("toy-lora", "cpu", progress=False)
    assert not again.trained_now


def test_dpo_recipe_trains_from_its_parent_and_keeps_its_history(part10_zoo):
    zoo = load_or_train("toy-dpo", "cpu", progress=False)
    assert zoo.trained_now and zoo.meta["parent"]["name"] == "toy-sft"
    history = DPOHistory.from_dict(zoo.meta["history"])
    assert history.steps == [0, 1, 2] and history.eval_steps == [0, 3]
    metrics = zoo.meta["metrics"]
    assert metrics["verifier_accuracy_start"] == history.verifier_accuracy[0]
    assert 0.0 <= metrics["pair_accuracy"] <= 1.0
    parent = load_or_train("toy-sft", "cpu", progress=False)
    changed = [
        k
        for k, v in zoo.model.state_dict().items()
        if not (v == parent.model.state_dict()[k]).all()
    ]
    assert changed  # the policy moved away from its reference
    assert not load_or_train("toy-dpo", "cpu", progress=False).trained_now


def test_book_recipes_resolve_for_both_profiles():
    for name in ("dpo", "dpo-mix", "dpo-mix-biased", "lora-sft-r4"):
        for profile in ("cpu", "gpu"):
            r = resolve(name, profile)
            assert r.parent.recipe.name in ("sft", "shakespeare-modern")
