"""The training loop, written out: batches, AdamW, clipping, a warmup + cosine schedule, evaluation."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from llmbook.data.batching import as_ids, random_batch
from llmbook.model.config import config_from_dict
from llmbook.train.evaluate import evaluate
from llmbook.train.optim import build_optimizer
from llmbook.train.schedule import warmup_cosine

PRECISIONS = ("float32", "bfloat16")


@dataclass(kw_only=True)
class TrainConfig:
    """How to train: steps, batch, optimizer, schedule, evaluation, seed.

    Introduced in {doc}`/book/part2/04-training-loop`.
    """

    max_steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 12
    """Windows per step (B)."""
    block_size: int | None = None
    """Window length (T); None uses the model's ``block_size``."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    """Steps of linear warmup."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (see :func:`~llmbook.train.optim.param_groups`)."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.99
    """Adam's second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    eval_interval: int = 250
    """Estimate the validation loss every this many steps (0: only at the end)."""
    eval_batches: int | None = 8
    """Batches in each periodic estimate, spread evenly over the validation split (None: the whole
    split); the final evaluation is always over the whole split."""
    eval_batch_size: int = 64
    """Windows per evaluation batch."""
    bos_id: int | None = None
    """Start every training and evaluation window with this token, as documents start with BOS in real
    pretraining (see :func:`~llmbook.data.batching.random_batch`); None: plain windows."""
    precision: str = "float32"
    """``"float32"``, or ``"bfloat16"`` for bf16 autocast of the forward pass."""
    seed: int = 1337
    """Seed for initial weights (when the model is built after it) and the batch sampler."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_interval", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: must be a non-negative integer, got {value!r}")
        if self.block_size is not None and (
            not isinstance(self.block_size, int) or self.block_size < 1
        ):
            raise ValueError(
                f"block_size: must be a positive integer or None, got {self.block_size!r}"
            )
        if self.eval_batches is not None and (
            not isinstance(self.eval_batches, int) or self.eval_batches < 1
        ):
            raise ValueError(
                f"eval_batches: must be a positive integer or None, got {self.eval_batches!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr: must be positive, got {self.lr!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr: must be in [0, lr], got {self.min_lr!r}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: must be in [0, 1), got {getattr(self, name)!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip: must be >= 0, got {self.grad_clip!r}")
        if self.bos_id is not None and (
            isinstance(self.bos_id, bool) or not isinstance(self.bos_id, int) or self.bos_id < 0
        ):
            raise ValueError(
                f"bos_id: must be a non-negative token id or None, got {self.bos_id!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict:
        """The config as a JSON-serialisable dict.

        :returns: one entry per field.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Build from a dict, rejecting unknown keys by name.

        :param data: field names mapped to values.
        :returns: the validated config.
        """
        return config_from_dict(cls, data)


@dataclass
class History:
    """What a training run recorded.

    Introduced in {doc}`/book/part2/04-training-loop`.
    """

    steps: list[int] = field(default_factory=list)
    """Step index of each recorded training loss."""
    train_loss: list[float] = field(default_factory=list)
    """Training loss of each step's batch."""
    lr: list[float] = field(default_factory=list)
    """Learning rate used at each step."""
    eval_steps: list[int] = field(default_factory=list)
    """Steps at which the validation loss was estimated."""
    val_loss: list[float] = field(default_factory=list)
    """The validation estimates (the last one is over the whole split)."""
    train_seconds: float = 0.0
    """Wall time spent in training steps, evaluation excluded."""
    tokens_seen: int = 0
    """Training tokens processed."""

    @property
    def tokens_per_second(self) -> float:
        """Training throughput."""
        return self.tokens_seen / self.train_seconds if self.train_seconds else 0.0

    @property
    def final_val_loss(self) -> float:
        """The last (whole-split) validation loss."""
        return self.val_loss[-1] if self.val_loss else float("nan")

    def to_dict(self) -> dict:
        """The history as a JSON-serialisable dict (with throughput).

        :returns: the lists and totals.
        """
        d = asdict(self)
        d["tokens_per_second"] = self.tokens_per_second
        return d


def _autocast(precision: str, device: torch.device):
    if precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train(
    model: nn.Module,
    train_ids,
    val_ids,
    config: TrainConfig,
    *,
    progress: bool = True,
    log_every: int = 0,
) -> History:
    """Train a language model on a token stream; no Trainer API, every step in view.

    Each step: set the scheduled learning rate, sample a random batch, forward, backward, clip the
    global gradient norm, AdamW step. Every ``eval_interval`` steps the validation loss is estimated on
    ``eval_batches`` batches; at the end it is computed over the whole split. With the same seed,
    model initialisation and data, two runs on CPU give identical losses.

    :param model: a language model called as ``model(x, y)`` returning ``(logits, loss)``, with a
        ``config.block_size``; it is trained in place on the device of its parameters.
    :param train_ids: 1-D training token stream.
    :param val_ids: 1-D validation token stream.
    :param config: the :class:`TrainConfig`.
    :param progress: show a progress bar on stderr.
    :param log_every: also print a line every this many steps (0: never).
    :returns: the :class:`History`.

    Introduced in {doc}`/book/part2/04-training-loop`.
    """
    train_ids, val_ids = as_ids(train_ids), as_ids(val_ids)
    device = next(model.parameters()).device
    T = config.block_size or model.config.block_size
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = build_optimizer(
        model, lr=config.lr, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)
    )
    history = History()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, desc="train", unit="step", mininterval=1.0, leave=False)

    def estimate(step: int, full: bool) -> None:
        result = evaluate(
            model,
            val_ids,
            block_size=T,
            batch_size=config.eval_batch_size,
            max_batches=None if full else config.eval_batches,
            bos_id=config.bos_id,
        )
        history.eval_steps.append(step)
        history.val_loss.append(result.loss)

    model.train()
    for step in range(config.max_steps):
        started = time.perf_counter()
        lr = warmup_cosine(
            step,
            max_lr=config.lr,
            warmup_steps=config.warmup_steps,
            total_steps=config.max_steps,
            min_lr=config.min_lr,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = random_batch(
            train_ids,
            config.batch_size,
            T,
            generator=generator,
            device=device,
            bos_id=config.bos_id,
        )
        with _autocast(config.precision, device):
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        loss_value = loss.item()
        history.train_seconds += time.perf_counter() - started
        history.tokens_seen += x.numel()
        history.steps.append(step)
        history.train_loss.append(loss_value)
        history.lr.append(lr)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss_value} at step {step}; lower lr or clip harder"
            )
        last = step == config.max_steps - 1
        if config.eval_interval and (step + 1) % config.eval_interval == 0 and not last:
            estimate(step + 1, full=False)
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}")
        if log_every and (step % log_every == 0 or last):
            val = f", val {history.val_loss[-1]:.3f}" if history.val_loss else ""
            print(f"step {step:5d}: train {loss_value:.3f}{val}, lr {lr:.2e}")
    if bar is not None:
        bar.close()
    estimate(config.max_steps, full=True)
    return history
