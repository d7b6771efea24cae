"""A PPO recipe in the zoo: parent -> SFT -> (reward) -> PPO, its key, reloading, the CLI, refusals."""

import dataclasses

import pytest

from llmbook.align.ppo_config import PPOConfig
from llmbook.model.gpt import GPT
from llmbook.zoo import recipes
from llmbook.zoo.recipes import register, resolve
from llmbook.zoo.registry import load_or_train
from tests.test_cli import run
from tests.zoo.test_reward_recipe import _register, policy_recipe

PPO_TRAIN = {
    "prompts": {"add": [1], "reverse": [3]},
    "iterations": 2,
    "batch_size": 4,
    "minibatch_size": 2,
    "eval_examples": 4,
    "eval_interval": 0,
    "max_new_tokens": 4,
}


def _ppo_recipe(name="toy-ppo", reward_model="toy-reward", **train):
    return policy_recipe("ppo", name, {**PPO_TRAIN, **train}, reward_model=reward_model)


@pytest.fixture
def ppo_zoo(toy_zoo, monkeypatch):
    _register(monkeypatch)
    monkeypatch.setitem(recipes.RECIPES, "toy-ppo", _ppo_recipe())
    return toy_zoo


def test_a_ppo_recipe_trains_saves_and_reloads(ppo_zoo):
    zoo = load_or_train("toy-ppo", "cpu", progress=False)
    assert zoo.trained_now and isinstance(zoo.model, GPT)
    meta = zoo.meta
    assert meta["parent"]["name"] == "toy-sft" and meta["reward_model"]["name"] == "toy-reward"
    assert 0.0 <= meta["metrics"]["val_accuracy"] <= 1.0
    assert len(meta["history"]["iterations"]) == 2
    again = load_or_train("toy-ppo", "cpu", progress=False)
    assert not again.trained_now
    for a, b in zip(zoo.model.parameters(), again.model.parameters()):
        assert a.equal(b)
    # The policy moved away from the SFT model it started from.
    sft = load_or_train("toy-sft", "cpu", progress=False)
    assert any(not a.equal(b) for a, b in zip(zoo.model.parameters(), sft.model.parameters()))


def test_the_key_covers_the_reward_model_and_the_ppo_config(ppo_zoo, monkeypatch):
    base = resolve("toy-ppo", "cpu")
    assert isinstance(base.train_config, PPOConfig)
    assert base.reward_model.recipe.name == "toy-reward"
    monkeypatch.setitem(recipes.RECIPES, "toy-ppo", _ppo_recipe(reward_model="toy-reward-encoder"))
    assert resolve("toy-ppo", "cpu").key != base.key
    monkeypatch.setitem(recipes.RECIPES, "toy-ppo", _ppo_recipe(beta=0.2))
    assert resolve("toy-ppo", "cpu").key != base.key
    changed = dataclasses.replace(
        recipes.RECIPES["toy-reward"], train={**recipes.RECIPES["toy-reward"].train, "max_steps": 4}
    )
    monkeypatch.setitem(recipes.RECIPES, "toy-reward", changed)
    monkeypatch.setitem(recipes.RECIPES, "toy-ppo", _ppo_recipe())
    assert resolve("toy-ppo", "cpu").key != base.key


def test_register_checks_the_reward_model(ppo_zoo):
    with pytest.raises(ValueError, match="reward_model"):
        register(_ppo_recipe(name="toy-ppo-2", reward_model=None))
    with pytest.raises(ValueError, match="reward_model"):
        register(_ppo_recipe(name="toy-ppo-2", reward_model="toy-sft"))
    with pytest.raises(ValueError, match="reward_model"):
        register(
            dataclasses.replace(
                recipes.RECIPES["toy-sft"], name="toy-sft-2", reward_model="toy-reward"
            )
        )
    with pytest.raises(ValueError, match="tokenizer"):
        register(dataclasses.replace(_ppo_recipe(name="toy-ppo-2"), tokenizer={"type": "byte"}))


