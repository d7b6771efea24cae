"""A GRPO recipe in the zoo: parent -> SFT -> GRPO (optionally with a reward model), key, CLI."""

import dataclasses

import pytest

from llmbook.align.grpo_config import GRPOConfig
from llmbook.model.gpt import GPT
from llmbook.zoo import recipes
from llmbook.zoo.recipes import register, resolve
from llmbook.zoo.registry import load_or_train
from tests.test_cli import run
from tests.zoo.test_reward_recipe import _register, policy_recipe

GRPO_TRAIN = {
    "prompts": {"add": [1], "reverse": [3]},
    "iterations": 2,
    "prompts_per_batch": 2,
    "group_size": 2,
    "minibatch_size": 2,
    "eval_examples": 4,
    "eval_interval": 0,
    "max_new_tokens": 4,
}


def _grpo_recipe(name="toy-grpo", reward_model=None, **train):
    return policy_recipe("grpo", name, {**GRPO_TRAIN, **train}, reward_model=reward_model)


@pytest.fixture
def grpo_zoo(toy_zoo, monkeypatch):
    _register(monkeypatch)
    monkeypatch.setitem(recipes.RECIPES, "toy-grpo", _grpo_recipe())
    return toy_zoo


def test_a_grpo_recipe_trains_saves_and_reloads(grpo_zoo):
    zoo = load_or_train("toy-grpo", "cpu", progress=False)
    assert zoo.trained_now and isinstance(zoo.model, GPT)
    meta = zoo.meta
    assert meta["parent"]["name"] == "toy-sft" and "reward_model" not in meta
    assert 0.0 <= meta["metrics"]["val_accuracy"] <= 1.0
    assert meta["metrics"]["sampled_tokens"] > 0
    assert len(meta["history"]["iterations"]) == 2
    again = load_or_train("toy-grpo", "cpu", progress=False)
    assert not again.trained_now
    for a, b in zip(zoo.model.parameters(), again.model.parameters()):
        assert a.equal(b)


def test_a_grpo_recipe_may_pay_with_a_reward_model(grpo_zoo, monkeypatch):
    paid = _grpo_recipe(
        name="toy-grpo-rm", reward_model="toy-reward", rm_weight=1.0, verifier_weight=0.0
    )
    monkeypatch.setitem(recipes.RECIPES, "toy-grpo-rm", paid)
    zoo = load_or_train("toy-grpo-rm", "cpu", progress=False)
    assert zoo.meta["reward_model"]["name"] == "toy-reward"
    assert "rm_score" in zoo.meta["history"]["eval"]
    # The policy moved away from the SFT model it started from (the reward model's scores differ
    # within a group, so every group has a signal).
    sft = load_or_train("toy-sft", "cpu", progress=False)
    assert any(not a.equal(b) for a, b in zip(zoo.model.parameters(), sft.model.parameters()))


def test_the_key_covers_the_grpo_config_and_the_reward_model(grpo_zoo, monkeypatch):
    base = resolve("toy-grpo", "cpu")
    assert isinstance(base.train_config, GRPOConfig) and base.reward_model is None
    monkeypatch.setitem(recipes.RECIPES, "toy-grpo", _grpo_recipe(aggregation="dapo"))
    assert resolve("toy-grpo", "cpu").key != base.key
    monkeypatch.setitem(recipes.RECIPES, "toy-grpo", _grpo_recipe(reward_model="toy-reward"))
    assert resolve("toy-grpo", "cpu").key != base.key


def test_register_checks_a_grpo_recipe(grpo_zoo):
    with pytest.raises(ValueError, match="reward_model"):
        register(_grpo_recipe(name="toy-grpo-2", reward_model="toy-sft"))
    with pytest.raises(ValueError, match="tokenizer"):
        register(dataclasses.replace(_grpo_recipe(name="toy-grpo-2"), tokenizer={"type": "byte"}))


def test_a_bad_grpo_config_is_named_on_resolve(grpo_zoo, monkeypatch):
    monkeypatch.setitem(recipes.RECIPES, "toy-grpo", _grpo_recipe(group_size=1))
    with pytest.raises(ValueError, match="group_size"):
        resolve("toy-grpo", "cpu")


def test_cli_train_of_a_grpo_policy_ends_with_json_and_it_chats(grpo_zoo, capsys):
    status, summary, err = run(["train", "--recipe", "toy-grpo", "--no-progress"], capsys)
    assert status == 0, err
    assert summary["steps"] == 2 and 0.0 <= summary["val_accuracy"] <= 1.0
    status, summary, _ = run(["sample", "--recipe", "toy-grpo", "--prompt", "hi"], capsys)
    assert status != 0 and "chat" in summary["error"]
    status, summary, err = run(["chat", "--recipe", "toy-grpo", "--prompt", "What is 2+3?"], capsys)
    assert status == 0, err


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_the_book_grpo_recipe_resolves(profile):
    r = resolve("grpo", profile)
    assert r.recipe.kind == "grpo" and r.recipe.book
    assert r.parent.recipe.name == "sft" and r.reward_model is None
    assert r.train_config.verifier_weight == 1.0 and r.train_config.rm_weight == 0.0
    if profile == "gpu":
        assert r.model_config.dropout == 0.0
