"""A reward-model recipe in the zoo: parent -> SFT -> reward, its key, reloading, a corrupt entry, the CLI."""

import json
import shutil

import pytest
import torch

from llmbook.align.chat import ChatFormat
from llmbook.align.preference import preference_data
from llmbook.align.reward import RewardHistory
from llmbook.align.reward_model import RewardModel, score
from llmbook.data import corpora
from llmbook.data.corpora import CorpusFile
from llmbook.storage import CheckpointWarning
from llmbook.zoo import recipes
from llmbook.zoo.checkpoint import CheckpointError
from llmbook.zoo.recipes import Recipe, register, resolve
from llmbook.zoo.registry import checkpoint_dir, load_checkpoint, load_or_train
from tests.conftest import TOY_TEXT
from tests.test_cli import run

CHAT_SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"]
TASKS = ["add", "reverse"]
REWARD_TRAIN = {
    "tasks": TASKS,
    "max_steps": 3,
    "batch_size": 4,
    "eval_pairs": 8,
    "warmup_steps": 1,
}


def _reward_recipe(name="toy-reward", **train):
    return Recipe(
        name=name,
        description="test reward model",
        corpus="toy",
        kind="reward",
        parent="toy-sft",
        tokenizer={"type": "byte", "specials": CHAT_SPECIALS},
        train={**REWARD_TRAIN, **train},
    )


def policy_recipe(kind: str, name: str, train: dict, *, reward_model: str | None = None) -> Recipe:
    """A tiny PPO or GRPO recipe on ``toy-sft`` (see :func:`_register`).

    :param kind: ``"ppo"`` or ``"grpo"``.
    :param name: the recipe's name.
    :param train: its config fields.
    :param reward_model: the reward recipe it names, if any.
    :returns: the recipe (not registered).
    """
    return Recipe(
        name=name,
        description=f"test {kind.upper()} policy",
        corpus="toy",
        kind=kind,
        parent="toy-sft",
        reward_model=reward_model,
        tokenizer={"type": "byte", "specials": CHAT_SPECIALS},
        train=train,
    )


def _register(mp: pytest.MonkeyPatch) -> None:
    """A tiny RoPE parent, a tiny fine-tune of it, and two tiny reward models on the fine-tune.

    They go into the registry through ``mp``, so they are gone when it is undone.
    """
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
        train={"max_steps": 4, "batch_size": 4, "eval_interval": 0, "bos_id": 256},
    )
    sft = Recipe(
        name="toy-sft",
        description="test fine-tune",
        corpus="toy",
        kind="sft",
        parent="toy-rope",
        tokenizer={"type": "byte", "specials": CHAT_SPECIALS},
        model={"vocab_size": 262, "block_size": 96},
        train={
            "tasks": {t: 1.0 for t in TASKS},
            "block_size": 96,
            "max_steps": 2,
            "batch_size": 4,
            "eval_examples": 4,
        },
    )
    mp.setitem(recipes.RECIPES, "toy-rope", parent)
    mp.setitem(recipes.RECIPES, "toy-sft", sft)
    mp.setitem(recipes.RECIPES, "toy-reward", _reward_recipe())
    mp.setitem(
        recipes.RECIPES,
        "toy-reward-encoder",
        _reward_recipe("toy-reward-encoder", pooling="mean", causal=False),
    )


