"""Named training recipes with ``cpu`` and ``gpu`` profiles: the models later chapters build on."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from llmbook.align.dpo import DPOConfig
from llmbook.align.grpo_config import GRPOConfig
from llmbook.align.ppo_config import PPOConfig
from llmbook.align.preference import PREFERENCE_TASKS, REJECTION_KINDS
from llmbook.align.reward import RewardConfig
from llmbook.align.sft import SFTConfig
from llmbook.data.corpora import CORPORA, Corpus, sha256_of
from llmbook.model.config import ModelConfig
from llmbook.tokenizer import tokenizer_from_dict
from llmbook.tokenizer.base import DEFAULT_SPECIALS
from llmbook.tokenizer.bpe import BPETokenizer
from llmbook.train.loop import TrainConfig
from llmbook.zoo.key import source_digest, torch_minor

PROFILES = ("cpu", "gpu")
KINDS = ("lm", "sft", "reward", "ppo", "grpo", "dpo")
"""Recipe kinds: pretraining on a corpus, supervised fine-tuning of a parent recipe's model (with
LoRA when its config says so), a reward model trained on preference pairs from a parent
(fine-tuned) model, a parent policy trained with PPO against a reward recipe's model, a parent
policy trained with GRPO, or a parent policy trained with DPO on preference pairs."""

FINE_TUNED = ("sft", "reward", "ppo", "grpo", "dpo")
"""The kinds that start from a parent recipe's model."""

CHAT_KINDS = ("sft", "ppo", "grpo", "dpo")
"""The kinds whose model is a chat policy (it answers in the chat format)."""


@dataclass(frozen=True)
class Recipe:
    """How to make one zoo model: corpus, tokenizer, model and training config, per profile.

    ``model`` and ``train`` hold the settings shared by both profiles; ``profiles[p]["model"]`` and
    ``profiles[p]["train"]`` override them. The ``cpu`` profile trains in minutes on two cores; the
    ``gpu`` profile is the full-size run.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """

    name: str
    """Registry key, used on the command line (``llmbook train --recipe NAME``)."""
    description: str
    """One line for listings."""
    corpus: str
    """A corpus name from :data:`llmbook.data.corpora.CORPORA`."""
    model: dict = field(default_factory=dict)
    """:class:`~llmbook.model.config.ModelConfig` fields shared by the profiles."""
    train: dict = field(default_factory=dict)
    """:class:`~llmbook.train.loop.TrainConfig` fields shared by the profiles."""
    profiles: dict = field(default_factory=dict)
    """Per-profile overrides: ``{"cpu": {"model": {...}, "train": {...}}, "gpu": {...}}``."""
    tokenizer: dict = field(default_factory=lambda: {"type": "byte"})
    """The tokenizer description: a tokenizer's ``to_dict()`` (see
    :meth:`llmbook.tokenizer.byte.ByteTokenizer.to_dict`), or ``{"type": "bpe", "learn": {"vocab_size": V}}``
    for a BPE learned on the training split when the model is trained (:func:`recipe_tokenizer`)."""
    train_fraction: float = 0.9
    """Share of the corpus used for training; the rest is the validation split."""
    kind: str = "lm"
    """``"lm"``: pretrain on ``corpus`` with the training loop of Part 2; ``"sft"``: fine-tune the
    ``parent`` recipe's model on the task mixture with :func:`llmbook.align.sft.train_sft` (Part 6),
    where ``train`` holds :class:`~llmbook.align.sft.SFTConfig` fields; ``"reward"``: a reward model
    on the ``parent``'s model, trained on preference pairs with
    :func:`llmbook.align.reward.train_reward` (Part 7), where ``train`` holds
    :class:`~llmbook.align.reward.RewardConfig` fields; ``"ppo"``: the ``parent``'s model trained
    with :func:`llmbook.align.ppo.train_ppo` against ``reward_model``'s model (Part 8), where
    ``train`` holds :class:`~llmbook.align.ppo_config.PPOConfig` fields; ``"grpo"``: the
    ``parent``'s model trained with :func:`llmbook.align.grpo.train_grpo` (Part 9), where ``train``
    holds :class:`~llmbook.align.grpo_config.GRPOConfig` fields; ``"dpo"``: the ``parent``'s model
    trained with :func:`llmbook.align.dpo.train_dpo` (Part 10.1), where ``train`` holds
    :class:`~llmbook.align.dpo.DPOConfig` fields."""
    parent: str | None = None
    """For a fine-tuning recipe, the recipe whose model it starts from (its key enters this one's)."""
    reward_model: str | None = None
    """For a ``"ppo"`` recipe (required) or a ``"grpo"`` one (optional), the reward recipe whose
    model scores the rollouts (its key enters this one's)."""
    book: bool = True
    """Whether chapters load this model. ``make zoo`` (run before the book and the tests) trains
    these only (see :func:`book_recipes`); a recipe for benchmarks alone is trained by its benchmark."""


@dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe with one profile applied: concrete configs and the hash that keys its checkpoint.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """

    recipe: Recipe
    """The recipe."""
    profile: str
    """``"cpu"`` or ``"gpu"``."""
    model_config: ModelConfig
    """The model config."""
    train_config: TrainConfig | SFTConfig | RewardConfig | PPOConfig | GRPOConfig
    """The training config (an :class:`~llmbook.align.sft.SFTConfig` for a fine-tuning recipe, a
    :class:`~llmbook.align.reward.RewardConfig` for a reward model, a
    :class:`~llmbook.align.ppo_config.PPOConfig` for PPO, a
    :class:`~llmbook.align.grpo_config.GRPOConfig` for GRPO)."""
    corpus_sha256: str
    """sha256 of the corpus text trained on: the registry's checksum of the real corpus unless
    :func:`resolve` was given the corpus actually loaded."""
    corpus_fallback: bool = False
    """True when that corpus is the offline fallback (see :func:`llmbook.data.corpora.load_corpus`)."""
    parent: ResolvedRecipe | None = None
    """For a fine-tuning recipe, the resolved recipe of the model it starts from."""
    reward_model: ResolvedRecipe | None = None
    """For a ``"ppo"`` (or ``"grpo"``) recipe, the resolved reward recipe."""

    def to_dict(self) -> dict:
        """Everything that determines the trained weights, as JSON-friendly data.

        :returns: the dict that :attr:`key` hashes: the recipe and profile, the corpus sha256, the
            digest of the training sources (:func:`llmbook.zoo.key.source_digest`) and the torch
            release series (:func:`llmbook.zoo.key.torch_minor`).
        """
        return {
            "name": self.recipe.name,
            "profile": self.profile,
            "corpus": self.recipe.corpus,
            "corpus_sha256": self.corpus_sha256,
            "corpus_fallback": self.corpus_fallback,
            "train_fraction": self.recipe.train_fraction,
            "tokenizer": self.recipe.tokenizer,
            "model": self.model_config.to_dict(),
            "train": self.train_config.to_dict(),
            "source_sha256": source_digest(),
            "torch": torch_minor(),
            "kind": self.recipe.kind,
            "parent_key": None if self.parent is None else self.parent.key,
            "reward_model_key": None if self.reward_model is None else self.reward_model.key,
        }

    @property
    def key(self) -> str:
        """sha256 of :meth:`to_dict`, 16 hex digits: it changes with the recipe, the profile, the
        training code, the torch release series (major.minor) and the corpus text, so a cached
        checkpoint is never served after any of them changed, and a model trained on the offline
        fallback corpus never under the real corpus's key."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


RECIPES: dict[str, Recipe] = {}
"""The registry: recipe name to :class:`Recipe`."""


def is_learned(spec: dict) -> bool:
    """Whether a recipe's tokenizer description asks for a BPE tokenizer learned on the corpus.

    :param spec: a :attr:`Recipe.tokenizer`.
    :returns: True for ``{"type": "bpe", "learn": {"vocab_size": V}, ...}``.
    """
    return spec.get("type") == "bpe" and "learn" in spec


def check_tokenizer_spec(spec: dict) -> None:
    """Refuse a tokenizer description that no tokenizer can be built from, naming the field.

    A learned BPE description is ``{"type": "bpe", "learn": {"vocab_size": V}}`` with optional
    ``"specials"`` (default :data:`~llmbook.tokenizer.base.DEFAULT_SPECIALS`); any other description
    is a tokenizer's ``to_dict()``.

    :param spec: a :attr:`Recipe.tokenizer`.
    :raises ValueError: for an unknown key, or a ``vocab_size`` that is not an integer with room for
        the 256 bytes and the specials.
    """
    if not is_learned(spec):
        tokenizer_from_dict(spec)  # raises ValueError naming what is wrong
        return
    unknown = sorted(set(spec) - {"type", "learn", "specials"})
    if unknown or not isinstance(spec["learn"], dict) or set(spec["learn"]) != {"vocab_size"}:
        raise ValueError(
            "tokenizer: a learned BPE is {'type': 'bpe', 'learn': {'vocab_size': V}} with optional "
            f"'specials', got {spec!r}"
        )
    vocab_size = spec["learn"]["vocab_size"]
    specials = spec.get("specials", list(DEFAULT_SPECIALS))
    if (
        isinstance(vocab_size, bool)
        or not isinstance(vocab_size, int)
        or vocab_size < 256 + len(specials)
    ):
        raise ValueError(
            f"tokenizer.learn.vocab_size: must be an integer >= {256 + len(specials)}, got {vocab_size!r}"
        )