def test_a_bad_ppo_config_is_named_on_resolve(ppo_zoo, monkeypatch):
    monkeypatch.setitem(recipes.RECIPES, "toy-ppo", _ppo_recipe(iterations=0))
    with pytest.raises(ValueError, match="iterations"):
        resolve("toy-ppo", "cpu")


def test_cli_train_of_a_ppo_policy_ends_with_json(ppo_zoo, capsys):
    status, summary, err = run(["train", "--recipe", "toy-ppo", "--no-progress"], capsys)
    assert status == 0, err
    assert summary["steps"] == 2 and 0.0 <= summary["val_accuracy"] <= 1.0
    status, summary, _ = run(["sample", "--recipe", "toy-ppo", "--prompt", "hi"], capsys)
    assert status != 0 and "chat" in summary["error"]


def test_a_ppo_recipe_can_turn_the_parents_dropout_off(ppo_zoo, monkeypatch):
    # A parent fine-tuned with dropout (as the gpu profile's are): sampling (eval mode) and the
    # recomputed log-probabilities (train mode) disagree unless the PPO recipe turns dropout off.
    base = recipes.RECIPES["toy-rope"]
    base = dataclasses.replace(base, name="toy-rope-drop", model={**base.model, "dropout": 0.1})
    monkeypatch.setitem(recipes.RECIPES, "toy-rope-drop", base)
    dropped = dataclasses.replace(recipes.RECIPES["toy-sft"], name="toy-sft-drop", parent=base.name)
    monkeypatch.setitem(recipes.RECIPES, "toy-sft-drop", dropped)
    kept = dataclasses.replace(_ppo_recipe(name="toy-ppo-drop"), parent="toy-sft-drop")
    monkeypatch.setitem(recipes.RECIPES, "toy-ppo-drop", kept)
    with pytest.raises(AssertionError, match="dropout"):
        load_or_train("toy-ppo-drop", "cpu", progress=False)
    off = dataclasses.replace(kept, name="toy-ppo-off", model={"dropout": 0.0})
    monkeypatch.setitem(recipes.RECIPES, "toy-ppo-off", off)
    zoo = load_or_train("toy-ppo-off", "cpu", progress=False)
    assert zoo.model.config.dropout == 0.0 and zoo.meta["model"]["dropout"] == 0.0
    parent = load_or_train("toy-sft-drop", "cpu", progress=False)
    assert parent.model.config.dropout == 0.1


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
@pytest.mark.parametrize(
    "name, reward_model",
    [
        ("ppo", "reward"),
        ("ppo-biased", "reward-biased"),
        ("ppo-biased-kl", "reward-biased"),
        ("ppo-biased-verifier", "reward-biased"),
    ],
)
def test_the_book_ppo_recipes_resolve(profile, name, reward_model):
    r = resolve(name, profile)
    assert r.recipe.kind == "ppo" and r.recipe.book
    assert r.parent.recipe.name == "sft" and r.reward_model.recipe.name == reward_model
    # the policy keeps the SFT model's weights and shapes; dropout is off in every profile
    shapes = {k: v for k, v in r.parent.model_config.to_dict().items() if k != "dropout"}
    assert {k: v for k, v in r.model_config.to_dict().items() if k != "dropout"} == shapes
    assert r.model_config.dropout == 0.0
    cfg = r.train_config
    assert isinstance(cfg, PPOConfig)
    # the recipe of the target pays the verifier; the hacking runs the reward model
    assert cfg.verifier_weight > 0 if name == "ppo" else cfg.rm_weight > 0
    assert r.recipe.tokenizer == r.parent.recipe.tokenizer == r.reward_model.recipe.tokenizer


def test_the_reward_hacking_recipes_differ_only_where_they_say():
    base = resolve("ppo-biased", "cpu").train_config.to_dict()
    for name, changed in (
        ("ppo-biased-kl", {"beta"}),
        ("ppo-biased-verifier", {"verifier_weight"}),
    ):
        other = resolve(name, "cpu").train_config.to_dict()
        assert {k for k in base if base[k] != other[k]} == changed
