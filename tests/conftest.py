import pytest
import torch

from llmbook.data import corpora
from llmbook.data.corpora import CorpusFile
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.zoo import recipes
from llmbook.zoo.recipes import Recipe


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


TEXT = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 40))
"""1,800 bytes of training text for the tiny models of the training tests."""


def tiny_model(seed: int = 0, **overrides) -> GPT:
    """A seeded 2-layer byte-level GPT (C=32, T=16) for training tests; ``overrides`` change fields."""
    torch.manual_seed(seed)
    config = dict(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    return GPT(ModelConfig(**{**config, **overrides}))


TOY_TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 60


@pytest.fixture
def toy_zoo(tmp_path, monkeypatch):
    """A tiny corpus served from a mirror and a tiny recipe, with an isolated cache."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "toy.txt").write_bytes(TOY_TEXT)
    monkeypatch.setenv("LLMBOOK_DATA_DIR", str(mirror))
    monkeypatch.setenv("LLMBOOK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(
        corpora.CORPORA,
        "toy",
        CorpusFile(name="toy.txt", url="http://127.0.0.1:9/", sha256=corpora.sha256_of(TOY_TEXT)),
    )
    recipe = Recipe(
        name="toy",
        description="test recipe",
        corpus="toy",
        model={"vocab_size": 259, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
        train={"max_steps": 12, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "eval_interval": 0},
        profiles={"cpu": {}, "gpu": {"train": {"max_steps": 20}}},
    )
    monkeypatch.setitem(recipes.RECIPES, "toy", recipe)
    return tmp_path / "cache"


def pytest_collection_modifyitems(config, items):
    # Unit tests first, then the chapters (they fill the build's execution cache), and the browser
    # test last: when it has to build the site, every chapter is already executed and cached.
    def order(item):
        if item.get_closest_marker("browser"):
            return 2
        if item.get_closest_marker("chapter"):
            return 1
        return 0

    items.sort(key=order)  # stable: the order within each group is kept