def recipe_tokenizer(recipe: Recipe, text: str):
    """The tokenizer a pretraining recipe trains with.

    A learned BPE description is trained on the first ``train_fraction`` of the corpus's characters
    (the text the training split is cut from; the validation text is never seen), deterministically,
    so the same recipe, corpus and code give the same merges. Any other description is rebuilt with
    :func:`~llmbook.tokenizer.tokenizer_from_dict`.

    :param recipe: the recipe.
    :param text: the corpus text.
    :returns: the tokenizer.

    Introduced in {doc}`/book/part4/02-bpe-vocabulary`.
    """
    spec = recipe.tokenizer
    if not is_learned(spec):
        return tokenizer_from_dict(spec)
    train_text = text[: int(len(text) * recipe.train_fraction)]
    specials = tuple(spec.get("specials", DEFAULT_SPECIALS))
    return BPETokenizer.train(train_text, spec["learn"]["vocab_size"], special_tokens=specials)


def book_recipes() -> list[str]:
    """The recipes whose models chapters load, in name order: what ``make zoo`` trains ahead.

    :returns: recipe names.
    """
    return sorted(name for name, recipe in RECIPES.items() if recipe.book)


def register(recipe: Recipe) -> Recipe:
    """Add a recipe to the registry.

    :param recipe: the recipe; its name must be new, and a fine-tuning recipe's parent registered.
    :returns: the recipe.
    :raises ValueError: for a taken name, an unknown kind, or a missing or unknown parent.
    """
    if recipe.name in RECIPES:
        raise ValueError(f"name: a recipe called {recipe.name!r} is already registered")
    if recipe.kind not in KINDS:
        raise ValueError(f"kind: must be one of {KINDS}, got {recipe.kind!r}")
    check_tokenizer_spec(recipe.tokenizer)
    if is_learned(recipe.tokenizer) and recipe.kind != "lm":
        raise ValueError("tokenizer: only a pretraining recipe learns its tokenizer")
    if (recipe.kind in FINE_TUNED) != (recipe.parent is not None):
        raise ValueError("parent: a fine-tuning recipe needs one, a pretraining recipe has none")
    if recipe.parent is not None and recipe.parent not in RECIPES:
        raise ValueError(f"parent: {recipe.parent!r} is not a registered recipe")
    if recipe.kind == "reward" and recipe.tokenizer != RECIPES[recipe.parent].tokenizer:
        # A reward model reads its parent's (chat) ids; a checkpoint stores that tokenizer, so a
        # recipe naming another would never match its own checkpoint and retrain on every load.
        raise ValueError("tokenizer: a reward recipe uses its parent's tokenizer; copy it")
    if recipe.kind == "ppo" and recipe.reward_model is None:
        raise ValueError("reward_model: a ppo recipe names one")
    if recipe.kind not in ("ppo", "grpo") and recipe.reward_model is not None:
        raise ValueError("reward_model: only ppo and grpo recipes name one")
    if recipe.kind in ("ppo", "grpo") and recipe.tokenizer != RECIPES[recipe.parent].tokenizer:
        raise ValueError(f"tokenizer: a {recipe.kind} recipe uses its parent's tokenizer; copy it")
    if recipe.reward_model is not None:
        rm = RECIPES.get(recipe.reward_model)
        if rm is None or rm.kind != "reward":
            raise ValueError(
                f"reward_model: {recipe.reward_model!r} is not a registered reward recipe"
            )
        if recipe.tokenizer != RECIPES[recipe.parent].tokenizer or rm.tokenizer != recipe.tokenizer:
            raise ValueError("tokenizer: a ppo recipe, its parent and its reward model share one")
    RECIPES[recipe.name] = recipe
    return recipe


