"""The training loop, written out: batches, AdamW, clipping, schedules, evaluation; plus gradient
accumulation, mixed precision, exact resume, logging and data parallelism (Part 4)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from llmbook.data.batching import IGNORE_INDEX, as_ids, random_batch
from llmbook.model.config import check_field_values, config_from_dict
from llmbook.model.moe import moe_metrics
from llmbook.train.distributed import all_reduce_sum, barrier, shard, world
from llmbook.train.evaluate import evaluate
from llmbook.train.optim import build_optimizer, check_optimizer_fields
from llmbook.train.schedule import SCHEDULES, learning_rate

PRECISIONS = ("float32", "bfloat16", "float16")
"""``TrainConfig.precision`` values: full fp32, bf16 autocast, or fp16 autocast with a gradient scaler."""


@dataclass(kw_only=True)
class TrainConfig:
    """How to train: steps, batch, optimizer, schedule, evaluation, seed.

    Every field is checked on construction (see :func:`~llmbook.model.config.check_field_values`):
    its type, its range, and that every float is finite. NaN passes every range check (``nan < 0`` is
    False) and would, for instance, silently switch gradient clipping off; no float field has a
    meaning for infinity (``grad_clip=0``, not ``inf``, turns clipping off). A bad value raises a
    :class:`ValueError` whose message starts with the field name.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """

    max_steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 12
    """Windows per optimizer step (B): the global batch, over all micro-batches and processes."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step. Each holds ``batch_size / (grad_accum_steps * processes)``
    windows; the gradient equals the full batch's up to float rounding, so this only trades memory for
    time."""
    block_size: int | None = None
    """Window length (T); None uses the model's ``block_size``."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 1e-4
    """Learning rate at the end of the decay (cosine or WSD)."""
    warmup_steps: int = 100
    """Steps of linear warmup."""
    schedule: str = "cosine"
    """The learning-rate schedule after warmup: ``"constant"``, ``"cosine"`` or ``"wsd"`` (see
    :func:`~llmbook.train.schedule.learning_rate`)."""
    decay_fraction: float = 0.2
    """For ``"wsd"``: the share of the post-warmup steps spent in the final linear decay."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (see :func:`~llmbook.train.optim.param_groups`)."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.99
    """Adam's second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this finite value; 0 turns clipping off."""
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
    """``"float32"``; ``"bfloat16"`` for bf16 autocast of the forward pass; ``"float16"`` for fp16
    autocast with a dynamic gradient scaler (meant for CUDA)."""
    seed: int = 1337
    """Seed for initial weights (when the model is built after it) and the batch sampler."""

    def __post_init__(self) -> None:
        check_field_values(type(self), {f.name: getattr(self, f.name) for f in fields(self)})
        # From here on each value has its annotated type and every float is finite.
        for name in ("max_steps", "batch_size", "eval_batch_size", "grad_accum_steps"):
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
        check_optimizer_fields(self)
        if self.bos_id is not None and (
            isinstance(self.bos_id, bool) or not isinstance(self.bos_id, int) or self.bos_id < 0
        ):
            raise ValueError(
                f"bos_id: must be a non-negative token id or None, got {self.bos_id!r}"
            )
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"grad_accum_steps: must divide batch_size ({self.batch_size}), "
                f"got {self.grad_accum_steps}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction: must be in (0, 1], got {self.decay_fraction!r}")
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

    Introduced in {doc}`/book/part2/06-training-loop`.
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
    metrics: dict[str, list[float]] = field(default_factory=dict)
    """Per-step statistics that come with the model's forward output: for a mixture-of-experts model
    the routers' losses and expert loads of the step's last micro-batch (``output.moe``, turned into
    names by :func:`~llmbook.model.moe.moe_metrics`), by name."""

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

    @classmethod
    def from_dict(cls, data: dict) -> History:
        """Rebuild a history saved with :meth:`to_dict` (derived entries are ignored).

        :param data: the dict.
        :returns: the history.
        """
        return cls(**{k: v for k, v in data.items() if k != "tokens_per_second"})


