"""Load a zoo model from the checkpoint cache, or train it when no checkpoint of its recipe exists."""

from __future__ import annotations

import contextlib
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmbook.data.batching import train_val_split
from llmbook.data.corpora import Corpus, load_corpus
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.paths import cache_dir, ensure_writable_dir
from llmbook.storage import CheckpointWarning, remove_stale_temps
from llmbook.tokenizer import tokenizer_from_dict
from llmbook.tokenizer.bpe import BPETokenizer
from llmbook.tokenizer.byte import ByteTokenizer
from llmbook.tokenizer.hf import HFTokenizer
from llmbook.train.distributed import barrier, world
from llmbook.train.loop import train
from llmbook.zoo.checkpoint import (
    CheckpointError,
    build_model,
    check_shapes,
    load_weights,
    read_meta,
    save_checkpoint,
)
from llmbook.zoo.recipes import ResolvedRecipe, is_learned, recipe_tokenizer, resolve

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs of one recipe are not serialised
    fcntl = None


@dataclass
class ZooModel:
    """A model from the zoo, with everything needed to use it.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """

    model: GPT
    """The model, in eval mode, on the requested device."""
    tokenizer: ByteTokenizer | BPETokenizer | HFTokenizer
    """Its tokenizer (see :func:`llmbook.tokenizer.tokenizer_from_dict`)."""
    recipe: ResolvedRecipe
    """The recipe and profile it was made with (its key is the checkpoint's key)."""
    meta: dict
    """The checkpoint's JSON (metrics, history, corpus origin, ...)."""
    path: Path
    """The checkpoint directory."""
    trained_now: bool
    """True when this call trained it; False when it was loaded."""
    corpus_origin: str = ""
    """Where the corpus it was trained on came from: ``"mirror"``, ``"cache"``, ``"download"`` or
    ``"fallback"`` (see :class:`llmbook.data.corpora.Corpus`)."""
    fallback: bool = False
    """True when it was trained on the offline fallback corpus, not the recipe's real one: its
    numbers will not match the book, and it is keyed apart from the real model."""


def checkpoint_dir(recipe: ResolvedRecipe, root: Path | None = None) -> Path:
    """Where the checkpoint of a resolved recipe lives: ``<cache>/zoo/<name>-<profile>-<key>``.

    A recipe resolved on the offline fallback corpus lives in ``<name>-<profile>-fallback-<key>``, so
    the difference shows in a directory listing too.

    :param recipe: the resolved recipe.
    :param root: cache root (default: :func:`llmbook.paths.cache_dir`).
    :returns: the directory path (it may not exist).
    """
    root = root or cache_dir()
    tag = "-fallback" if recipe.corpus_fallback else ""
    return root / "zoo" / f"{recipe.recipe.name}-{recipe.profile}{tag}-{recipe.key}"