def default_profile() -> str:
    """``LLMBOOK_PROFILE`` when set, else ``"gpu"`` with CUDA and ``"cpu"`` without.

    :returns: the profile name.
    :raises ValueError: when ``LLMBOOK_PROFILE`` is not a known profile.
    """
    env = os.environ.get("LLMBOOK_PROFILE", "").strip()
    if env:
        if env not in PROFILES:
            raise ValueError(f"LLMBOOK_PROFILE: must be one of {PROFILES}, got {env!r}")
        return env
    return "gpu" if torch.cuda.is_available() else "cpu"


def resolve(
    name: str, profile: str | None = None, *, corpus: Corpus | None = None
) -> ResolvedRecipe:
    """Look up a recipe and apply a profile.

    :param name: the recipe name.
    :param profile: ``"cpu"``, ``"gpu"`` or None for :func:`default_profile`.
    :param corpus: the corpus actually loaded for training; its text's sha256 goes into the key.
        Default: the registry's sha256 of the real corpus (no file is read), the key that
        ``llmbook zoo list`` shows.
    :returns: the resolved recipe.
    :raises KeyError: for an unknown recipe (the message lists the known ones).
    :raises ValueError: for an unknown profile or an invalid config field, or a corpus without a
        registered sha256.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known recipes: {sorted(RECIPES)}")
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise ValueError(f"profile: must be one of {PROFILES}, got {profile!r}")
    recipe = RECIPES[name]
    overrides = recipe.profiles.get(profile, {})
    model = {**copy.deepcopy(recipe.model), **overrides.get("model", {})}
    train = {**copy.deepcopy(recipe.train), **overrides.get("train", {})}
    if recipe.kind in FINE_TUNED:
        # The fine-tuned model is the parent's, with the fields the recipe changes (vocabulary,
        # context; a reward model changes none: it adds a head); its key covers the parent's, hence
        # the parent's corpus and code.
        if recipe.kind == "reward" and recipe.tokenizer != RECIPES[recipe.parent].tokenizer:
            raise ValueError("tokenizer: a reward recipe uses its parent's tokenizer; copy it")
        parent = resolve(recipe.parent, profile, corpus=corpus)
        config_class = {
            "reward": RewardConfig,
            "sft": SFTConfig,
            "ppo": PPOConfig,
            "grpo": GRPOConfig,
            "dpo": DPOConfig,
        }[recipe.kind]
        reward_model = None
        if recipe.reward_model is not None:
            reward_model = resolve(recipe.reward_model, profile, corpus=corpus)
        return ResolvedRecipe(
            recipe=recipe,
            profile=profile,
            model_config=ModelConfig.from_dict({**parent.model_config.to_dict(), **model}),
            train_config=config_class.from_dict(train),
            corpus_sha256=parent.corpus_sha256,
            corpus_fallback=parent.corpus_fallback,
            parent=parent,
            reward_model=reward_model,
        )
    if corpus is not None:
        sha, fallback = sha256_of(corpus.text.encode("utf-8")), corpus.origin == "fallback"
    else:
        spec = CORPORA.get(recipe.corpus)
        if spec is None or spec.sha256 is None:
            raise ValueError(f"corpus: {recipe.corpus!r} has no registered sha256 to key on")
        sha, fallback = spec.sha256, False
    return ResolvedRecipe(
        recipe=recipe,
        profile=profile,
        model_config=ModelConfig.from_dict(model),
        train_config=TrainConfig.from_dict(train),
        corpus_sha256=sha,
        corpus_fallback=fallback,
    )


CPU_TRAIN = {
    "max_steps": 1500,
    "batch_size": 12,
    "lr": 3e-3,
    "min_lr": 1e-4,
    "warmup_steps": 100,
    "eval_interval": 500,
    "eval_batches": 8,
}
"""The cpu profile's training budget shared by the base recipes: about a minute on two cores."""

GPU_TRAIN = {
    "max_steps": 5000,
    "batch_size": 64,
    "lr": 1e-3,
    "min_lr": 1e-4,
    "warmup_steps": 100,
    "eval_interval": 250,
    "eval_batches": 20,
    "precision": "bfloat16",
}
"""The gpu profile's training budget (nanoGPT's shakespeare-char GPU run, in bf16)."""

