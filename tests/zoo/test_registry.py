import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from llmbook.data import corpora
from llmbook.storage import CheckpointWarning, owner_tag
from llmbook.zoo.recipes import RECIPES, resolve
from llmbook.zoo.registry import checkpoint_dir, load_or_train
from tests.conftest import TOY_TEXT


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


def test_unreadable_checkpoint_is_moved_aside_and_retrained(toy_zoo):
    first = load_or_train("toy", "cpu", progress=False)
    weights = first.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(CheckpointWarning, match="truncated or corrupt.*moved it to"):
        again = load_or_train("toy", "cpu", progress=False)
    assert again.trained_now
    assert list(first.path.parent.glob("*.unreadable-*"))  # the bad copy is kept, not deleted


def test_a_flipped_weight_byte_is_moved_aside_and_retrained(toy_zoo):
    first = load_or_train("toy", "cpu", progress=False)
    weights = first.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8 + int.from_bytes(data[:8], "little") + 3] ^= 0x01  # tensor data, not the header
    weights.write_bytes(bytes(data))
    with pytest.warns(CheckpointWarning, match="sha256"):
        again = load_or_train("toy", "cpu", progress=False)
    assert again.trained_now
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


def test_a_stored_config_that_differs_from_the_recipe_is_not_served(toy_zoo):
    first = load_or_train("toy", "cpu", progress=False)
    meta_path = first.path / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["n_head"] = 4  # same tensor shapes, a different model
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(CheckpointWarning, match="model config"):
        again = load_or_train("toy", "cpu", progress=False)
    assert again.trained_now and again.model.config.n_head == 2


def _go_offline(monkeypatch, tmp_path):
    empty = tmp_path / "empty-mirror"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("LLMBOOK_DATA_DIR", str(empty))

    def refuse(spec, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(corpora, "_download", refuse)


def test_a_fallback_model_is_never_served_as_the_real_recipe(toy_zoo, tmp_path, monkeypatch):
    mirror = os.environ["LLMBOOK_DATA_DIR"]
    with monkeypatch.context() as offline:
        _go_offline(offline, tmp_path)
        with pytest.warns(corpora.FallbackCorpusWarning):
            fb = load_or_train("toy", "cpu", progress=False)
        assert fb.trained_now and fb.fallback and fb.corpus_origin == "fallback"
        assert "-fallback-" in fb.path.name and fb.recipe.key != resolve("toy", "cpu").key
        with pytest.warns(corpora.FallbackCorpusWarning):  # offline again: cached, still labelled
            again = load_or_train("toy", "cpu", progress=False)
        assert not again.trained_now and again.fallback and again.path == fb.path
    assert os.environ["LLMBOOK_DATA_DIR"] == mirror  # the real corpus is back
    real = load_or_train("toy", "cpu", progress=False)
    assert real.trained_now and not real.fallback and real.corpus_origin == "mirror"
    assert real.path == checkpoint_dir(resolve("toy", "cpu")) != fb.path
    with monkeypatch.context() as offline:  # the real model, once trained, is served even offline
        _go_offline(offline, tmp_path)
        served = load_or_train("toy", "cpu", progress=False)
    assert not served.trained_now and not served.fallback and served.path == real.path


def test_the_global_rng_does_not_depend_on_the_cache(toy_zoo):
    import random

    import numpy as np

    draws = []
    for _ in range(2):  # trains, then loads
        torch.manual_seed(7)
        random.seed(7)
        np.random.seed(7)
        zoo = load_or_train("toy", "cpu", progress=False)
        draws.append((torch.rand(3).tolist(), random.random(), np.random.rand()))
    assert zoo.trained_now is False
    assert draws[0] == draws[1]


def test_a_stale_temporary_in_a_finished_checkpoint_is_cleaned(toy_zoo):
    first = load_or_train("toy", "cpu", progress=False)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead_pid = int(dead.stdout)
    host = owner_tag().split("@", 1)[1]
    stale = first.path / f".model.safetensors.pid{dead_pid}@{host}.abc123.tmp"
    stale.write_bytes(b"x" * 100)
    legacy = first.path / ".model.safetensors.zz9.tmp"  # written by an older llmbook
    legacy.write_bytes(b"x")
    live = first.path / f".model.safetensors.{owner_tag()}.def456.tmp"
    live.write_bytes(b"x")
    again = load_or_train("toy", "cpu", progress=False)
    assert not again.trained_now
    assert not stale.exists() and not legacy.exists() and live.exists()


RUN_TOY = textwrap.dedent(
    """
    import json, sys
    from llmbook.data import corpora
    from llmbook.zoo import recipes
    from llmbook.zoo.recipes import Recipe
    from llmbook.zoo.registry import load_or_train

    spec, recipe = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    corpora.CORPORA["toy"] = corpora.CorpusFile(**spec)
    recipes.RECIPES["toy"] = Recipe(**recipe)
    zoo = load_or_train("toy", "cpu", progress=False)
    print(json.dumps({"trained_now": zoo.trained_now, "path": str(zoo.path)}))
    """
)


@pytest.mark.slow
def test_concurrent_runs_of_one_recipe_train_once(toy_zoo):
    spec = {"name": "toy.txt", "url": "http://127.0.0.1:9/", "sha256": corpora.sha256_of(TOY_TEXT)}
    recipe = {
        "name": "toy",
        "description": "test recipe",
        "corpus": "toy",
        "model": {"vocab_size": 259, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
        "train": {"max_steps": 40, "batch_size": 4, "lr": 3e-3, "eval_interval": 0},
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    args = [sys.executable, "-c", RUN_TOY, json.dumps(spec), json.dumps(recipe)]
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["trained_now"] for r in results) == [False, False, True]
    assert len({r["path"] for r in results}) == 1


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


def test_make_zoo_trains_what_chapters_load_and_no_benchmark_recipe():
    import re

    from llmbook.zoo.recipes import RECIPES, book_recipes
    from tests.book.chapters import ROOT

    loaded = set()
    for page in (ROOT / "book").rglob("*.md"):
        loaded |= set(re.findall(r"load_or_train\(\s*[\"']([\w-]+)[\"']", page.read_text()))
    assert loaded and loaded <= set(book_recipes()), (loaded, book_recipes())
    assert "shakespeare-speedrun" in RECIPES and "shakespeare-speedrun" not in book_recipes()
