"""The zoo: named recipes, and checkpoints shared between chapters.

Introduced in {doc}`/book/part2/06-training-loop`.
"""

from llmbook.zoo.checkpoint import CheckpointError, load_weights, read_meta, save_checkpoint
from llmbook.zoo.recipes import RECIPES, Recipe, ResolvedRecipe, default_profile, resolve
from llmbook.zoo.registry import ZooModel, checkpoint_dir, load_checkpoint, load_or_train

__all__ = [
    "RECIPES",
    "CheckpointError",
    "Recipe",
    "ResolvedRecipe",
    "ZooModel",
    "checkpoint_dir",
    "default_profile",
    "load_checkpoint",
    "load_or_train",
    "load_weights",
    "read_meta",
    "resolve",
    "save_checkpoint",
]