def load_checkpoint(
    directory: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[GPT, dict]:
    """Load any checkpoint directory written by :func:`~llmbook.storage.save_checkpoint`.

    A reward model's JSON has a ``"reward"`` entry (pooling, causal); it loads as a
    :class:`~llmbook.align.reward_model.RewardModel`.

    The weights file's header is checked against the config in the JSON on the ``meta`` device
    first (see :func:`~llmbook.zoo.checkpoint.check_shapes`), so nothing is allocated for a
    checkpoint that does not fit; then the weights' sha256 is verified and they are loaded.

    :param directory: the checkpoint directory.
    :param device: where to put the model.
    :returns: ``(model in eval mode, meta)``.
    :raises CheckpointError: when the checkpoint is missing, corrupt or inconsistent.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    meta = read_meta(directory)
    try:
        config = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(
            f"{directory}: invalid model config in checkpoint.json ({err})"
        ) from err
    reward = meta.get("reward")
    if reward is not None and (
        not isinstance(reward, dict)
        or reward.get("pooling") not in ("last", "mean")
        or not isinstance(reward.get("causal"), bool)
    ):
        raise CheckpointError(f"{directory}: invalid reward entry in checkpoint.json ({reward!r})")
    check_shapes(directory, config, reward)
    model = build_model(config, reward)
    load_weights(directory, model, meta)
    return model.to(device).eval(), meta


def partial_dir(directory: Path) -> Path:
    """Where an unfinished training run of a zoo checkpoint keeps its resumable training checkpoints.

    :param directory: the zoo checkpoint directory (see :func:`checkpoint_dir`).
    :returns: ``<directory>.partial``.
    """
    return directory.with_name(directory.name + ".partial")


@contextlib.contextmanager
def _locked(directory: Path):
    # One process per checkpoint directory trains or writes; the others wait, then load its result.
    # Under torchrun the ranks train together, so they must not exclude each other.
    if fcntl is None or world()[1] > 1:
        yield
        return
    with open(directory.with_name(directory.name + ".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


CPU_TRAIN_THREADS = 1
"""Torch threads for training a zoo model on the CPU, whatever the machine has. The weight
gradients' reductions are split between threads, so the thread count changes the last bits of a
trained model; fixed, it makes a key's checkpoint the same on any core count (same CPU type and
torch), and lets ``llmbook zoo build --jobs N`` train N models side by side without changing any
of them. These models gain little from a second thread (about 1.3x at 2 on the book's machine)."""


@contextlib.contextmanager
def _training_threads(device: torch.device):
    # Fixed threads while training on the CPU; the caller's setting afterwards.
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(CPU_TRAIN_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _rng_untouched():
    # Building or training a model draws random numbers; the caller's generators must come out the
    # same whether this call trained or loaded.
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _expect(directory: Path, field: str, stored, wanted) -> None:
    if stored != wanted:
        raise CheckpointError(
            f"{directory}: stored {field} {stored!r} differs from the recipe's {wanted!r}"
        )


def _load_cached(directory: Path, recipe: ResolvedRecipe, device: torch.device) -> ZooModel | None:
    # The checkpoint of this key, checked against the recipe; a broken one is moved aside.
    if not directory.exists():
        return None
    try:
        meta = read_meta(directory)
        _expect(directory, "recipe key", meta.get("key"), recipe.key)
        _expect(directory, "model config", meta.get("model"), recipe.model_config.to_dict())
        if is_learned(recipe.recipe.tokenizer):
            # Learned at training time: the recipe key checked above covers the description, the
            # corpus and the code that learned it, so the stored tokenizer is the one this recipe makes.
            tokenizer = _tokenizer_of(directory, meta)
        else:
            tokenizer = tokenizer_from_dict(recipe.recipe.tokenizer)
            _expect(directory, "tokenizer", meta.get("tokenizer"), tokenizer.to_dict())
        model, meta = load_checkpoint(directory, device=device)
    except CheckpointError as err:
        aside = directory.with_name(f"{directory.name}.unreadable-{int(time.time())}")
        try:
            directory.rename(aside)
        except FileNotFoundError:  # another rank of this torchrun job moved it already
            return None
        warnings.warn(
            f"llmbook: {err}; moved it to {aside} and training again", CheckpointWarning, 2
        )
        return None
    remove_stale_temps(directory, ".*.tmp")  # a save killed after the JSON was first written
    corpus = meta.get("corpus", {})
    return ZooModel(
        model,
        tokenizer,
        recipe,
        meta,
        directory,
        False,
        corpus_origin=corpus.get("origin", ""),
        fallback=recipe.corpus_fallback,
    )


def _tokenizer_of(directory: Path, meta: dict):
    try:
        return tokenizer_from_dict(meta["tokenizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}: invalid tokenizer in checkpoint.json ({err})") from err


def _train(
    recipe: ResolvedRecipe,
    corpus: Corpus,
    device: torch.device,
    progress: bool,
    log_every: int,
    partial: Path | None = None,
    root: Path | None = None,
):
    if recipe.recipe.kind == "sft":
        return _fine_tune(recipe, device, progress, root)
    if recipe.recipe.kind == "reward":
        return _train_reward_model(recipe, device, progress, root)
    if recipe.recipe.kind == "ppo":
        return _train_ppo_policy(recipe, device, progress, partial, root)
    if recipe.recipe.kind == "grpo":
        return _train_grpo_policy(recipe, device, progress, partial, root)
    if recipe.recipe.kind == "dpo":
        return _train_dpo_policy(recipe, device, progress, root)
    tokenizer = recipe_tokenizer(recipe.recipe, corpus.text)
    bos = recipe.train_config.bos_id
    if bos is not None and bos != tokenizer.bos_id:  # e.g. a learned BPE that ran out of merges
        raise ValueError(f"train.bos_id: {bos} is not the tokenizer's BOS id {tokenizer.bos_id}")
    if tokenizer.vocab_size > recipe.model_config.vocab_size:
        raise ValueError(
            f"model.vocab_size: {recipe.model_config.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} ids"
        )
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
        "corpus": {
            "name": corpus.name,
            "origin": corpus.origin,
            "n_tokens": len(ids),
            "sha256": recipe.corpus_sha256,
        },
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


def _fine_tune(recipe: ResolvedRecipe, device: torch.device, progress: bool, root: Path | None):
    # Part 6: the parent recipe's model (from the zoo, trained first if missing), given the chat
    # tokens and a longer context, fine-tuned on the task mixture.
    from llmbook.align.evaluate import evaluate_tasks, task_examples
    from llmbook.align.sft import (
        lora_rows,
        merge_lora_model,
        prepare_lora,
        prepare_model,
        train_sft,
    )

    parent = _parent_model(recipe, device, progress, root)
    cfg = recipe.train_config
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    block_size = cfg.block_size or parent.model.config.block_size
    old_vocab = parent.model.config.vocab_size
    model, chat = prepare_model(parent.model, parent.tokenizer, block_size=block_size)
    if model.config.to_dict() != recipe.model_config.to_dict():
        raise RuntimeError("model: the prepared model's config differs from the recipe's")
    if cfg.lora_rank:  # Part 10.2: adapters and the new tokens' rows train, the rest is frozen
        prepare_lora(model, cfg, lora_rows(chat, cfg, old_vocab))
    history = train_sft(model, chat, cfg, progress=progress)
    merge_lora_model(model)
    report = evaluate_tasks(
        model, chat, task_examples(sorted(cfg.tasks), 32, split="val", seed=cfg.seed)
    )
    meta = {
        **_fine_tuned_meta(recipe, parent, chat.tokenizer),
        "metrics": {
            "val_loss": history.val_loss[-1],
            "val_accuracy": report.overall(),
            "val_tasks": report.to_json(),
            "train_seconds": history.train_seconds,
            "wall_seconds": time.perf_counter() - started,
            "padding_fraction": history.padding_fraction,
            "trainable_parameters": history.trainable_parameters,
            "optimizer_state_bytes": history.optimizer_state_bytes,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
        },
        "history": history.to_dict(),
    }
    return model.eval(), chat.tokenizer, meta


def _fine_tuned_meta(recipe: ResolvedRecipe, parent: ZooModel, tokenizer) -> dict:
    # What every fine-tuned checkpoint's JSON starts with: its recipe and key, the model and
    # tokenizer it saves, and where it came from (the parent's corpus and key).
    return {
        "recipe": recipe.to_dict(),
        "key": recipe.key,
        "model": recipe.model_config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "corpus": dict(parent.meta.get("corpus", {})),
        "parent": {"name": parent.recipe.recipe.name, "key": parent.recipe.key},
    }


def _parent_model(recipe: ResolvedRecipe, device, progress: bool, root: Path | None) -> ZooModel:
    parent = load_or_train(
        recipe.parent.recipe.name, recipe.profile, device=device, root=root, progress=progress
    )
    if parent.recipe.key != recipe.parent.key:
        raise RuntimeError(
            f"parent: expected the {recipe.parent.recipe.name} model with key {recipe.parent.key}, "
            f"got {parent.recipe.key}"
        )
    return parent


def _train_reward_model(
    recipe: ResolvedRecipe, device: torch.device, progress: bool, root: Path | None
):
    # Part 7: a reward model on the parent's (the SFT model's) weights, trained on preference pairs
    # whose "sample" rejections the parent itself wrote.
    from llmbook.align.chat import ChatFormat
    from llmbook.align.reward import reward_data, reward_model_from, sft_samples, train_reward

    parent = _parent_model(recipe, device, progress, root)
    cfg = recipe.train_config
    started = time.perf_counter()
    chat = ChatFormat(parent.tokenizer)

    def sampler(seed: int):
        return sft_samples(
            parent.model,
            chat,
            temperature=cfg.sample_temperature,
            seed=seed,
            limit=cfg.sample_examples,
        )

    t0 = time.perf_counter()
    n_train = cfg.max_steps * cfg.batch_size
    pairs = reward_data(cfg, n_train, split="train", seed=cfg.seed, samples_for=sampler(cfg.seed))
    val_pairs = reward_data(
        cfg, cfg.eval_pairs, split="val", seed=cfg.seed + 1, samples_for=sampler(cfg.seed + 1)
    )
    data_seconds = time.perf_counter() - t0
    model = reward_model_from(parent.model, cfg)
    history = train_reward(model, chat, cfg, pairs=pairs, val_pairs=val_pairs, progress=progress)
    history.data_seconds = data_seconds
    meta = {
        **_fine_tuned_meta(recipe, parent, chat.tokenizer),
        "reward": {"pooling": cfg.pooling, "causal": cfg.causal},
        "metrics": {
            "val_accuracy": history.val_accuracy,
            "train_seconds": history.train_seconds,
            "data_seconds": history.data_seconds,
            "wall_seconds": time.perf_counter() - started,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
        },
        "history": history.to_dict(),
    }
    return model.eval(), chat.tokenizer, meta


def _train_ppo_policy(
    recipe: ResolvedRecipe, device: torch.device, progress: bool, partial: Path | None, root
):
    # Part 8: the parent (SFT) policy trained with PPO against the reward recipe's model; the
    # checkpoint keeps the policy alone (the value head is a training device, not part of it).
    # Interrupted runs resume from <directory>.partial like pretraining.
    from llmbook.align.chat import ChatFormat
    from llmbook.align.policy import ActorCritic, reference_model
    from llmbook.align.ppo import train_ppo

    parent = _parent_model(recipe, device, progress, root)
    rm = _reward_model_of(recipe, device, progress, root)
    cfg = recipe.train_config
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    chat = ChatFormat(parent.tokenizer)
    policy = _policy_for(recipe, parent, device)
    actor_critic = ActorCritic(policy, critic=cfg.critic, reward_model=rm.model).to(device)
    reference = reference_model(policy)
    history = train_ppo(
        actor_critic, reference, rm.model, chat, cfg, checkpoint_dir=partial, progress=progress
    )
    meta = _policy_meta(
        recipe,
        parent,
        chat,
        rm,
        history,
        {
            "val_rm_score_start": history.eval["rm_score"][0],
            "val_rm_score": history.eval["rm_score"][-1],
        },
        started=started,
        device=device,
    )
    return policy.eval(), chat.tokenizer, meta


def _reward_model_of(recipe: ResolvedRecipe, device, progress: bool, root) -> ZooModel | None:
    # The reward recipe's model a policy recipe names (None when it names none), checked to be the
    # one the recipe's key was computed with.
    if recipe.reward_model is None:
        return None
    rm = load_or_train(
        recipe.reward_model.recipe.name, recipe.profile, device=device, root=root, progress=progress
    )
    if rm.recipe.key != recipe.reward_model.key:
        raise RuntimeError(
            f"reward_model: expected key {recipe.reward_model.key}, got {rm.recipe.key}"
        )
    return rm


def _policy_meta(recipe, parent, chat, rm, history, metrics: dict, *, started, device) -> dict:
    # The metadata of a policy trained by PPO or GRPO: where it came from, the held-out accuracy
    # at the start and the end, the last KL, the times, and the run's whole history.
    accuracy = history.eval["accuracy"]
    meta = _fine_tuned_meta(recipe, parent, chat.tokenizer)
    if rm is not None:
        meta["reward_model"] = {"name": rm.recipe.recipe.name, "key": rm.recipe.key}
    meta["metrics"] = {
        "val_accuracy_start": accuracy[0],
        "val_accuracy": accuracy[-1],
        **metrics,
        "kl": history.train["kl"][-1],
        "train_seconds": history.seconds,
        "eval_seconds": history.eval_seconds,
        "wall_seconds": time.perf_counter() - started,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    meta["history"] = history.to_dict()
    return meta


def _policy_for(recipe: ResolvedRecipe, parent: ZooModel, device) -> GPT:
    # The recipe may change what has no weights (the gpu profile turns the base's dropout off:
    # sampled and recomputed log-probabilities must agree); the weights carry over unchanged.
    policy = parent.model
    if policy.config != recipe.model_config:
        rebuilt = GPT(recipe.model_config).to(device)
        rebuilt.load_state_dict(policy.state_dict())
        policy = rebuilt
    return policy


def _train_grpo_policy(
    recipe: ResolvedRecipe, device: torch.device, progress: bool, partial: Path | None, root
):
    # Part 9: the parent (SFT) policy trained with GRPO, paid by the verifier (and by a reward
    # recipe's model when the recipe names one). No critic. Interrupted runs resume from
    # <directory>.partial like pretraining.
    from llmbook.align.chat import ChatFormat
    from llmbook.align.grpo import train_grpo
    from llmbook.align.policy import reference_model

    parent = _parent_model(recipe, device, progress, root)
    rm = _reward_model_of(recipe, device, progress, root)
    cfg = recipe.train_config
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    chat = ChatFormat(parent.tokenizer)
    policy = _policy_for(recipe, parent, device)
    reference = reference_model(policy)
    history = train_grpo(
        policy,
        reference,
        chat,
        cfg,
        reward_model=None if rm is None else rm.model,
        checkpoint_dir=partial,
        progress=progress,
    )
    meta = _policy_meta(
        recipe,
        parent,
        chat,
        rm,
        history,
        {"sampled_tokens": sum(history.train["sampled_tokens"])},
        started=started,
        device=device,
    )
    return policy.eval(), chat.tokenizer, meta


def _train_dpo_policy(recipe: ResolvedRecipe, device: torch.device, progress: bool, root):
    # Part 10.1: the parent (SFT) policy trained with DPO on preference pairs whose "sample"
    # rejections the policy itself writes (each round anew); the parent's weights are the reference.
    from llmbook.align.chat import ChatFormat
    from llmbook.align.dpo import train_dpo

    parent = _parent_model(recipe, device, progress, root)
    cfg = recipe.train_config
    started = time.perf_counter()
    chat = ChatFormat(parent.tokenizer)
    policy = _policy_for(recipe, parent, device)
    torch.manual_seed(cfg.seed)
    history = train_dpo(policy, chat, cfg, progress=progress)
    meta = {
        **_fine_tuned_meta(recipe, parent, chat.tokenizer),
        "metrics": {
            "pair_accuracy": history.val_accuracy[-1],
            "verifier_accuracy_start": history.verifier_accuracy[0],
            "verifier_accuracy": history.verifier_accuracy[-1],
            "kl": history.kl[-1],
            "train_seconds": history.train_seconds,
            "data_seconds": history.data_seconds,
            "eval_seconds": history.eval_seconds,
            "wall_seconds": time.perf_counter() - started,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
        },
        "history": history.to_dict(),
    }
    return policy.eval(), chat.tokenizer, meta


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

    The checkpoint directory is keyed by :attr:`~llmbook.zoo.recipes.ResolvedRecipe.key`: a hash of
    the resolved recipe, the training code, the torch release series and the corpus's sha256, so a
    changed recipe, code, torch or corpus never loads a stale model. When the real corpus cannot be
    had, training uses the offline fallback corpus; that model is keyed (and named ``...-fallback-...``)
    apart from the real one, reported by :attr:`ZooModel.fallback`, and never served once the real
    corpus is available. A checkpoint that cannot be read (checksum, shapes, or a config that differs
    from the recipe) is moved aside, never deleted, with a :class:`~llmbook.storage.CheckpointWarning`,
    and the model is trained again. Training keeps resumable checkpoints in :func:`partial_dir`, so an
    interrupted run picks up where it stopped. On the CPU it trains with :data:`CPU_TRAIN_THREADS`
    torch threads. A lock file per checkpoint serialises processes asking
    for the same recipe: one trains, the others wait and load its checkpoint. Under ``torchrun`` every
    process trains its share and rank 0 writes the checkpoint. The global random states (Python,
    NumPy, torch) are the same afterwards whether the model was trained or loaded.

    :param name: the recipe name (see :data:`llmbook.zoo.recipes.RECIPES`).
    :param profile: ``"cpu"``, ``"gpu"`` or None for the default (see
        :func:`~llmbook.zoo.recipes.default_profile`).
    :param device: where to train or load (default: CUDA for the gpu profile when present, else CPU).
    :param root: cache root (default: :func:`llmbook.paths.cache_dir`).
    :param retrain: train even when a checkpoint exists (it is replaced).
    :param progress: show a progress bar while training.
    :param log_every: print a log line every this many steps while training (0: never).
    :returns: the :class:`ZooModel`.
    :raises llmbook.paths.CacheDirError: when the cache directory cannot be written (checked first).

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    recipe = resolve(name, profile)
    if device is None:
        device = "cuda" if recipe.profile == "gpu" and torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    root = ensure_writable_dir(root or cache_dir())
    ensure_writable_dir(root / "zoo")
    with _rng_untouched():
        directory = checkpoint_dir(recipe, root)
        if not retrain:
            with _locked(directory):
                found = _load_cached(directory, recipe, device)
            if found is not None:
                return found
        corpus = load_corpus(recipe.recipe.corpus)
        if corpus.origin == "fallback":
            recipe = resolve(name, recipe.profile, corpus=corpus)
            directory = checkpoint_dir(recipe, root)
        with _locked(directory):
            if not retrain:  # another process may have finished it while this one waited
                found = _load_cached(directory, recipe, device)
                if found is not None:
                    return found
            return _train_and_save(recipe, corpus, directory, device, progress, log_every, root)


def _train_and_save(recipe, corpus, directory, device, progress, log_every, root) -> ZooModel:
    # Training writes resumable checkpoints to <directory>.partial: an interrupted run continues where
    # it stopped, with bit-identical results (the partial run has the same key by construction).
    partial = partial_dir(directory)
    rank, _ = world()
    with _training_threads(device):
        model, tokenizer, meta = _train(
            recipe, corpus, device, progress and rank == 0, log_every, partial, root
        )
    if rank == 0:
        save_checkpoint(directory, model, meta)
        shutil.rmtree(partial, ignore_errors=True)
    barrier()
    return ZooModel(
        model,
        tokenizer,
        recipe,
        read_meta(directory),
        directory,
        True,
        corpus_origin=corpus.origin,
        fallback=recipe.corpus_fallback,
    )
