import json

import pytest
import torch

from llmbook.zoo.recipes import RECIPES, resolve
from llmbook.zoo.registry import checkpoint_dir, load_or_train


def test_load_or_train_trains_once_then_loads(toy_zoo, capsys):
    first = load_or_train("toy", "cpu", progress=False)
    assert first.trained_now and first.path.is_dir() and first.meta["corpus"]["origin"] == "mirror"
    second = load_or_train("toy", "cpu", progress=False)
    assert not second.trained_now and second.path == first.path
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    assert second.tokenizer.vocab_size == 259


def test_key_depends_on_profile_and_recipe(toy_zoo):
    assert resolve("toy", "cpu").key != resolve("toy", "gpu").key
    assert checkpoint_dir(resolve("toy", "cpu")) != checkpoint_dir(resolve("toy", "gpu"))


def test_unreadable_checkpoint_is_moved_aside_and_retrained(toy_zoo, capsys):
    first = load_or_train("toy", "cpu", progress=False)
    weights = first.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    again = load_or_train("toy", "cpu", progress=False)
    assert again.trained_now
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "moved it to" in err
    assert list(first.path.parent.glob("*.unreadable-*"))  # the bad copy is kept, not deleted


def test_same_seed_gives_the_same_model(toy_zoo, tmp_path):
    a = load_or_train("toy", "cpu", progress=False, retrain=True)
    b = load_or_train("toy", "cpu", progress=False, retrain=True)
    assert a.meta["history"]["train_loss"] == b.meta["history"]["train_loss"]


def test_unknown_recipe_and_profile():
    with pytest.raises(KeyError, match="known recipes"):
        resolve("nope", "cpu")
    with pytest.raises(ValueError, match="profile"):
        resolve("shakespeare-byte", "tpu")


def test_bad_profile_env(monkeypatch):
    monkeypatch.setenv("LLMBOOK_PROFILE", "big")
    with pytest.raises(ValueError, match="LLMBOOK_PROFILE"):
        resolve("shakespeare-byte")


def test_part2_recipe_profiles_are_valid():
    cpu, gpu = resolve("shakespeare-byte", "cpu"), resolve("shakespeare-byte", "gpu")
    assert cpu.model_config.n_embd == 128 and gpu.model_config.n_embd == 384
    json.dumps(cpu.to_dict())
    assert "shakespeare-byte" in RECIPES
