"""A fine-tuning recipe in the zoo: the chain parent -> SFT, its key, its fallback, and its CLI."""

import os

import pytest

from llmbook.align.chat import ChatFormat
from llmbook.data import corpora
from llmbook.zoo import recipes
from llmbook.zoo.recipes import Recipe, register, resolve
from llmbook.zoo.registry import load_or_train
from tests.test_cli import run
from tests.zoo.test_registry import _go_offline

CHAT_SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"]


@pytest.fixture
def sft_zoo(toy_zoo, monkeypatch):
    """A tiny RoPE parent on the toy corpus and a tiny fine-tuning recipe on top of it."""
    parent = Recipe(
        name="toy-rope",
        description="test parent",
        corpus="toy",
        model={
            "vocab_size": 259,
            "block_size": 16,
            "n_layer": 1,
            "n_head": 2,
            "n_embd": 16,
            "pos_embedding": "rope",
            "tie_weights": False,
        },
        train={"max_steps": 6, "batch_size": 4, "eval_interval": 0, "bos_id": 256},
    )
    child = Recipe(
        name="toy-sft",
        description="test fine-tune",
        corpus="toy",
        kind="sft",
        parent="toy-rope",
        tokenizer={"type": "byte", "specials": CHAT_SPECIALS},
        model={"vocab_size": 262, "block_size": 64},
        train={
            "tasks": {"add": 1.0, "reverse": 1.0},
            "block_size": 64,
            "max_steps": 4,
            "batch_size": 4,
            "eval_examples": 8,
        },
    )
    monkeypatch.setitem(recipes.RECIPES, "toy-rope", parent)
    monkeypatch.setitem(recipes.RECIPES, "toy-sft", child)
    return toy_zoo


def test_fine_tuning_recipe_trains_its_parent_first_then_loads(sft_zoo):
    zoo = load_or_train("toy-sft", "cpu", progress=False)
    assert zoo.trained_now
    assert zoo.model.config.vocab_size == 262 and zoo.model.config.block_size == 64
    assert zoo.tokenizer.specials == tuple(CHAT_SPECIALS)
    ChatFormat(zoo.tokenizer)  # has the chat tokens
    parent = load_or_train("toy-rope", "cpu", progress=False)
    assert not parent.trained_now  # trained on the way
    assert zoo.meta["parent"] == {"name": "toy-rope", "key": parent.recipe.key}
    metrics = zoo.meta["metrics"]
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and set(metrics["val_tasks"]) == {"add", "reverse"}
    again = load_or_train("toy-sft", "cpu", progress=False)
    assert not again.trained_now and again.path == zoo.path


def test_the_key_covers_the_parent(sft_zoo, monkeypatch):
    before = resolve("toy-sft", "cpu").key
    changed = recipes.RECIPES["toy-rope"].train | {"max_steps": 7}
    monkeypatch.setitem(
        recipes.RECIPES,
        "toy-rope",
        Recipe(**{**recipes.RECIPES["toy-rope"].__dict__, "train": changed}),
    )
    assert resolve("toy-sft", "cpu").key != before


def test_a_fallback_parent_makes_a_fallback_child(sft_zoo, tmp_path, monkeypatch):
    with monkeypatch.context() as offline:
        _go_offline(offline, tmp_path)
        with pytest.warns(corpora.FallbackCorpusWarning):
            fb = load_or_train("toy-sft", "cpu", progress=False)
        assert fb.fallback and "-fallback-" in fb.path.name
        assert fb.recipe.key != resolve("toy-sft", "cpu").key
    real = load_or_train("toy-sft", "cpu", progress=False)
    assert real.trained_now and not real.fallback and real.path != fb.path
    assert os.path.basename(real.path).startswith("toy-sft-cpu-")


def test_register_checks_kind_and_parent():
    with pytest.raises(ValueError, match="^kind:"):
        register(Recipe(name="x-kind", description="", corpus="toy", kind="rl"))
    with pytest.raises(ValueError, match="^parent:"):
        register(Recipe(name="x-orphan", description="", corpus="toy", kind="sft"))
    with pytest.raises(ValueError, match="^parent:"):
        register(Recipe(name="x-ghost", description="", corpus="toy", kind="sft", parent="ghost"))


def test_the_sft_recipe_resolves_for_both_profiles():
    for profile in ("cpu", "gpu"):
        r = resolve("sft", profile)
        assert r.parent.recipe.name == "shakespeare-modern"
        assert r.model_config.vocab_size == 262
        assert r.model_config.block_size >= r.parent.model_config.block_size
        assert r.model_config.n_embd == r.parent.model_config.n_embd


def test_cli_chat_and_task_eval_end_with_json(sft_zoo, capsys):
    status, summary, err = run(
        ["chat", "--recipe", "toy-sft", "--profile", "cpu", "--prompt", "What is 2 plus 3?"], capsys
    )
    assert status == 0, err
    assert summary["command"] == "chat" and len(summary["answers"]) == 1
    assert isinstance(summary["finished"][0], bool)
    status, summary, err = run(
        [
            "eval",
            "--recipe",
            "toy-sft",
            "--profile",
            "cpu",
            "--tasks",
            "add,reverse",
            "--per-cell",
            "2",
        ],
        capsys,
    )
    assert status == 0, err
    assert set(summary["tasks"]) == {"add", "reverse"}
    assert 0.0 <= summary["accuracy"] <= 1.0
    # add: 3 trained levels x 2, reverse: 4 levels x 2
    assert summary["n"] == 3 * 2 + 4 * 2


@pytest.mark.parametrize(
    "argv, names",
    [
        (["eval", "--recipe", "toy-sft", "--tasks", "nope"], "--tasks"),
        (["eval", "--recipe", "toy", "--tasks", "add"], "--tasks"),
        (["chat", "--recipe", "toy", "--prompt", "hi"], "--recipe"),
        (["sample", "--recipe", "toy-sft"], "--recipe"),
    ],
)
def test_cli_refuses_the_wrong_kind_of_model_in_one_line(sft_zoo, capsys, argv, names):
    status, summary, err = run(argv, capsys)
    assert status == 2 and "Traceback" not in err
    assert names in summary["error"]