# The Part 2 base model: a byte-level GPT on TinyShakespeare. The cpu profile is nanoGPT's CPU
# Shakespeare shape (4 layers, 4 heads, width 128, context 64); the gpu profile is nanoGPT's
# shakespeare-char GPU configuration (6 x 6 x 384, context 256, dropout 0.2).
register(
    Recipe(
        name="shakespeare-byte",
        description="Part 2 base: byte-level GPT-2-style model trained on TinyShakespeare",
        corpus="tinyshakespeare",
        model={"vocab_size": 259, "bias": False, "dropout": 0.0},
        train={"seed": 1337, "weight_decay": 0.1, "grad_clip": 1.0, "beta1": 0.9, "beta2": 0.99},
        profiles={
            "cpu": {
                "model": {"block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128},
                "train": dict(CPU_TRAIN),
            },
            "gpu": {
                "model": {
                    "block_size": 256,
                    "n_layer": 6,
                    "n_head": 6,
                    "n_embd": 384,
                    "dropout": 0.2,
                },
                "train": dict(GPU_TRAIN),
            },
        },
    )
)


# The Part 3 modern base: the same data and budget as the Part 2 base, with Llama's switches
# (RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases, untied head). Every training window starts
# with BOS, as documents do in real pretraining; that is what makes attention sinks appear (Part 3.5).
# Later parts build on it.
register(
    Recipe(
        name="shakespeare-modern",
        description="Part 3 base: byte-level Llama-style model (RMSNorm, RoPE, SwiGLU, GQA) on TinyShakespeare",
        corpus="tinyshakespeare",
        model={
            "vocab_size": 259,
            "norm": "rmsnorm",
            "pos_embedding": "rope",
            "mlp": "swiglu",
            "bias": False,
            "tie_weights": False,
            "dropout": 0.0,
        },
        train={
            "seed": 1337,
            "weight_decay": 0.1,
            "grad_clip": 1.0,
            "beta1": 0.9,
            "beta2": 0.99,
            "bos_id": 256,
        },
        profiles={
            "cpu": {
                "model": {
                    "block_size": 64,
                    "n_layer": 4,
                    "n_head": 4,
                    "n_kv_head": 2,
                    "n_embd": 128,
                },
                "train": dict(CPU_TRAIN),
            },
            "gpu": {
                "model": {
                    "block_size": 256,
                    "n_layer": 6,
                    "n_head": 6,
                    "n_kv_head": 2,
                    "n_embd": 384,
                    "dropout": 0.2,
                },
                "train": dict(GPU_TRAIN),
            },
        },
    )
)


# The CPU speedrun: the Part 3 model and data, tuned for the wall-clock time to reach nanoGPT's CPU
# validation loss (1.886 nats on this split): bf16 autocast (this CPU has bf16 matrix instructions), a
# batch of 24 windows at a higher peak rate, and a cosine schedule that ends where the target is
# reached. Measured by `make bench` (see the Performance appendix); no chapter depends on it.
register(
    Recipe(
        name="shakespeare-speedrun",
        description="Fastest CPU route to val loss 1.886: Part 3 model, bf16, batch 24, 560 steps",
        corpus="tinyshakespeare",
        model=dict(RECIPES["shakespeare-modern"].model),
        train={
            **RECIPES["shakespeare-modern"].train,
            "max_steps": 560,
            "batch_size": 24,
            "lr": 4e-3,
            "min_lr": 1e-4,
            "warmup_steps": 100,
            "eval_interval": 0,
            "precision": "bfloat16",
        },
        book=False,
        profiles={
            profile: {"model": dict(RECIPES["shakespeare-modern"].profiles["cpu"]["model"])}
            for profile in PROFILES
        },
    )
)


SFT_MIXTURE = {
    "add": 3.0,
    "sub": 1.0,
    "mul": 1.0,
    "compare": 1.0,
    "reverse": 3.0,
    "sort_letters": 1.0,
    "sort_numbers": 1.0,
    "count": 1.0,
    "lookup": 1.0,
}
"""The task mixture of the ``sft`` recipe: task name to weight."""

# Part 4: the Part 3 modern base with a BPE tokenizer of 1,024 ids learned on the training split, at the
# same model shape, steps, batch and context (in tokens), i.e. at equal compute per step up to the
# larger embedding and head. Its 64-token window spans about 2.3 times the text of the byte model's.
BPE_VOCAB = 1024
register(
    Recipe(
        name="shakespeare-bpe",
        description="Part 4: the Part 3 base shape with a 1,024-id BPE learned on TinyShakespeare",
        corpus="tinyshakespeare",
        tokenizer={"type": "bpe", "learn": {"vocab_size": BPE_VOCAB}},
        model={**RECIPES["shakespeare-modern"].model, "vocab_size": BPE_VOCAB},
        # BOS is the first special, after the 256 bytes and the merges.
        train={**RECIPES["shakespeare-modern"].train, "bos_id": BPE_VOCAB - len(DEFAULT_SPECIALS)},
        profiles=copy.deepcopy(RECIPES["shakespeare-modern"].profiles),
    )
)


# Part 6: the Part 3 modern base fine-tuned on the verifiable tasks in the chat format. The chat
# tokens grow the vocabulary from 259 to 262 ids; RoPE lets the context grow from 64 to 128 positions.
register(
    Recipe(
        name="sft",
        description="Part 6: the Part 3 base fine-tuned on the verifiable tasks in the chat format",
        corpus="tinyshakespeare",
        kind="sft",
        parent="shakespeare-modern",
        tokenizer={
            "type": "byte",
            "specials": [
                "<|bos|>",
                "<|eos|>",
                "<|pad|>",
                "<|user|>",
                "<|assistant|>",
                "<|end|>",
            ],
        },
        model={"vocab_size": 262, "block_size": 128},
        # Every task, with the two the targets name (2-digit addition, reversal) weighted up: they
        # need the most steps to learn (Part 6.6 measures what each task reaches).
        train={"block_size": 128, "seed": 0, "tasks": {**SFT_MIXTURE}},
        profiles={
            "cpu": {
                # About 4 minutes on two cores: batch 64 costs little more per step than 32 on a CPU.
                "train": {
                    "max_steps": 1000,
                    "batch_size": 64,
                    "lr": 3e-3,
                    "min_lr": 3e-4,
                    "warmup_steps": 50,
                    "packing": "pack",
                }
            },
            "gpu": {
                "model": {"block_size": 256},  # the gpu base already has 256 positions
                "train": {
                    "block_size": 256,
                    "max_steps": 6000,
                    "batch_size": 128,
                    "lr": 1e-3,
                    "min_lr": 1e-4,
                    "warmup_steps": 200,
                    "packing": "pack",
                },
            },
        },
    )
)


# Part 7: reward models on the SFT model. Preference pairs are drawn fresh for every step from the
# tasks of PREFERENCE_TASKS; a tenth of them have answers of equal length (the content mistakes: off
# by one, a wrong or swapped digit), the rest differ in length. The clean model sees the longer
# answer win half the time; the biased one sees it win 9 times in 10 (Part 7.1).
REWARD_TRAIN = {
    "seed": 0,
    "equal_share": 0.1,
    "length_bias": 0.5,
    "pooling": "last",
    "causal": True,
    "loss": "bradley_terry",
}
"""The settings the three reward recipes share."""

REWARD_PROFILES = {
    # About two minutes on two cores.
    "cpu": {
        "train": {
            "max_steps": 600,
            "batch_size": 32,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 30,
        }
    },
    "gpu": {
        "train": {
            "max_steps": 2000,
            "batch_size": 64,
            "lr": 3e-4,
            "min_lr": 3e-5,
            "warmup_steps": 100,
        }
    },
}
"""Per-profile budgets of the reward recipes."""

for _name, _description, _train in (
    ("reward", "Part 7: reward model on the SFT model, clean preference pairs", {}),
    (
        "reward-biased",
        "Part 7: reward model on length-biased preference pairs (the longer answer wins 90 %)",
        {"length_bias": 0.9},
    ),
    (
        "reward-encoder",
        "Part 7: the encoder variant (causal mask removed, mean pooling), clean pairs",
        {"causal": False, "pooling": "mean"},
    ),
):
    register(
        Recipe(
            name=_name,
            description=_description,
            corpus="tinyshakespeare",
            kind="reward",
            parent="sft",
            tokenizer=RECIPES["sft"].tokenizer,
            train={**REWARD_TRAIN, **_train},
            profiles=copy.deepcopy(REWARD_PROFILES),
        )
    )


# Part 8: PPO from the SFT model. The verifier pays; the clean reward model of Part 7 scores every
# evaluation, and its key is part of this one. Part 8.2 measured why it is not the reward here: on
# the policy's own answers it ranks a right answer above a wrong one hardly better than a coin, and
# Part 8.5 shows what weighting it in does (bench/ppo_seeds.py). The prompts are letter counts, the
# task whose held-out accuracy follows its training accuracy (the 1-digit sums and comparisons of
# PPO_PROMPTS have too few distinct problems: the SFT model memorised its training split). The gpu
# profile turns off the dropout its bases train with: sampling and the update must agree.
PPO_TRAIN = {
    "prompts": {"count": [3, 4, 5, 6, 7, 8]},
    "rm_weight": 0.0,
    "verifier_weight": 1.0,
    "lr": 1e-4,
    "beta": 0.05,
    "eval_interval": 25,
    "eval_examples": 400,
    "seed": 0,
}
"""The ``ppo`` recipe's settings (the rest are :class:`~llmbook.align.ppo_config.PPOConfig`'s defaults)."""

register(
    Recipe(
        name="ppo",
        description="Part 8: the SFT model trained with PPO on letter counts, paid by the verifier",
        corpus="tinyshakespeare",
        kind="ppo",
        parent="sft",
        reward_model="reward",
        tokenizer=RECIPES["sft"].tokenizer,
        train=dict(PPO_TRAIN),
        profiles={
            # About three minutes on two cores (bench/ppo_seeds.py repeats it over seeds).
            "cpu": {"train": {"iterations": 250, "batch_size": 64, "minibatch_size": 32}},
            "gpu": {
                "model": {"dropout": 0.0},
                "train": {"iterations": 1000, "batch_size": 128, "minibatch_size": 64},
            },
        },
    )
)


# Part 8.5: reward hacking, shown. PPO against the length-biased reward model of Part 7 on the
# default prompt cells, at a learning rate that lets a short run (under half a minute on two cores) go far,
# then the same run with a ten times larger KL coefficient, and with the verifier mixed in.
HACK_RUNS = {
    "ppo-biased": ("PPO against the length-biased reward model (reward hacking)", {}),
    "ppo-biased-kl": (
        "the reward-hacking run with a ten times larger KL coefficient",
        {"beta": 0.5},
    ),
    "ppo-biased-verifier": (
        "the reward-hacking run with the verifier mixed into the reward",
        {"verifier_weight": 2.0},
    ),
}
"""The three reward-hacking recipes: name to description and changes to the shared settings."""

for _name, (_description, _changes) in HACK_RUNS.items():
    register(
        Recipe(
            name=_name,
            description=f"Part 8.5: {_description}",
            corpus="tinyshakespeare",
            kind="ppo",
            parent="sft",
            reward_model="reward-biased",
            tokenizer=RECIPES["sft"].tokenizer,
            train={
                "iterations": 60,
                "batch_size": 32,
                "minibatch_size": 16,
                "lr": 3e-4,
                "beta": 0.05,
                "eval_interval": 10,
                "eval_examples": 100,
                "seed": 0,
                **_changes,
            },
            profiles={"cpu": {}, "gpu": {"model": {"dropout": 0.0}}},
        )
    )


# Part 9: GRPO from the SFT model on the ppo recipe's letter counts, paid by the verifier alone; no
# critic and no reward model. Four completions per prompt, 50 prompts per batch, one pass over each
# batch in four minibatches. The centred rewards are not divided by the group's std (Part 9.2). Chosen
# from three-seed trials of variants (bench/ppo_vs_grpo.py's ALGORITHMS: two passes for 120
# iterations, a higher learning rate, std scaling, 8 completions per prompt), the only one whose mean
# held-out gain reached the 10 points of Part 9's target. At iteration 80 the run has sampled as many
# completions as the ppo recipe (250 x 64); it goes on to 200.
GRPO_TRAIN = {
    "prompts": {"count": [3, 4, 5, 6, 7, 8]},
    "prompts_per_batch": 50,
    "group_size": 4,
    "minibatch_size": 50,
    "updates_per_batch": 1,
    "lr": 3e-4,
    "beta": 0.04,
    "scale_rewards": "none",
    "aggregation": "grpo",
    "eval_interval": 20,
    "eval_examples": 400,
    "seed": 0,
}
"""The ``grpo`` recipe's settings (the rest are :class:`~llmbook.align.grpo_config.GRPOConfig`'s defaults)."""

register(
    Recipe(
        name="grpo",
        description="Part 9: the SFT model trained with GRPO on letter counts, paid by the verifier",
        corpus="tinyshakespeare",
        kind="grpo",
        parent="sft",
        tokenizer=RECIPES["sft"].tokenizer,
        train=dict(GRPO_TRAIN),
        profiles={
            # About three and a half minutes on two cores (bench/ppo_vs_grpo.py repeats it over seeds).
            "cpu": {"train": {"iterations": 200}},
            "gpu": {
                "model": {"dropout": 0.0},
                "train": {"iterations": 500, "prompts_per_batch": 128, "minibatch_size": 128},
            },
        },
    )
)


# Part 10.1: DPO from the SFT model, which is also its frozen reference. The main recipe trains on
# the letter counts PPO and GRPO trained on (Parts 8-9), so that the three compare on one task: ten
# rounds of fresh pairs, the gold answer against the policy's own wrong sample, and the chosen
# answers' likelihood in the loss (RPO). Chosen from trials on the cpu profile's SFT model (held-out
# accuracy 31.6 % before): offline DPO on the SFT model's mistakes learned "answer a larger number"
# (the SFT model undercounts) and fell to 5 %; ten rounds without the likelihood term stayed at 32 %;
# with it, 41 %; the likelihood term alone (more SFT on the counts) reached 36 %. Two more seeds give
# the spread. The mixture recipes train on the Part 7 pairs, clean and length-biased, offline.
DPO_TRAIN = {
    "tasks": ["count"],
    "kinds": ["sample"],
    "rounds": 10,
    "beta": 0.1,
    "sft_coef": 1.0,
    "lr": 2e-4,
    "min_lr": 2e-5,
    "warmup_steps": 10,
    "eval_interval": 25,
    "eval_pairs": 256,
    "eval_examples": 256,
    "seed": 0,
}
"""The settings the DPO recipes share (the rest are :class:`~llmbook.align.dpo.DPOConfig`'s defaults)."""

DPO_MIXTURE = {
    "tasks": list(PREFERENCE_TASKS),
    "kinds": list(REJECTION_KINDS),
    "rounds": 1,
    "sft_coef": 0.0,
}
"""The changes of the mixture recipes: the Part 7 tasks and rejection kinds, one offline round, plain DPO."""

DPO_RUNS = {
    "dpo": ("iterative DPO with the chosen answers' likelihood, on letter counts", {}),
    "dpo-seed1": ("the dpo recipe with seed 1", {"seed": 1}),
    "dpo-seed2": ("the dpo recipe with seed 2", {"seed": 2}),
    "dpo-mix": ("offline DPO on clean preference pairs of the Part 7 tasks", DPO_MIXTURE),
    "dpo-mix-biased": (
        "offline DPO on length-biased pairs (the longer answer wins 90 %)",
        {**DPO_MIXTURE, "length_bias": 0.9},
    ),
}
"""The DPO recipes: name to description and changes to the shared settings."""

for _name, (_description, _changes) in DPO_RUNS.items():
    register(
        Recipe(
            name=_name,
            description=f"Part 10.1: {_description}",
            corpus="tinyshakespeare",
            kind="dpo",
            parent="sft",
            tokenizer=RECIPES["sft"].tokenizer,
            train={**DPO_TRAIN, **_changes},
            profiles={
                # About two minutes on two cores, half of it sampling the policy's answers.
                "cpu": {"train": {"max_steps": 150, "batch_size": 32}},
                "gpu": {
                    "model": {"dropout": 0.0},
                    "train": {"max_steps": 600, "batch_size": 64, "sample_examples": 16384},
                },
            },
        )
    )


# Part 10.2: the sft recipe's fine-tune with LoRA instead of full fine-tuning: the same base, data,
# steps, batch and learning rate; only rank-r adapters on the seven projections, and the rows of
# the new chat tokens and of the digits, train. The digits must: TinyShakespeare has almost none, so
# the base model's digit embeddings and head rows are untrained, and no adapter on the blocks can
# make up for that (trials on the cpu profile, 300 steps: validation loss 2.85 with rank 4 or rank
# 64 and frozen digit rows, 1.94 with rank 4 and trainable digit rows, 1.69 for full fine-tuning).
# The full sft recipe's learning rate is also LoRA's best here (rank 4, 1000 steps, validation loss /
# exact match on the 960 test problems of 10.2: lr 1e-3 1.85 / 8.3 %, 3e-3 1.60 / 11.3 %, 1e-2
# 2.22 / 4.3 %, 3e-2 2.79 / 1.3 %); every printable character's rows trainable as well: 1.48 / 12.0 %
# (full fine-tuning: 1.15 / 15.8 %).
LORA_RANKS = (1, 4, 16)
"""The ranks of the ``lora-sft-r{r}`` recipes."""

for _rank in LORA_RANKS:
    _sft = RECIPES["sft"]
    register(
        Recipe(
            name=f"lora-sft-r{_rank}",
            description=f"Part 10.2: the sft recipe with rank-{_rank} LoRA adapters instead of full fine-tuning",
            corpus="tinyshakespeare",
            kind="sft",
            parent="shakespeare-modern",
            tokenizer=_sft.tokenizer,
            model=dict(_sft.model),
            train={
                **_sft.train,
                "lora_rank": _rank,
                "lora_alpha": 16.0,
                "lora_tokens": "0123456789",
            },
            profiles=copy.deepcopy(_sft.profiles),
        )
    )
