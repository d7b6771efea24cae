r"""Training and evaluating a reward model on preference pairs.

One step scores a batch of pairs, chosen and rejected in one forward pass (the rows stacked, so they
share the batch), and takes an AdamW step on the pairwise loss of
:mod:`~llmbook.align.reward_loss`. Held-out pairwise accuracy, the share of pairs whose chosen
answer gets the higher reward, is the number a reward model is first judged by.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import torch

from llmbook.align.chat import ChatFormat
from llmbook.align.evaluate import complete
from llmbook.align.history import HistoryRecord
from llmbook.align.preference import (
    PREFERENCE_TASKS,
    REJECTION_KINDS,
    PreferencePair,
    pair_stats,
    preference_data,
)
from llmbook.align.reward_loss import REWARD_LOSSES, bradley_terry_loss, margin_ranking_loss
from llmbook.align.reward_model import (
    POOLINGS,
    RewardModel,
    collate,
    pad_id_of,
    render_scored,
    score,
)
from llmbook.model.config import check_field_values, config_from_dict
from llmbook.model.gpt import GPT
from llmbook.tasks import TASKS
from llmbook.tasks.base import Example
from llmbook.train.optim import build_optimizer, check_optimizer_fields
from llmbook.train.schedule import learning_rate


def check_pair_fields(config) -> None:
    """Check the fields that describe preference data (RewardConfig's and DPOConfig's).

    :param config: a config with ``tasks``, ``kinds``, ``length_bias`` and ``equal_share``.
    :raises ValueError: naming the first bad field.

    Introduced in {doc}`/book/part7/02-reward-model`.
    """
    for name, known in (("tasks", TASKS), ("kinds", REJECTION_KINDS)):
        value = getattr(config, name)
        if not isinstance(value, list) or not value:
            raise ValueError(f"{name}: must be a non-empty list, got {value!r}")
        for item in value:
            if item not in known:
                raise ValueError(f"{name}: unknown {name[:-1]} {item!r}; known: {sorted(known)}")
    for name in ("length_bias", "equal_share"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"{name}: must be in [0, 1], got {getattr(config, name)!r}")


@dataclass(kw_only=True)
class RewardConfig:
    """How to build the preference data and train a reward model on it.

    Every field is checked on construction; a bad value raises a :class:`ValueError` whose message
    starts with the field name (NaN and infinity included).

    Introduced in {doc}`/book/part7/02-reward-model`.
    """

    tasks: list = field(default_factory=lambda: list(PREFERENCE_TASKS))
    """The tasks the prompts come from (see :data:`llmbook.tasks.TASKS`)."""
    kinds: list = field(default_factory=lambda: list(REJECTION_KINDS))
    """The rejection kinds (see :data:`~llmbook.align.preference.REJECTION_KINDS`); ``"sample"``
    samples the starting model's own wrong answers."""
    length_bias: float = 0.5
    """Among pairs of unequal length, the share whose chosen answer is the longer (0.5: clean)."""
    equal_share: float = 0.3
    """The share of pairs whose answers are equally long."""
    pooling: str = "last"
    """``"last"`` or ``"mean"`` (see :class:`~llmbook.align.reward_model.RewardModel`)."""
    causal: bool = True
    """False trains the encoder variant (the causal mask removed)."""
    loss: str = "bradley_terry"
    """``"bradley_terry"`` or ``"margin_ranking"``."""
    margin: float = 0.0
    """The margin of the loss (Bradley–Terry: subtracted from every gap; hinge: its ``m``)."""
    center_coef: float = 0.0
    """The reward-centering coefficient (Bradley–Terry only)."""
    max_steps: int = 300
    """Optimizer steps; each sees ``batch_size`` fresh pairs."""
    batch_size: int = 32
    """Pairs per step."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 20
    """Steps of linear warmup."""
    weight_decay: float = 0.0
    """Decoupled weight decay on matrices."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.99
    """Adam's second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    eval_pairs: int = 512
    """Held-out pairs (validation split) for the accuracy measured at the end."""
    sample_temperature: float = 1.0
    """Temperature of the model samples behind the ``"sample"`` kind."""
    sample_examples: int = 4096
    """How many examples of each split get the model's sampled answers (two each) as candidates of
    the ``"sample"`` kind: sampling is the costliest part of building the data."""
    seed: int = 0
    """Seed of the pairs, the head's initialisation and the order."""

    def __post_init__(self) -> None:
        check_field_values(type(self), {f.name: getattr(self, f.name) for f in fields(self)})
        check_pair_fields(self)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling: must be one of {POOLINGS}, got {self.pooling!r}")
        if self.loss not in REWARD_LOSSES:
            raise ValueError(f"loss: must be one of {REWARD_LOSSES}, got {self.loss!r}")
        for name in ("margin", "center_coef", "warmup_steps", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        if self.center_coef > 0 and self.loss != "bradley_terry":
            raise ValueError("center_coef: the centering term goes with the bradley_terry loss")
        if self.sample_examples < 0:
            raise ValueError(f"sample_examples: must be >= 0, got {self.sample_examples}")
        for name in ("max_steps", "batch_size", "eval_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be a positive integer, got {getattr(self, name)}")
        if not self.sample_temperature > 0:
            raise ValueError(f"sample_temperature: must be > 0, got {self.sample_temperature!r}")
        check_optimizer_fields(self)

    def to_dict(self) -> dict:
        """The config as a JSON-serialisable dict.

        :returns: field name to value.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RewardConfig:
        """Build a config from a dict; unknown keys and wrong types raise naming the field.

        :param data: field name to value.
        :returns: the config.
        """
        return config_from_dict(cls, data)


@dataclass
class RewardHistory(HistoryRecord):
    """What a reward-model run measured.

    Introduced in {doc}`/book/part7/02-reward-model`.
    """

    steps: list[int] = field(default_factory=list)
    """The optimizer steps, from 0."""
    train_loss: list[float] = field(default_factory=list)
    """The batch loss at each step."""
    train_accuracy: list[float] = field(default_factory=list)
    """The batch's pairwise accuracy at each step."""
    margin: list[float] = field(default_factory=list)
    """The batch's mean reward gap $r_c - r_r$ at each step."""
    val_accuracy: float = float("nan")
    """Held-out pairwise accuracy at the end."""
    train_seconds: float = 0.0
    """Wall time in optimizer steps."""
    data_seconds: float = 0.0
    """Wall time spent building the pairs (model sampling included)."""
    data: dict = field(default_factory=dict)
    """:func:`~llmbook.align.preference.pair_stats` of the training pairs."""


def sft_samples(
    model: GPT,
    chat: ChatFormat,
    *,
    n_samples: int = 2,
    temperature: float = 1.0,
    seed: int = 0,
    limit: int | None = None,
):
    """A function that samples a model's answers for examples (the ``"sample"`` rejection kind).

    :param model: the language model (the SFT policy).
    :param chat: its chat format.
    :param n_samples: answers per example.
    :param temperature: sampling temperature.
    :param seed: seed of the sampling generator.
    :param limit: sample for the first ``limit`` examples the function is given, over all its calls,
        and give the rest no answers (None: no limit).
    :returns: a function from a list of examples to one list of answer texts per example (only
        answers that ended their turn).

    Introduced in {doc}`/book/part7/01-preference-data`.
    """
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    budget = [float("inf") if limit is None else int(limit)]

    def sample(examples: Sequence[Example]) -> list[list[str]]:
        take = int(min(len(examples), budget[0]))
        budget[0] -= take
        if take == 0:
            return [[] for _ in examples]
        out = complete(
            model,
            chat,
            [e.prompt for e in examples[:take]],
            n_samples=n_samples,
            temperature=temperature,
            max_new_tokens=16,
            generator=generator,
        )
        return [[c.text for c in row if c.finished] for row in out] + [[] for _ in examples[take:]]

    return sample


def pair_batch(
    chat: ChatFormat, pairs: Sequence[PreferencePair], *, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen rows then rejected rows, padded into one batch of ``2 N`` rows.

    :param chat: the chat format.
    :param pairs: ``N`` pairs.
    :param side: where the padding goes.
    :returns: ``(input_ids (2N, T), attention_mask (2N, T))``; rows ``:N`` are the chosen answers.

    Introduced in {doc}`/book/part7/02-reward-model`.
    """
    rows = [render_scored(chat, p.prompt, p.chosen) for p in pairs]
    rows += [render_scored(chat, p.prompt, p.rejected) for p in pairs]
    return collate(rows, pad_id=pad_id_of(chat), side=side)


def pair_rewards(
    model: RewardModel, chat: ChatFormat, pairs: Sequence[PreferencePair], *, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rewards of the chosen and of the rejected answers of each pair (no gradient).

    :param model: the reward model.
    :param chat: its chat format.
    :param pairs: the pairs.
    :param batch_size: rows per forward pass.
    :returns: ``(chosen (N,), rejected (N,))``.

    Introduced in {doc}`/book/part7/02-reward-model`.
    """
    prompts = [p.prompt for p in pairs]
    chosen = score(model, chat, prompts, [p.chosen for p in pairs], batch_size=batch_size)
    rejected = score(model, chat, prompts, [p.rejected for p in pairs], batch_size=batch_size)
    return chosen, rejected


def pairwise_accuracy(
    model: RewardModel, chat: ChatFormat, pairs: Sequence[PreferencePair]
) -> float:
    """The share of pairs whose chosen answer gets the strictly higher reward.

    :param model: the reward model.
    :param chat: its chat format.
    :param pairs: held-out pairs.
    :returns: the accuracy in [0, 1] (NaN for no pairs).

    Introduced in {doc}`/book/part7/02-reward-model`.
    """
    if not pairs:
        return float("nan")
    chosen, rejected = pair_rewards(model, chat, pairs)
    return float((chosen > rejected).float().mean())


def reward_data(
    config: RewardConfig, n: int, *, split: str, seed: int, samples_for=None
) -> list[PreferencePair]:
    """The pairs a config describes, from one split.

    :param config: the reward config (tasks, kinds, length bias, equal share).
    :param n: how many pairs.
    :param split: ``"train"``, ``"val"`` or ``"test"``.
    :param seed: seed of the draw.
    :param samples_for: the sampler for the ``"sample"`` kind (see :func:`sft_samples`); without
        it that kind is left out.
    :returns: the pairs.

    Introduced in {doc}`/book/part7/02-reward-model`.
    """
    kinds = [k for k in config.kinds if k != "sample" or samples_for is not None]
    return preference_data(
        n,
        split=split,
        seed=seed,
        tasks=config.tasks,
        length_bias=config.length_bias,
        equal_share=config.equal_share,
        kinds=kinds,
        samples_for=samples_for,
    )


def reward_model_from(policy: GPT, config: RewardConfig) -> RewardModel:
    """A fresh reward model on a copy of a policy's weights (the policy itself is left untouched).

    :param policy: the model to start from (the SFT model).
    :param config: the reward config (pooling, causal, seed of the head).
    :returns: the reward model, in train mode, on the policy's device.

    Introduced in {doc}`/book/part7/02-reward-model`.
    """
    torch.manual_seed(config.seed)
    backbone = copy.deepcopy(policy)
    device = next(policy.parameters()).device
    return RewardModel(backbone, pooling=config.pooling, causal=config.causal).to(device).train()


def train_reward(
    model: RewardModel,
    chat: ChatFormat,
    config: RewardConfig,
    *,
    pairs: Sequence[PreferencePair] | None = None,
    val_pairs: Sequence[PreferencePair] | None = None,
    samples_for=None,
    progress: bool = True,
) -> RewardHistory:
    """Train a reward model on preference pairs, in place.

    Each step takes the next ``batch_size`` pairs, scores chosen and rejected rows in one forward
    pass, and takes an AdamW step on the configured loss, with warmup, cosine decay and gradient
    clipping. Held-out accuracy is measured at the end on pairs of the validation split (disjoint
    from training by prompt). Deterministic for a seed on CPU.

    :param model: the reward model, on its device.
    :param chat: its chat format.
    :param config: the :class:`RewardConfig`.
    :param pairs: the training pairs (default: ``max_steps * batch_size`` pairs of the train split
        built by :func:`reward_data`).
    :param val_pairs: held-out pairs (default: ``eval_pairs`` of the validation split).
    :param samples_for: the sampler behind the ``"sample"`` kind (see :func:`sft_samples`).
    :param progress: show a progress bar on stderr.
    :returns: the :class:`RewardHistory`.
    :raises FloatingPointError: when the loss stops being finite.

    Introduced in {doc}`/book/part7/02-reward-model`.
    """
    history = RewardHistory()
    started = time.perf_counter()
    if pairs is None:
        pairs = reward_data(
            config,
            config.max_steps * config.batch_size,
            split="train",
            seed=config.seed,
            samples_for=samples_for,
        )
    if val_pairs is None:
        val_pairs = reward_data(
            config, config.eval_pairs, split="val", seed=config.seed + 1, samples_for=samples_for
        )
    history.data_seconds = time.perf_counter() - started
    history.data = pair_stats(pairs)
    pairs = list(pairs)
    random.Random(config.seed).shuffle(pairs)
    device = next(model.parameters()).device
    torch.manual_seed(config.seed)
    optimizer = build_optimizer(
        model, lr=config.lr, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, desc="reward", unit="step", mininterval=1.0, leave=False)
    model.train()
    n = len(pairs)
    for step in range(config.max_steps):
        t0 = time.perf_counter()
        lr = learning_rate(
            step,
            schedule="cosine",
            max_lr=config.lr,
            warmup_steps=config.warmup_steps,
            total_steps=config.max_steps,
            min_lr=config.min_lr,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        lo = (step * config.batch_size) % n
        batch = [pairs[(lo + i) % n] for i in range(config.batch_size)]
        ids, mask = pair_batch(chat, batch)
        rewards = model(ids.to(device), mask.to(device))  # (2N,)
        chosen, rejected = rewards.chunk(2)
        if config.loss == "bradley_terry":
            loss, metrics = bradley_terry_loss(
                chosen, rejected, margin=config.margin or None, center_coef=config.center_coef
            )
        else:
            loss, metrics = margin_ranking_loss(chosen, rejected, margin=config.margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss became {metrics['loss']} at step {step}; lower lr")
        history.train_seconds += time.perf_counter() - t0
        history.steps.append(step)
        history.train_loss.append(metrics["loss"])
        history.train_accuracy.append(metrics["accuracy"])
        history.margin.append(metrics["margin"])
        if bar is not None:
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}")
    if bar is not None:
        bar.close()
    model.eval()
    history.val_accuracy = pairwise_accuracy(model, chat, val_pairs)
    return history
