r"""Supervised fine-tuning: a base language model learns to answer the tasks in the chat format.

The loop is the pretraining loop of Part 2 with three changes, each a function of its own: the data
are rendered conversations (:class:`~llmbook.align.chat.ChatFormat`) rather than windows of a corpus,
the loss counts assistant tokens only (:func:`~llmbook.align.sft_loss.sft_loss`), and the order of the
examples is a choice (:func:`~llmbook.tasks.order_examples`: random, or a curriculum).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from llmbook.adapt.lora import DEFAULT_TARGETS, inject_lora, lora_layers, merge_lora
from llmbook.adapt.token_rows import merge_rows, train_rows
from llmbook.align.batching import MODES, iterate_batches, to_dataset
from llmbook.align.chat import ChatFormat, chat_tokenizer
from llmbook.align.history import HistoryRecord
from llmbook.align.sft_loss import REDUCTIONS, sft_loss
from llmbook.align.vocab import grow_vocab
from llmbook.model.config import check_field_values, config_from_dict
from llmbook.tasks import SCHEDULES, TASKS, generate_examples, order_examples
from llmbook.tasks.base import Example
from llmbook.train.optim import build_optimizer, check_optimizer_fields
from llmbook.train.schedule import learning_rate


def _all_tasks() -> dict[str, float]:
    return {name: 1.0 for name in TASKS}


@dataclass(kw_only=True)
class SFTConfig:
    """How to fine-tune: the task mixture, the example order, the loss, the optimizer.

    Every field is checked on construction; a bad value raises a :class:`ValueError` whose message
    starts with the field name (NaN and infinity included).

    Introduced in {doc}`/book/part6/04-packing`.
    """

    tasks: dict = field(default_factory=_all_tasks)
    """Task name to mixture weight (see :data:`llmbook.tasks.TASKS`)."""
    difficulty: dict | None = None
    """Task name to the difficulty levels to train on (default: each task's trained range)."""
    max_steps: int = 1000
    """Optimizer steps; the run sees ``max_steps * batch_size`` examples, each drawn fresh."""
    batch_size: int = 32
    """Examples per step."""
    block_size: int | None = None
    """Context length of the fine-tuned model (RoPE lets it exceed the base model's); None keeps
    the model's."""
    lr: float = 2e-3
    """Peak learning rate."""
    min_lr: float = 2e-4
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 50
    """Steps of linear warmup."""
    weight_decay: float = 0.0
    """Decoupled weight decay on matrices."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.99
    """Adam's second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    reduction: str = "token"
    """``"token"``: mean over the batch's answer tokens; ``"sequence"``: mean of per-example means
    (see :func:`~llmbook.align.sft_loss.sft_loss`)."""
    packing: str = "pad"
    """``"pad"``: one example per row, padded; ``"pack"``: examples packed into rows of
    ``block_size`` with a block-diagonal mask (see :mod:`llmbook.align.batching`)."""
    schedule: str = "random"
    """The order of the examples: one of :data:`llmbook.tasks.SCHEDULES`."""
    eval_interval: int = 0
    """Measure the validation loss every this many steps (0: only at the end)."""
    eval_examples: int = 256
    """Validation examples for the loss estimate."""
    lora_rank: int = 0
    """0: full fine-tuning. ``r >= 1``: low-rank adapters of rank ``r`` on ``lora_targets`` and the
    new chat tokens' rows are all that trains (see :func:`prepare_lora`)."""
    lora_alpha: float = 16.0
    r"""LoRA's $\alpha$: the adapter's update is scaled by $\alpha / r$."""
    lora_targets: list = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """The projections that get adapters (names as in :func:`llmbook.adapt.lora.inject_lora`)."""
    lora_tokens: str = ""
    """Text whose tokens' embedding and head rows train beside the adapters (and the new chat
    tokens): tokens the base model hardly ever saw, such as the digits of a Shakespeare model."""
    seed: int = 0
    """Seed of the example draw, the order and anything random in the model."""

    def __post_init__(self) -> None:
        check_field_values(type(self), {f.name: getattr(self, f.name) for f in fields(self)})
        if not isinstance(self.tasks, dict) or not self.tasks:
            raise ValueError(f"tasks: must be a non-empty dict of task weights, got {self.tasks!r}")
        for name, weight in self.tasks.items():
            if name not in TASKS:
                raise ValueError(f"tasks: unknown task {name!r}; known: {sorted(TASKS)}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(f"tasks: the weight of {name!r} must be a number, got {weight!r}")
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(
                    f"tasks: the weight of {name!r} must be finite and > 0, got {weight}"
                )
        if self.difficulty is not None:
            if not isinstance(self.difficulty, dict):
                raise ValueError(f"difficulty: must be a dict or None, got {self.difficulty!r}")
            for name, levels in self.difficulty.items():
                if name not in self.tasks:
                    raise ValueError(f"difficulty: {name!r} is not one of the tasks")
                for level in levels:
                    TASKS[name].check_difficulty(level)
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(
                f"block_size: must be a positive integer or None, got {self.block_size}"
            )
        for name in ("max_steps", "batch_size", "eval_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be a positive integer, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_interval", "seed", "lora_rank"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha: must be > 0, got {self.lora_alpha!r}")
        if not isinstance(self.lora_targets, list) or not self.lora_targets:
            raise ValueError(f"lora_targets: must be a non-empty list, got {self.lora_targets!r}")
        check_optimizer_fields(self)
        for name, allowed in (
            ("reduction", REDUCTIONS),
            ("packing", MODES),
            ("schedule", SCHEDULES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: must be one of {allowed}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        """The config as a JSON-serialisable dict.

        :returns: field name to value.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SFTConfig:
        """Build a config from a dict; unknown keys and wrong types raise naming the field.

        :param data: field name to value.
        :returns: the config.
        """
        return config_from_dict(cls, data)


@dataclass
class SFTHistory(HistoryRecord):
    """What a fine-tuning run measured, step by step.

    Introduced in {doc}`/book/part6/04-packing`.
    """

    steps: list[int] = field(default_factory=list)
    """The optimizer steps, from 0."""
    train_loss: list[float] = field(default_factory=list)
    """The batch loss (nats per answer token, or per-example mean) at each step."""
    lr: list[float] = field(default_factory=list)
    """The learning rate at each step."""
    answer_tokens: list[int] = field(default_factory=list)
    """Answer tokens seen after each step (cumulative): the x-axis of a fair comparison."""
    eval_steps: list[int] = field(default_factory=list)
    """Steps at which the validation loss was measured."""
    val_loss: list[float] = field(default_factory=list)
    """Validation loss (per answer token) at ``eval_steps``."""
    train_seconds: float = 0.0
    """Wall time in optimizer steps."""
    padding_fraction: float = 0.0
    """Share of the token slots that held padding over the run."""
    trainable_parameters: int = 0
    """How many numbers the optimizer updated."""
    optimizer_state_bytes: int = 0
    """The optimizer's state (AdamW's two moments) after the first step, in bytes."""


def prepare_model(model: nn.Module, tokenizer, *, block_size: int) -> tuple[nn.Module, ChatFormat]:
    """Give a base model the chat tokens and a longer context, in place.

    The tokenizer gets the chat specials after its own ids (:func:`~llmbook.align.chat.chat_tokenizer`),
    the embedding and head grow to the new vocabulary with new rows at the mean of the old ones
    (:func:`~llmbook.align.vocab.grow_vocab`), and ``block_size`` is raised, which a RoPE model
    allows: its positions are computed, not looked up in a table.

    :param model: a base :class:`~llmbook.model.gpt.GPT`.
    :param tokenizer: its tokenizer.
    :param block_size: the new context length (at least the old one).
    :returns: ``(model, chat_format)``.
    :raises ValueError: when ``block_size`` shrinks the context, or a learned position table would
        have to grow.

    Introduced in {doc}`/book/part6/02-new-tokens`.
    """
    cfg = model.config
    if block_size < cfg.block_size:
        raise ValueError(f"block_size: {block_size} is below the base model's {cfg.block_size}")
    if block_size > cfg.block_size and cfg.pos_embedding == "learned":
        raise ValueError(
            f"block_size: a learned position table has {cfg.block_size} rows; only a "
            "rope or sinusoidal model can take a longer context as it is"
        )
    chat = ChatFormat(chat_tokenizer(tokenizer))
    grow_vocab(model, chat.tokenizer.vocab_size)
    model.config = dataclasses.replace(model.config, block_size=block_size)
    return model, chat


def lora_rows(chat: ChatFormat, config: SFTConfig, base_vocab_size: int) -> list[int]:
    """The token ids whose rows train in a LoRA fine-tune: the new chat tokens and ``lora_tokens``.

    :param chat: the chat format of the prepared model.
    :param config: the config.
    :param base_vocab_size: the base model's vocabulary size (ids from it on are new).
    :returns: sorted distinct ids.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    new = range(base_vocab_size, chat.tokenizer.vocab_size)
    listed = (
        chat.tokenizer.encode(config.lora_tokens, allowed_special=()) if config.lora_tokens else []
    )
    return sorted(set(new) | set(listed))


def prepare_lora(model: nn.Module, config: SFTConfig, rows: Sequence[int]) -> list[str]:
    """Make a prepared model train LoRA adapters and a few token rows only, in place.

    Every weight is frozen; the projections named by ``config.lora_targets`` get rank
    ``config.lora_rank`` adapters (:func:`~llmbook.adapt.lora.inject_lora`), and the embedding and
    head rows of ``rows`` become trainable (:func:`~llmbook.adapt.token_rows.train_rows`): a frozen
    model could not learn to read or write the chat tokens it has never seen (see
    :func:`lora_rows`). Undo with :func:`merge_lora_model` after training.

    :param model: a model prepared by :func:`prepare_model`.
    :param config: the config (``lora_rank >= 1``).
    :param rows: the token ids whose rows train (e.g. :func:`lora_rows`).
    :returns: the names of the adapted projections.
    :raises ValueError: naming ``lora_rank`` when it is 0.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    if config.lora_rank < 1:
        raise ValueError("lora_rank: prepare_lora needs a rank >= 1 (0 is full fine-tuning)")
    names = inject_lora(
        model,
        r=config.lora_rank,
        alpha=config.lora_alpha,
        targets=tuple(config.lora_targets),
        seed=config.seed,
    )
    train_rows(model, list(rows))
    return names


def merge_lora_model(model: nn.Module) -> nn.Module:
    """Fold adapters and trainable rows back into plain layers: a plain, fully trainable model again.

    :param model: a model set up by :func:`prepare_lora` (any other model is returned unchanged).
    :returns: the same model.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    if lora_layers(model):
        merge_lora(model)
    merge_rows(model)
    return model.requires_grad_(True)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The bytes of the tensors an optimizer keeps per parameter (AdamW: two moments and a step).

    :param optimizer: the optimizer, after at least one step.
    :returns: bytes.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    )


def sft_examples(config: SFTConfig, n: int, *, split: str, seed: int) -> list[Example]:
    """Draw ``n`` examples of the config's task mixture from one split, in the config's order.

    :param config: the fine-tuning config (tasks, difficulty, schedule).
    :param n: how many examples.
    :param split: ``"train"``, ``"val"`` or ``"test"``.
    :param seed: the seed of the draw and of the order.
    :returns: the examples, ordered by ``config.schedule``.

    Introduced in {doc}`/book/part6/05-curriculum`.
    """
    if config.difficulty is None:
        examples = generate_examples(config.tasks, n, split=split, seed=seed)
    else:
        # Per-task difficulty levels: draw each task's share with its own levels, then mix.
        total = sum(config.tasks.values())
        examples = []
        names = sorted(config.tasks)
        counts = [int(n * config.tasks[t] / total) for t in names]
        counts[-1] += n - sum(counts)
        for i, (name, count) in enumerate(zip(names, counts)):
            if count:
                levels = config.difficulty.get(name)
                examples += generate_examples(
                    [name], count, split=split, seed=seed * 1000 + i, difficulty=levels
                )
    return order_examples(examples, config.schedule, seed=seed)


def render_rows(chat: ChatFormat, examples: list[Example]) -> list[tuple[list[int], list[bool]]]:
    """Each example as a one-turn conversation: ``(ids, loss_mask)``, the mask on the answer.

    :param chat: the chat format.
    :param examples: the examples.
    :returns: one ``(ids, loss_mask)`` pair per example.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """
    return [chat.render_example(e.prompt, e.answer) for e in examples]


@torch.no_grad()
def validation_loss(
    model: nn.Module, chat: ChatFormat, rows, *, block_size: int, batch_size: int = 64
) -> float:
    """Mean loss per answer token over rendered examples, in eval mode (restored afterwards).

    :param model: the model.
    :param chat: the chat format (for the padding id).
    :param rows: ``(ids, loss_mask)`` pairs.
    :param block_size: the longest example allowed.
    :param batch_size: examples per forward pass.
    :returns: nats per answer token.

    Introduced in {doc}`/book/part6/03-sft-loss`.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        dataset = to_dataset(rows)
        pad = chat.tokenizer.pad_id
        for batch in iterate_batches(
            dataset, batch_size=batch_size, pad_id=pad, block_size=block_size, shuffle=False
        ):
            batch = batch.to(device)
            logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits
            _, metrics = sft_loss(logits, batch.labels)
            total += float(metrics["loss_sum"])
            count += int(metrics["n_tokens"])
    finally:
        model.train(was_training)
    return total / count


def train_sft(
    model: nn.Module,
    chat: ChatFormat,
    config: SFTConfig,
    *,
    examples: list[Example] | None = None,
    progress: bool = True,
) -> SFTHistory:
    """Fine-tune ``model`` on the task mixture, every step in view.

    Each step takes the next ``batch_size`` examples of the ordered stream (the order is the
    curriculum's, so batches are not reshuffled), lays them out padded or packed, and takes one AdamW
    step on the masked loss with warmup and cosine decay, clipping the gradient norm. The validation
    loss is measured every ``eval_interval`` steps and at the end, on examples of the validation split
    (disjoint from training by problem). Deterministic for a seed on CPU.

    :param model: a model prepared by :func:`prepare_model`, on its device; trained in place.
    :param chat: its chat format.
    :param config: the :class:`SFTConfig`.
    :param examples: the training stream, already ordered (default: :func:`sft_examples` with
        ``max_steps * batch_size`` examples of the train split).
    :param progress: show a progress bar on stderr.
    :returns: the :class:`SFTHistory`.
    :raises ValueError: when ``config.block_size`` exceeds the model's context.

    Introduced in {doc}`/book/part6/04-packing`.
    """
    block_size = config.block_size or model.config.block_size
    if block_size > model.config.block_size:
        raise ValueError(
            f"block_size: {block_size} exceeds the model's context ({model.config.block_size})"
        )
    if examples is None:
        examples = sft_examples(
            config, config.max_steps * config.batch_size, split="train", seed=config.seed
        )
    val_rows = render_rows(
        chat, sft_examples(config, config.eval_examples, split="val", seed=config.seed + 1)
    )
    dataset = to_dataset(render_rows(chat, examples))
    device = next(model.parameters()).device
    torch.manual_seed(config.seed)  # dropout, if the model has any
    optimizer = build_optimizer(
        model, lr=config.lr, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)
    )
    history = SFTHistory()
    history.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batches = iterate_batches(
        dataset,
        batch_size=config.batch_size,
        pad_id=chat.tokenizer.pad_id,
        block_size=block_size,
        mode=config.packing,
        shuffle=False,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, desc="sft", unit="step", mininterval=1.0, leave=False)
    real = slots = seen = 0
    model.train()
    for step, batch in zip(range(config.max_steps), batches):
        started = time.perf_counter()
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
        batch = batch.to(device)
        logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits
        loss, metrics = sft_loss(
            logits, batch.labels, reduction=config.reduction, document_ids=batch.document_ids
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        if step == 0:
            history.optimizer_state_bytes = optimizer_state_bytes(optimizer)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}; lower lr")
        history.train_seconds += time.perf_counter() - started
        seen += int(metrics["n_tokens"])
        real, slots = real + batch.n_real_tokens, slots + batch.n_slots
        history.steps.append(step)
        history.train_loss.append(value)
        history.lr.append(lr)
        history.answer_tokens.append(seen)
        done = step + 1
        if config.eval_interval and done % config.eval_interval == 0 and done < config.max_steps:
            history.eval_steps.append(done)
            history.val_loss.append(validation_loss(model, chat, val_rows, block_size=block_size))
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{value:.3f}")
    if bar is not None:
        bar.close()
    history.eval_steps.append(len(history.steps))
    history.val_loss.append(validation_loss(model, chat, val_rows, block_size=block_size))
    history.padding_fraction = 1.0 - real / max(slots, 1)
    model.eval()
    return history