def _probe_scores(zoo):
    pairs = preference_data(6, split="test", seed=5, tasks=TASKS)
    chat = ChatFormat(zoo.tokenizer)
    prompts = [p.prompt for p in pairs]
    return torch.cat(
        [
            score(zoo.model, chat, prompts, [p.chosen for p in pairs]),
            score(zoo.model, chat, prompts, [p.rejected for p in pairs]),
        ]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train the chain once per module (the toy_zoo setting, in a cache of its own); the tests copy
    that cache. Returns ``(zoo cache directory, {name: (ZooModel, probe scores)})``."""
    root = tmp_path_factory.mktemp("reward-zoo")
    mirror = root / "mirror"
    mirror.mkdir()
    (mirror / "toy.txt").write_bytes(TOY_TEXT)
    fresh = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMBOOK_DATA_DIR", str(mirror))
        mp.setenv("LLMBOOK_CACHE_DIR", str(root / "cache"))
        mp.setitem(
            corpora.CORPORA,
            "toy",
            CorpusFile(
                name="toy.txt", url="http://127.0.0.1:9/", sha256=corpora.sha256_of(TOY_TEXT)
            ),
        )
        _register(mp)
        for name in ("toy-reward", "toy-reward-encoder"):
            zoo = load_or_train(name, "cpu", progress=False)
            fresh[name] = (zoo, _probe_scores(zoo))
    return root / "cache" / "zoo", fresh


@pytest.fixture
def reward_zoo(toy_zoo, monkeypatch, trained):
    """The toy zoo with the reward chain registered and already trained (copied from ``trained``)."""
    _register(monkeypatch)
    shutil.copytree(trained[0], toy_zoo / "zoo", ignore=shutil.ignore_patterns("*.lock"))
    return toy_zoo


@pytest.mark.parametrize(
    "name, pooling, causal", [("toy-reward", "last", True), ("toy-reward-encoder", "mean", False)]
)
def test_a_reward_recipe_trains_saves_and_reloads_with_identical_scores(
    reward_zoo, trained, name, pooling, causal
):
    zoo, scores = trained[1][name]
    assert zoo.trained_now
    assert isinstance(zoo.model, RewardModel) and not zoo.model.training
    assert zoo.model.pooling == pooling and zoo.model.causal is causal
    assert zoo.model.config.vocab_size == 262
    assert zoo.tokenizer.specials == tuple(CHAT_SPECIALS)
    sft = load_or_train("toy-sft", "cpu", progress=False)
    assert not sft.trained_now  # trained on the way
    assert zoo.meta["parent"] == {"name": "toy-sft", "key": sft.recipe.key}
    assert zoo.meta["reward"] == {"pooling": pooling, "causal": causal}
    assert 0.0 <= zoo.meta["metrics"]["val_accuracy"] <= 1.0
    history = zoo.meta["history"]
    assert set(history) == set(RewardHistory.__dataclass_fields__)
    assert history["steps"] == [0, 1, 2] and history["data"]["n"] == 3 * 4
    assert zoo.meta["metrics"]["val_accuracy"] == history["val_accuracy"]
    # The reward model trained a copy: the SFT checkpoint's weights are not its backbone's.
    assert any(
        not torch.equal(a, b)
        for a, b in zip(sft.model.parameters(), zoo.model.backbone.parameters())
    )

    again = load_or_train(name, "cpu", progress=False)
    assert not again.trained_now and again.path.name == zoo.path.name
    assert isinstance(again.model, RewardModel)
    assert again.model.pooling == pooling and again.model.causal is causal
    assert again.tokenizer.to_dict() == zoo.tokenizer.to_dict()
    for (n, a), (_, b) in zip(zoo.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert torch.equal(_probe_scores(again), scores)
    # load_checkpoint alone gives the reward model too.
    model, meta = load_checkpoint(again.path)
    assert isinstance(model, RewardModel) and meta["reward"] == zoo.meta["reward"]


@pytest.mark.parametrize(
    "change",
    [
        {"length_bias": 0.9},
        {"pooling": "mean", "causal": False},
        {"loss": "margin_ranking", "margin": 1.0},
        {"max_steps": 4},
        {"kinds": ["off_by_one"]},
    ],
)
def test_the_key_changes_with_the_reward_config(reward_zoo, monkeypatch, change):
    before = resolve("toy-reward", "cpu")
    assert before.parent.recipe.name == "toy-sft"
    monkeypatch.setitem(recipes.RECIPES, "toy-reward", _reward_recipe(**change))
    after = resolve("toy-reward", "cpu")
    assert after.key != before.key
    assert after.parent.key == before.parent.key


def test_the_key_covers_the_parent(reward_zoo, monkeypatch):
    before = resolve("toy-reward", "cpu").key
    sft = recipes.RECIPES["toy-sft"]
    monkeypatch.setitem(
        recipes.RECIPES,
        "toy-sft",
        Recipe(**{**sft.__dict__, "train": {**sft.train, "max_steps": 3}}),
    )
    assert resolve("toy-reward", "cpu").key != before


def test_a_reward_recipe_resolves_to_its_parents_model_and_a_reward_config(reward_zoo):
    r = resolve("toy-reward", "cpu")
    assert r.model_config == r.parent.model_config
    assert r.train_config.tasks == TASKS and r.train_config.max_steps == 3
    assert type(r.train_config).__name__ == "RewardConfig"
    with pytest.raises(ValueError, match="^length_bias:"):
        recipes.RECIPES["toy-bad"] = _reward_recipe("toy-bad", length_bias=2.0)
        try:
            resolve("toy-bad", "cpu")
        finally:
            del recipes.RECIPES["toy-bad"]


def test_register_wants_a_parent_for_a_reward_recipe():
    with pytest.raises(ValueError, match="^parent:"):
        register(Recipe(name="x-reward-orphan", description="", corpus="toy", kind="reward"))
    assert "x-reward-orphan" not in recipes.RECIPES


@pytest.mark.parametrize(
    "entry",
    [
        {"pooling": "max", "causal": True},
        {"pooling": "last", "causal": "yes"},
        {"pooling": "last"},
        "last",
        [],
    ],
)
def test_a_corrupt_reward_entry_raises_a_checkpoint_error(reward_zoo, entry):
    directory = checkpoint_dir(resolve("toy-reward", "cpu"))
    meta_path = directory / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["reward"] = entry
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="invalid reward entry"):
        load_checkpoint(directory)


def test_a_checkpoint_with_a_corrupt_reward_entry_is_moved_aside_and_retrained(reward_zoo):
    directory = checkpoint_dir(resolve("toy-reward", "cpu"))
    meta_path = directory / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["reward"] = {"pooling": "max", "causal": True}
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(CheckpointWarning, match="invalid reward entry.*moved it to"):
        again = load_or_train("toy-reward", "cpu", progress=False)
    assert again.trained_now and isinstance(again.model, RewardModel)
    assert again.meta["reward"] == {"pooling": "last", "causal": True}
    assert list(directory.parent.glob(f"{directory.name}.unreadable-*"))  # kept, not deleted


def test_a_reward_checkpoint_without_its_reward_entry_is_not_served_as_a_gpt(reward_zoo):
    directory = checkpoint_dir(resolve("toy-reward", "cpu"))
    meta_path = directory / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    del meta["reward"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError):
        load_checkpoint(directory)
    with pytest.warns(CheckpointWarning, match="moved it to"):
        again = load_or_train("toy-reward", "cpu", progress=False)
    assert again.trained_now and isinstance(again.model, RewardModel)


def test_cli_train_of_a_reward_model_ends_with_json(reward_zoo, capsys):
    # `make zoo` reads this line for every book recipe: a reward model has an accuracy, no loss.
    status, summary, err = run(["train", "--recipe", "toy-reward", "--if-missing"], capsys)
    assert status == 0, err
    assert summary["command"] == "train" and summary["val_loss"] is None
    assert 0.0 <= summary["val_accuracy"] <= 1.0


def test_cli_eval_of_a_reward_model_ends_with_json(reward_zoo, capsys):
    argv = ["eval", "--recipe", "toy-reward", "--profile", "cpu", "--pairs", "10", "--seed", "1"]
    status, summary, err = run(argv, capsys)
    assert status == 0, err
    assert summary["command"] == "eval" and summary["recipe"] == "toy-reward"
    assert summary["n"] == 10 and summary["split"] == "test"
    assert 0.0 <= summary["pairwise_accuracy"] <= 1.0
    assert set(summary["tasks"]) <= set(TASKS)
    assert sum(row["n"] for row in summary["kinds"].values()) == 10
    assert sum(row["n"] for row in summary["tasks"].values()) == 10


@pytest.mark.parametrize(
    "argv, names",
    [
        (["eval", "--recipe", "toy-reward", "--tasks", "add"], "--recipe"),
        (["sample", "--recipe", "toy-reward"], "--recipe"),
        (["chat", "--recipe", "toy-reward", "--prompt", "hi"], "--recipe"),
    ],
)
def test_cli_refuses_a_reward_model_where_it_does_not_fit(reward_zoo, capsys, argv, names):
    status, summary, err = run(argv, capsys)
    assert status == 2 and "Traceback" not in err
    assert names in summary["error"]


def test_a_reward_recipe_must_use_its_parents_tokenizer(reward_zoo, monkeypatch):
    # The checkpoint stores the parent's chat tokenizer: a recipe naming another would never match
    # its own checkpoint, so both registering and resolving one refuse it, naming the field.
    plain = Recipe(**{**_reward_recipe("toy-reward-plain").__dict__, "tokenizer": {"type": "byte"}})
    with pytest.raises(ValueError, match="^tokenizer:"):
        recipes.register(plain)
    assert "toy-reward-plain" not in recipes.RECIPES
    monkeypatch.setitem(recipes.RECIPES, "toy-reward-plain", plain)
    with pytest.raises(ValueError, match="^tokenizer:"):
        resolve("toy-reward-plain", "cpu")


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_the_book_reward_recipes_resolve(profile):
    resolved = {
        name: resolve(name, profile) for name in ("reward", "reward-biased", "reward-encoder")
    }
    for r in resolved.values():
        assert r.recipe.kind == "reward" and r.parent.recipe.name == "sft"
        assert r.model_config == r.parent.model_config
        # The checkpoint stores the parent's chat tokenizer; the recipe must name the same one.
        assert r.recipe.tokenizer == r.parent.recipe.tokenizer
        assert r.recipe.book
    clean, biased, encoder = resolved.values()
    assert clean.train_config.length_bias == 0.5 and biased.train_config.length_bias == 0.9
    assert (clean.train_config.pooling, clean.train_config.causal) == ("last", True)
    assert (encoder.train_config.pooling, encoder.train_config.causal) == ("mean", False)
    assert encoder.train_config.length_bias == 0.5
    # The three differ only where they say they do.
    for other, fields in ((biased, {"length_bias"}), (encoder, {"pooling", "causal"})):
        a, b = clean.train_config.to_dict(), other.train_config.to_dict()
        assert {k for k in a if a[k] != b[k]} == fields
    assert len({r.key for r in resolved.values()}) == 3