def autocast(precision: str, device: torch.device | str):
    """The autocast context for a precision: matmuls in bf16/fp16, reductions and the loss kept in fp32.

    :param precision: one of :data:`PRECISIONS`.
    :param device: the device the forward pass runs on.
    :returns: a context manager (a no-op for ``"float32"``).

    Introduced in {doc}`/book/part4/04-mixed-precision`.
    """
    device = torch.device(device)
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, precision))


def _averages_gradients(net: nn.Module) -> bool:
    # DDP and FSDP average gradients over processes during backward; a plain module does not.
    from torch.distributed.fsdp import FSDPModule

    return isinstance(net, (nn.parallel.DistributedDataParallel, FSDPModule))


def accumulate_gradients(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    micro_batches: int = 1,
    precision: str = "float32",
    scaler: torch.amp.GradScaler | None = None,
    n_targets: int | None = None,
) -> torch.Tensor:
    r"""Forward and backward over ``(x, y)`` in ``micro_batches`` pieces, adding into ``.grad``.

    Each piece's loss is a mean over its $n_i$ target tokens (ignored positions excluded). Weighting it
    by $n_i / N$, with $N$ the targets of the whole batch, makes the sum of the pieces' gradients the
    gradient of the mean over all $N$ targets:

    $$\nabla \frac{1}{N}\sum_{t=1}^{N} \ell_t = \sum_i \frac{n_i}{N}\,\nabla \frac{1}{n_i}\sum_{t \in i} \ell_t .$$

    Under DDP or FSDP (``net`` a ``DistributedDataParallel`` or an ``FSDPModule``) ``x, y`` are this
    process's rows and ``n_targets`` counts the global batch; the weights carry an extra factor of the
    world size, which the wrapper's gradient averaging divides out, and DDP all-reduces only after the
    last piece.

    :param net: the model (or its DDP wrapper), called as ``net(x, y) -> (logits, loss)``.
    :param x: ``(B, T)`` inputs.
    :param y: ``(B, T)`` targets, ``IGNORE_INDEX`` where no loss is taken.
    :param micro_batches: pieces to split the ``B`` rows into (must divide ``B``).
    :param precision: one of :data:`PRECISIONS` (see :func:`autocast`).
    :param scaler: the fp16 gradient scaler, if any (it scales each piece's loss).
    :param n_targets: target tokens in the global batch (default: those of ``y``).
    :returns: this process's share of the global mean loss, times the world size (detached, fp32):
        summed over processes and divided by the world size it is the batch's mean loss.

    Introduced in {doc}`/book/part4/03-accumulation`.
    """
    return _accumulate(
        net,
        x,
        y,
        micro_batches=micro_batches,
        precision=precision,
        scaler=scaler,
        n_targets=n_targets,
    )[0]


