"""Load a zoo model from the checkpoint cache, or train it when no checkpoint of its recipe exists."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmbook.data.batching import train_val_split
from llmbook.data.corpora import load_corpus
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.paths import cache_dir
from llmbook.tokenizer import tokenizer_from_dict
from llmbook.tokenizer.bpe import BPETokenizer
from llmbook.tokenizer.byte import ByteTokenizer
from llmbook.tokenizer.hf import HFTokenizer
from llmbook.train.distributed import barrier, world
from llmbook.train.loop import train
from llmbook.zoo.checkpoint import CheckpointError, load_weights, read_meta, save_checkpoint
from llmbook.zoo.recipes import ResolvedRecipe, resolve


@dataclass
class ZooModel:
    """A model from the zoo, with everything needed to use it.

    Introduced in {doc}`/book/part2/04-training-loop`.
    """

    model: GPT
    """The model, in eval mode, on the requested device."""
    tokenizer: ByteTokenizer | BPETokenizer | HFTokenizer
    """Its tokenizer (see :func:`llmbook.tokenizer.tokenizer_from_dict`)."""
    recipe: ResolvedRecipe
    """The recipe and profile it was made with."""
    meta: dict
    """The checkpoint's JSON (metrics, history, corpus origin, ...)."""
    path: Path
    """The checkpoint directory."""
    trained_now: bool
    """True when this call trained it; False when it was loaded."""


def checkpoint_dir(recipe: ResolvedRecipe, root: Path | None = None) -> Path:
    """Where the checkpoint of a resolved recipe lives: ``<cache>/zoo/<name>-<profile>-<key>``.

    :param recipe: the resolved recipe.
    :param root: cache root (default: :func:`llmbook.paths.cache_dir`).
    :returns: the directory path (it may not exist).
    """
    root = root or cache_dir()
    return root / "zoo" / f"{recipe.recipe.name}-{recipe.profile}-{recipe.key}"


def load_checkpoint(
    directory: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[GPT, dict]:
    """Load any checkpoint directory written by :func:`~llmbook.zoo.checkpoint.save_checkpoint`.

    :param directory: the checkpoint directory.
    :param device: where to put the model.
    :returns: ``(model in eval mode, meta)``.
    :raises CheckpointError: when the checkpoint is missing, corrupt or inconsistent.

    Introduced in {doc}`/book/part2/04-training-loop`.
    """
    meta = read_meta(directory)
    try:
        config = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{directory}: invalid model config in checkpoint.json ({err})"
        ) from err
    model = GPT(config)
    load_weights(directory, model)
    return model.to(device).eval(), meta


def partial_dir(directory: Path) -> Path:
    """Where an unfinished training run of a zoo checkpoint keeps its resumable training checkpoints.

    :param directory: the zoo checkpoint directory (see :func:`checkpoint_dir`).
    :returns: ``<directory>.partial``.
    """
    return directory.with_name(directory.name + ".partial")


def _train(
    recipe: ResolvedRecipe,
    device: torch.device,
    progress: bool,
    log_every: int,
    partial: Path | None = None,
):
    tokenizer = tokenizer_from_dict(recipe.recipe.tokenizer)
    corpus = load_corpus(recipe.recipe.corpus)
    ids = torch.tensor(tokenizer.encode(corpus.text), dtype=torch.long)
    train_ids, val_ids = train_val_split(ids, recipe.recipe.train_fraction)
    torch.manual_seed(recipe.train_config.seed)
    model = GPT(recipe.model_config).to(device)
    started = time.perf_counter()
    steps = recipe.train_config.max_steps
    history = train(
        model,
        train_ids,
        val_ids,
        recipe.train_config,
        progress=progress,
        log_every=log_every,
        checkpoint_dir=partial,
        checkpoint_every=max(1, steps // 10),
        keep_last=2,
    )
    meta = {
        "recipe": recipe.to_dict(),
        "key": recipe.key,
        "model": recipe.model_config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "corpus": {"name": corpus.name, "origin": corpus.origin, "n_tokens": len(ids)},
        "metrics": {
            "val_loss": history.final_val_loss,
            "train_seconds": history.train_seconds,
            "wall_seconds": time.perf_counter() - started,
            "tokens_per_second": history.tokens_per_second,
            "tokens_seen": history.tokens_seen,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
        },
        "history": history.to_dict(),
    }
    return model.eval(), tokenizer, meta


def load_or_train(
    name: str,
    profile: str | None = None,
    *,
    device: torch.device | str | None = None,
    root: Path | None = None,
    retrain: bool = False,
    progress: bool = True,
    log_every: int = 0,
) -> ZooModel:
    """The zoo's one entry point: a trained model for a recipe, from cache when possible.

    The checkpoint directory is keyed by a hash of the resolved recipe and the package version, so a
    changed recipe never loads a stale model. A checkpoint that cannot be read is moved aside (never
    deleted) with a message on stderr, and the model is trained again. Training keeps resumable
    checkpoints in :func:`partial_dir`, so an interrupted run picks up where it stopped. Under
    ``torchrun`` every process trains its share and rank 0 writes the checkpoint.

    :param name: the recipe name (see :data:`llmbook.zoo.recipes.RECIPES`).
    :param profile: ``"cpu"``, ``"gpu"`` or None for the default (see
        :func:`~llmbook.zoo.recipes.default_profile`).
    :param device: where to train or load (default: CUDA for the gpu profile when present, else CPU).
    :param root: cache root (default: :func:`llmbook.paths.cache_dir`).
    :param retrain: train even when a checkpoint exists (it is replaced).
    :param progress: show a progress bar while training.
    :param log_every: print a log line every this many steps while training (0: never).
    :returns: the :class:`ZooModel`.

    Introduced in {doc}`/book/part2/04-training-loop`.
    """
    recipe = resolve(name, profile)
    if device is None:
        device = "cuda" if recipe.profile == "gpu" and torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    directory = checkpoint_dir(recipe, root)
    if directory.exists() and not retrain:
        try:
            model, meta = load_checkpoint(directory, device=device)
            if meta.get("key") != recipe.key:
                raise CheckpointError(f"{directory}: recipe key {meta.get('key')} != {recipe.key}")
            return ZooModel(
                model, tokenizer_from_dict(meta["tokenizer"]), recipe, meta, directory, False
            )
        except CheckpointError as err:
            aside = directory.with_name(f"{directory.name}.unreadable-{int(time.time())}")
            directory.rename(aside)
            print(
                f"llmbook: {err}\nllmbook: moved it to {aside} and training again.", file=sys.stderr
            )
    # Training writes resumable checkpoints to <directory>.partial: an interrupted run continues where
    # it stopped, with bit-identical results (the partial run has the same recipe key by construction).
    partial = partial_dir(directory)
    rank, _ = world()
    model, tokenizer, meta = _train(recipe, device, progress and rank == 0, log_every, partial)
    if rank == 0:
        save_checkpoint(directory, model, meta)
        shutil.rmtree(partial, ignore_errors=True)
    barrier()
    return ZooModel(model, tokenizer, recipe, read_meta(directory), directory, True)
