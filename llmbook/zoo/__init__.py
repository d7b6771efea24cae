"""The zoo: named recipes, and checkpoints shared between chapters.

:func:`load_or_train` here is :func:`llmbook.zoo.store.load_or_train`: the local cache, then the
published checkpoint store (``LLMBOOK_ZOO_URL``), then training.

Introduced in {doc}`/book/part2/06-training-loop`.
"""

from llmbook.zoo.checkpoint import CheckpointError, load_weights, read_meta, save_checkpoint
from llmbook.zoo.recipes import RECIPES, Recipe, ResolvedRecipe, default_profile, resolve
from llmbook.zoo.registry import ZooModel, checkpoint_dir, load_checkpoint
from llmbook.zoo.store import fetch, load_or_train, publish, store_url

__all__ = [
    "RECIPES",
    "CheckpointError",
    "Recipe",
    "ResolvedRecipe",
    "ZooModel",
    "checkpoint_dir",
    "default_profile",
    "fetch",
    "load_checkpoint",
    "load_or_train",
    "load_weights",
    "publish",
    "read_meta",
    "resolve",
    "save_checkpoint",
    "store_url",
]