def _accumulate(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    micro_batches: int,
    precision: str,
    scaler: torch.amp.GradScaler | None,
    n_targets: int | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    # accumulate_gradients, plus the model's metrics from the last micro-batch's forward output
    # (the MoE routers' statistics travel with the output, see GPT.moe_metrics).
    B = x.size(0)
    if B % micro_batches:
        raise ValueError(f"micro_batches: {micro_batches} does not divide the batch of {B} rows")
    world_size = world()[1] if _averages_gradients(net) else 1
    if n_targets is None:
        n_targets = int((y != IGNORE_INDEX).sum())
    device = next(net.parameters()).device
    micro = B // micro_batches
    loss_sum = torch.zeros((), device=device)
    moe = None
    for i in range(micro_batches):
        xb = x[i * micro : (i + 1) * micro].to(device, non_blocking=True)  # (micro, T)
        yb = y[i * micro : (i + 1) * micro].to(device, non_blocking=True)
        n_micro = int((yb != IGNORE_INDEX).sum())
        if n_micro == 0:  # nothing to learn from; its mean loss would be 0/0
            if world_size > 1:
                raise ValueError(
                    "y: a micro-batch has no target tokens; under DDP every piece must"
                )
            continue
        weight = n_micro * world_size / n_targets
        last = i == micro_batches - 1
        ddp = isinstance(net, nn.parallel.DistributedDataParallel)
        sync = net.no_sync() if ddp and world_size > 1 and not last else contextlib.nullcontext()
        with sync:
            with autocast(precision, device):
                out = net(xb, yb)
            _, loss = out
            moe = getattr(out, "moe", None)  # a GPTOutput's; a plain (logits, loss) tuple has none
            del out, _  # the logits need not outlive the backward pass
            scaled_loss = loss.float() * weight
            (scaler.scale(scaled_loss) if scaler is not None else scaled_loss).backward()
        loss_sum += scaled_loss.detach()
    return loss_sum, moe_metrics(moe)


def train(
    model: nn.Module,
    train_ids,
    val_ids,
    config: TrainConfig,
    *,
    progress: bool = True,
    log_every: int = 0,
    logger=None,
    sample: Callable[[nn.Module], str] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep_last: int = 3,
    resume: bool = True,
    stop_at: int | None = None,
) -> History:
    """Train a language model on a token stream; no Trainer API, every step in view.

    Each step: set the scheduled learning rate, sample the global batch of ``batch_size`` windows, run
    forward and backward on this process's share of it in ``grad_accum_steps`` micro-batches (each
    micro-batch's mean loss weighted by its share of the batch's target tokens, so the summed gradient
    is the full batch's), clip the global gradient norm, AdamW step. Every ``eval_interval`` steps the
    validation loss is estimated on ``eval_batches`` batches; at the end it is computed over the whole
    split. With the same seed, model initialisation and data, two runs on CPU give identical losses, and
    a run resumed from a checkpoint ends with bit-identical parameters.

    Under ``torchrun`` (a process group initialised, see :func:`~llmbook.train.distributed.init_distributed`)
    the model is wrapped in DistributedDataParallel and each process trains on its slice of the same
    global batch; rank 0 alone logs, shows progress and writes checkpoints.

    :param model: a language model called as ``model(x, y)`` returning ``(logits, loss)``, with a
        ``config`` that has ``block_size`` and ``to_dict()``; trained in place on its device.
    :param train_ids: 1-D training token stream.
    :param val_ids: 1-D validation token stream.
    :param config: the :class:`TrainConfig`.
    :param progress: show a progress bar on stderr.
    :param log_every: also print a line every this many steps (0: never).
    :param logger: a :class:`~llmbook.train.logger.TrainLogger`: scalars every step; at each evaluation
        the validation loss, weight and gradient histograms, and ``sample(model)`` as text.
    :param sample: a function from the model to a text sample, logged at each evaluation.
    :param checkpoint_dir: where to write training checkpoints (see :mod:`llmbook.train.checkpoint`).
    :param checkpoint_every: write one every this many steps (0: only at the end and at ``stop_at``).
    :param keep_last: checkpoints to keep (0: all).
    :param resume: continue from the newest checkpoint in ``checkpoint_dir`` when there is one.
    :param stop_at: stop after this many steps (writing a checkpoint first), as a job with a time limit
        would; the schedule still runs to ``config.max_steps``, and a later call resumes.
    :returns: the :class:`History` (of the whole run, including steps before a resume).

    Introduced in {doc}`/book/part2/06-training-loop`; accumulation, precision, resuming, logging and
    DDP in Part 4.
    """
    from llmbook.train.checkpoint import load_latest, save_training_state

    train_ids, val_ids = as_ids(train_ids), as_ids(val_ids)
    device = next(model.parameters()).device
    T = config.block_size or model.config.block_size
    rank, world_size = world()
    rows = shard(config.batch_size, rank, world_size)
    per_rank = rows.stop - rows.start
    if per_rank % config.grad_accum_steps:
        raise ValueError(
            f"grad_accum_steps: {config.grad_accum_steps} does not divide the {per_rank} windows per "
            f"process (batch_size {config.batch_size} over {world_size} processes)"
        )
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = build_optimizer(
        model, lr=config.lr, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "float16")
    history = History()
    start = 0
    state_kwargs = dict(
        model=model,
        optimizer=optimizer,
        model_config=model.config.to_dict(),
        train_config=config.to_dict(),
        generator=generator,
        scaler=scaler,
    )
    if checkpoint_dir is not None and resume:
        restored = load_latest(checkpoint_dir, **state_kwargs)
        if restored is not None:
            start, history = restored.step, History.from_dict(restored.history)

    def save(done: int) -> None:
        if rank == 0:
            save_training_state(
                checkpoint_dir,
                step=done,
                history=history.to_dict(),
                keep_last=keep_last,
                **state_kwargs,
            )
        barrier()

    net = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    main = rank == 0
    logger = logger if main else None
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=config.max_steps,
            initial=start,
            desc="train",
            unit="step",
            mininterval=1.0,
            leave=False,
        )

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
        if logger is not None:
            logger.log_scalars(step, {"val/loss": result.loss})
            logger.log_histograms(step, model)
            if sample is not None:
                logger.log_text(step, "sample", sample(model))

    end = config.max_steps if stop_at is None else min(stop_at, config.max_steps)
    model.train()
    for step in range(start, end):
        started = time.perf_counter()
        lr = learning_rate(
            step,
            schedule=config.schedule,
            max_lr=config.lr,
            warmup_steps=config.warmup_steps,
            total_steps=config.max_steps,
            min_lr=config.min_lr,
            decay_fraction=config.decay_fraction,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Every process draws the same global batch, so the data stream does not depend on the number
        # of processes or micro-batches; each then keeps its own rows.
        x, y = random_batch(
            train_ids, config.batch_size, T, generator=generator, bos_id=config.bos_id
        )  # (B, T) each
        n_targets = (y != IGNORE_INDEX).sum()
        x, y = x[rows], y[rows]  # (B / processes, T)
        optimizer.zero_grad(set_to_none=True)
        loss_sum, model_metrics = _accumulate(
            net,
            x,
            y,
            micro_batches=config.grad_accum_steps,
            precision=config.precision,
            scaler=scaler,
            n_targets=int(n_targets),
        )
        scaler.unscale_(optimizer)
        max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(optimizer)
        scaler.update()
        loss_value = float(all_reduce_sum(loss_sum)) / world_size
        seconds = time.perf_counter() - started
        history.train_seconds += seconds
        history.tokens_seen += config.batch_size * T
        history.steps.append(step)
        history.train_loss.append(loss_value)
        history.lr.append(lr)
        for name, value in model_metrics.items():
            history.metrics.setdefault(name, []).append(value)
        if logger is not None:
            logger.log_scalars(
                step,
                {
                    "train/loss": loss_value,
                    "train/lr": lr,
                    "train/grad_norm": float(grad_norm),
                    "train/tokens_per_second": config.batch_size * T / seconds,
                    **({"train/loss_scale": scaler.get_scale()} if scaler.is_enabled() else {}),
                    **model_metrics,
                },
            )
        if not math.isfinite(loss_value):
            if logger is not None:
                logger.flush()  # the step that diverged is the one worth seeing in the logs
            raise FloatingPointError(
                f"loss became {loss_value} at step {step}; lower lr or clip harder"
            )
        done = step + 1
        last = done == config.max_steps
        if config.eval_interval and done % config.eval_interval == 0 and not last:
            estimate(done, full=False)
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}")
        if log_every and main and (step % log_every == 0 or last):
            val = f", val {history.val_loss[-1]:.3f}" if history.val_loss else ""
            print(f"step {step:5d}: train {loss_value:.3f}{val}, lr {lr:.2e}")
        if checkpoint_dir is not None and not last:
            if (checkpoint_every and done % checkpoint_every == 0) or done == end:
                save(done)
    if bar is not None:
        bar.close()
    if end == config.max_steps:
        if not history.eval_steps or history.eval_steps[-1] != config.max_steps:
            estimate(config.max_steps, full=True)
        if checkpoint_dir is not None:
            save(config.max_steps)
    if logger is not None:
        logger.flush()
    return history
