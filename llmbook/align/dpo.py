r"""Training a policy with DPO on preference pairs, and watching what it does to the policy.

DPO needs no reward model and no sampling during training: each step scores a batch of pairs, chosen
and rejected rows stacked in one forward pass, with the policy, and compares their log-probabilities
with the reference model's (:mod:`~llmbook.align.dpo_loss`). The reference log-probabilities of every
training and held-out pair are computed once, before the first step. What a run records
(:class:`DPOHistory`), at step 0 and every ``eval_interval`` steps:

- the implicit-reward accuracy on held-out pairs (does $\hat r$ rank the chosen answer higher?);
- how far the policy's log-probabilities of the held-out chosen and rejected answers moved from the
  reference's (both may fall: the loss only asks the gap to grow);
- $\mathrm{KL}(\pi_\theta\|\pi_\text{ref})$ per answer, summed over the tokens of answers the policy
  samples for held-out prompts, each token's divergence computed exactly over the vocabulary;
- the verifier's accuracy of the policy's greedy answers to held-out prompts: the number that says
  whether the policy got better at the tasks, which no preference metric can say.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from llmbook.align.chat import ChatFormat
from llmbook.align.dpo_loss import DPO_LOSSES, dpo_loss
from llmbook.align.evaluate import complete, default_max_new_tokens
from llmbook.align.history import HistoryRecord
from llmbook.align.kl import categorical_kl
from llmbook.align.policy import reference_model
from llmbook.align.preference import PREFERENCE_TASKS, REJECTION_KINDS, PreferencePair, pair_stats
from llmbook.align.reward import check_pair_fields, reward_data, sft_samples
from llmbook.align.reward_model import collate, pad_id_of
from llmbook.model.config import check_field_values, config_from_dict
from llmbook.tasks import generate_examples, verify
from llmbook.tasks.base import Example
from llmbook.train.optim import build_optimizer, check_optimizer_fields
from llmbook.train.schedule import learning_rate


@dataclass(kw_only=True)
class DPOConfig:
    """The preference data, the loss and the optimiser of a DPO run.

    Every field is checked on construction; a bad value raises a :class:`ValueError` whose message
    starts with the field name (NaN and infinity included).

    Introduced in {doc}`/book/part10/01-dpo`.
    """

    tasks: list = field(default_factory=lambda: list(PREFERENCE_TASKS))
    """The tasks the prompts come from (see :data:`llmbook.tasks.TASKS`)."""
    kinds: list = field(default_factory=lambda: list(REJECTION_KINDS))
    """The rejection kinds (see :data:`~llmbook.align.preference.REJECTION_KINDS`); ``"sample"``
    takes the starting model's own wrong answers."""
    length_bias: float = 0.5
    """Among pairs of unequal length, the share whose chosen answer is the longer (0.5: clean)."""
    equal_share: float = 0.1
    """The share of pairs whose answers are equally long."""
    loss: str = "sigmoid"
    """One of :data:`~llmbook.align.dpo_loss.DPO_LOSSES`."""
    beta: float = 0.1
    r"""$\beta$, the implicit KL coefficient."""
    label_smoothing: float = 0.0
    """The label-flip rate of the ``"cdpo"`` loss, in [0, 0.5)."""
    sft_coef: float = 0.0
    """Weight of the chosen answers' negative log-likelihood per token added to the loss (RPO)."""
    max_steps: int = 200
    """Optimizer steps; each sees ``batch_size`` pairs."""
    rounds: int = 1
    """Rounds of fresh pairs (``max_steps`` must divide into them): 1 is offline DPO on the starting
    model's mistakes; more is iterative DPO, each round on the policy's newest mistakes."""
    batch_size: int = 32
    """Pairs per step."""
    lr: float = 1e-4
    """Peak learning rate."""
    min_lr: float = 1e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 10
    """Steps of linear warmup."""
    weight_decay: float = 0.0
    """Decoupled weight decay on matrices."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.99
    """Adam's second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    eval_interval: int = 50
    """Steps between evaluations (also at step 0 and at the end); 0: only at 0 and the end."""
    eval_pairs: int = 256
    """Held-out pairs (validation split) for the implicit-reward accuracy and the log-prob drift."""
    eval_examples: int = 256
    """Held-out prompts (test split) for the verifier accuracy and the KL."""
    sample_temperature: float = 1.0
    """Temperature of the model samples behind the ``"sample"`` kind."""
    sample_examples: int = 4096
    """How many examples get the starting model's sampled answers as ``"sample"`` candidates."""
    seed: int = 0
    """Seed of the pairs, the order and the evaluation samples."""

    def __post_init__(self) -> None:
        check_field_values(type(self), {f.name: getattr(self, f.name) for f in fields(self)})
        check_pair_fields(self)
        if self.loss not in DPO_LOSSES:
            raise ValueError(f"loss: must be one of {DPO_LOSSES}, got {self.loss!r}")
        if not self.beta > 0:
            raise ValueError(f"beta: must be > 0, got {self.beta!r}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing: must be in [0, 0.5), got {self.label_smoothing!r}")
        if self.label_smoothing > 0 and self.loss != "cdpo":
            raise ValueError("label_smoothing: only the 'cdpo' loss smooths labels")
        if not self.sft_coef >= 0:
            raise ValueError(f"sft_coef: must be >= 0, got {self.sft_coef!r}")
        for name in ("warmup_steps", "eval_interval", "sample_examples", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        for name in ("max_steps", "batch_size", "eval_pairs", "eval_examples", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be a positive integer, got {getattr(self, name)}")
        if not self.sample_temperature > 0:
            raise ValueError(f"sample_temperature: must be > 0, got {self.sample_temperature!r}")
        if self.max_steps % self.rounds:
            raise ValueError(
                f"rounds: {self.rounds} rounds do not divide max_steps {self.max_steps} evenly"
            )
        check_optimizer_fields(self)

    @property
    def steps_per_round(self) -> int:
        """Optimizer steps in each round of pairs."""
        return self.max_steps // self.rounds

    def to_dict(self) -> dict:
        """The config as a JSON-serialisable dict.

        :returns: field name to value.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DPOConfig:
        """Build a config from a dict; unknown keys and wrong types raise naming the field.

        :param data: field name to value.
        :returns: the config.
        """
        return config_from_dict(cls, data)


@dataclass
class DPOHistory(HistoryRecord):
    """What a DPO run measured: per step on the training batch, and at each evaluation.

    Introduced in {doc}`/book/part10/01-dpo`.
    """

    steps: list[int] = field(default_factory=list)
    """The optimizer steps, from 0."""
    train_loss: list[float] = field(default_factory=list)
    """The batch loss at each step."""
    train_accuracy: list[float] = field(default_factory=list)
    """The batch's implicit-reward accuracy at each step."""
    margin: list[float] = field(default_factory=list)
    r"""The batch's mean implicit-reward gap $\hat r_c - \hat r_r$ at each step."""
    eval_steps: list[int] = field(default_factory=list)
    """The steps at which the evaluations ran (before that step's update)."""
    val_accuracy: list[float] = field(default_factory=list)
    """Implicit-reward accuracy on the held-out pairs."""
    chosen_shift: list[float] = field(default_factory=list)
    r"""Mean $\log\pi_\theta(y_c) - \log\pi_\text{ref}(y_c)$ over the held-out pairs."""
    rejected_shift: list[float] = field(default_factory=list)
    r"""Mean $\log\pi_\theta(y_r) - \log\pi_\text{ref}(y_r)$ over the held-out pairs."""
    kl: list[float] = field(default_factory=list)
    """Mean KL to the reference per sampled answer (nats), on held-out prompts."""
    verifier_accuracy: list[float] = field(default_factory=list)
    """The verifier's accuracy of greedy answers to the held-out prompts."""
    train_seconds: float = 0.0
    """Wall time in optimizer steps."""
    data_seconds: float = 0.0
    """Wall time building the pairs and their reference log-probabilities."""
    eval_seconds: float = 0.0
    """Wall time of the evaluations."""
    data: dict = field(default_factory=dict)
    """:func:`~llmbook.align.preference.pair_stats` of the training pairs."""


def answer_rows(
    chat: ChatFormat, prompts: Sequence[str], answers: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render one-turn conversations and pad them on the right, with the mask of the answers' ids.

    :param chat: the chat format.
    :param prompts: the user prompts.
    :param answers: one answer per prompt.
    :returns: ``(input_ids (B, T), attention_mask (B, T), answer_mask (B, T))``; ``answer_mask`` is
        True at the answer's ids and its closing ``<|end|>`` (the SFT loss mask).
    :raises ValueError: when the lists differ in length or are empty.

    Introduced in {doc}`/book/part10/01-dpo`.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"answers: expected one per prompt ({len(prompts)}), got {len(answers)}")
    rendered = [chat.render_example(p, a) for p, a in zip(prompts, answers)]
    ids, attention_mask = collate([r[0] for r in rendered], pad_id=pad_id_of(chat))
    answer_mask = torch.zeros_like(attention_mask)
    for b, (_, mask) in enumerate(rendered):
        answer_mask[b, : len(mask)] = torch.tensor(mask, dtype=torch.bool)
    return ids, attention_mask, answer_mask


def sequence_logps(
    model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor, answer_mask: torch.Tensor
) -> torch.Tensor:
    r"""$\log\pi(y|x)$ of each row: the log-probabilities of its answer ids, summed.

    Teacher forcing: the logits at position $t-1$ score id $t$, so one forward pass scores every
    answer id. Differentiable; call it under ``torch.no_grad()`` for a reference.

    :param model: the language model.
    :param ids: ``(B, T)`` ids.
    :param attention_mask: ``(B, T)`` bool, True at real ids.
    :param answer_mask: ``(B, T)`` bool, True at the ids to score (never at position 0).
    :returns: ``(B,)`` float32.

    Introduced in {doc}`/book/part10/01-dpo`.
    """
    device = next(model.parameters()).device
    ids, attention_mask = ids.to(device), attention_mask.to(device)
    logits = model(ids, attention_mask=attention_mask).logits[:, :-1]  # (B, T-1, V)
    logps = torch.log_softmax(logits.float(), dim=-1)
    logps = logps.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return (logps * answer_mask[:, 1:].to(device)).sum(-1)


def pair_logps(
    model: nn.Module, chat: ChatFormat, pairs: Sequence[PreferencePair]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's log-probabilities of each pair's chosen and rejected answers, in one forward pass.

    :param model: the language model.
    :param chat: its chat format.
    :param pairs: ``N`` pairs.
    :returns: ``(chosen (N,), rejected (N,))``, differentiable.

    Introduced in {doc}`/book/part10/01-dpo`.
    """
    prompts = [p.prompt for p in pairs] * 2
    ids, attention, answer = answer_rows(
        chat, prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs]
    )
    return sequence_logps(model, ids, attention, answer).chunk(2)


def answer_lengths(chat: ChatFormat, pairs: Sequence[PreferencePair]) -> torch.Tensor:
    """How many ids each pair's chosen and rejected answers score (their ``<|end|>`` included).

    :param chat: the chat format.
    :param pairs: the pairs.
    :returns: ``(N, 2)`` float32: chosen, rejected.

    Introduced in {doc}`/book/part10/01-dpo`.
    """
    counts = [
        [sum(chat.render_example(p.prompt, answer)[1]) for answer in (p.chosen, p.rejected)]
        for p in pairs
    ]
    return torch.tensor(counts, dtype=torch.float32).reshape(-1, 2)


@torch.no_grad()
def reference_logps(
    model: nn.Module, chat: ChatFormat, pairs: Sequence[PreferencePair], *, batch_size: int = 128
) -> torch.Tensor:
    """The log-probabilities of every pair's answers under a model, without gradient, in eval mode.

    :param model: the reference model.
    :param chat: its chat format.
    :param pairs: the pairs.
    :param batch_size: pairs per forward pass.
    :returns: ``(N, 2)``: chosen, rejected; on the CPU.

    Introduced in {doc}`/book/part10/01-dpo`.
    """
    was_training = model.training
    model.eval()
    try:
        out = [
            torch.stack(pair_logps(model, chat, pairs[i : i + batch_size]), dim=1).cpu()
            for i in range(0, len(pairs), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)


@torch.no_grad()
def sampled_kl(
    policy: nn.Module,
    reference: nn.Module,
    chat: ChatFormat,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    seed: int = 0,
) -> float:
    r"""Mean $\mathrm{KL}(\pi_\theta\|\pi_\text{ref})$ of the answers the policy samples for the prompts.

    Each prompt gets one answer sampled at temperature 1; along it, every position's divergence is
    computed exactly over the vocabulary (:func:`~llmbook.align.kl.categorical_kl`) and summed over
    the answer's ids: an estimate of the sequence-level KL with the token-sampling noise removed.

    :param policy: the trained policy.
    :param reference: the reference model.
    :param chat: their chat format.
    :param prompts: held-out prompts.
    :param max_new_tokens: the generation budget.
    :param seed: seed of the sampling.
    :returns: nats per answer.

    Introduced in {doc}`/book/part10/01-dpo`.
    """
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    answers = [
        row[0].text
        for row in complete(
            policy,
            chat,
            prompts,
            temperature=1.0,
            max_new_tokens=max_new_tokens,
            generator=generator,
        )
    ]
    ids, attention, answer = answer_rows(chat, prompts, answers)
    ids, attention = ids.to(device), attention.to(device)
    states = [policy.training, reference.training]
    policy.eval()
    reference.eval()
    try:
        p = policy(ids, attention_mask=attention).logits[:, :-1].float()  # (B, T-1, V)
        q = reference(ids, attention_mask=attention).logits[:, :-1].float()
    finally:
        policy.train(states[0])
        reference.train(states[1])
    per_token = categorical_kl(p, q) * answer[:, 1:].to(device)  # (B, T-1)
    return float(per_token.sum(-1).mean())


def _evaluate(policy, reference, chat, val_pairs, val_ref, examples, config, history, step):
    started = time.perf_counter()
    policy.eval()
    with torch.no_grad():
        logps = reference_logps(policy, chat, val_pairs)  # (N, 2)
    shift = logps - val_ref
    history.eval_steps.append(step)
    history.val_accuracy.append(float((shift[:, 0] > shift[:, 1]).float().mean()))
    history.chosen_shift.append(float(shift[:, 0].mean()))
    history.rejected_shift.append(float(shift[:, 1].mean()))
    budget = default_max_new_tokens(chat, examples)
    prompts = [e.prompt for e in examples]
    history.kl.append(
        sampled_kl(policy, reference, chat, prompts, max_new_tokens=budget, seed=config.seed)
    )
    answers = complete(policy, chat, prompts, max_new_tokens=budget)
    correct = [verify(e, a[0].text) for e, a in zip(examples, answers)]
    history.verifier_accuracy.append(sum(correct) / len(correct))
    policy.train()
    history.eval_seconds += time.perf_counter() - started


def _round_data(policy, reference, chat, config, k: int, pairs, samples_for):
    # The pairs of round k with their reference log-probabilities (and lengths, when the loss needs
    # them), in a seeded shuffled order.
    if pairs is None:
        if samples_for is None and "sample" in config.kinds:
            samples_for = sft_samples(
                policy,
                chat,
                temperature=config.sample_temperature,
                seed=config.seed * 1000 + k,
                limit=config.sample_examples,
            )
        n = config.steps_per_round * config.batch_size
        try:
            pairs = reward_data(
                config, n, split="train", seed=config.seed * 1000 + k, samples_for=samples_for
            )
        except ValueError as error:
            # A policy that stopped finishing its answers (or answers every prompt right) leaves
            # no wrong answers to pair with the gold ones.
            raise ValueError(f"rounds: round {k} could not build its pairs: {error}") from error
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs: need at least one pair")
    random.Random(config.seed * 1000 + k).shuffle(pairs)
    ref = reference_logps(reference, chat, pairs)  # (N, 2)
    needs_lengths = config.loss == "ipo" or config.sft_coef > 0
    return pairs, ref, answer_lengths(chat, pairs) if needs_lengths else None


def train_dpo(
    policy: nn.Module,
    chat: ChatFormat,
    config: DPOConfig,
    *,
    pairs: Sequence[PreferencePair] | None = None,
    val_pairs: Sequence[PreferencePair] | None = None,
    examples: Sequence[Example] | None = None,
    samples_for=None,
    progress: bool = True,
) -> DPOHistory:
    """Train a policy with DPO, in place; its starting weights are the frozen reference.

    The run has ``config.rounds`` rounds of ``max_steps / rounds`` steps. Each round starts by
    building its pairs, ``steps_per_round * batch_size`` of the train split
    (:func:`~llmbook.align.reward.reward_data`), whose ``"sample"`` rejections the policy writes *as
    it is at that moment*: one round is offline DPO on the starting model's mistakes, several rounds
    are iterative (online) DPO, which keeps answering the policy's newest mistakes. The reference
    log-probabilities of a round's pairs are computed before its first step. Each step takes the next
    ``batch_size`` pairs, scores chosen and rejected answers in one forward pass, and takes an AdamW
    step on :func:`~llmbook.align.dpo_loss.dpo_loss`, with warmup, one cosine decay over the whole
    run, and gradient clipping. Deterministic for a seed on CPU.

    :param policy: the language model to train (the SFT model), on its device.
    :param chat: its chat format.
    :param config: the :class:`DPOConfig`.
    :param pairs: fixed training pairs instead of building them (one round only; the steps cycle
        through them).
    :param val_pairs: held-out pairs (default: ``eval_pairs`` of the validation split, with the
        starting policy's own mistakes for the ``"sample"`` kind).
    :param examples: held-out prompts for the verifier and the KL (default: ``eval_examples`` of the
        test split of the config's tasks).
    :param samples_for: a fixed sampler behind the ``"sample"`` kind (see
        :func:`llmbook.align.reward.sft_samples`; default: the policy's own samples, fresh each round).
    :param progress: show a progress bar on stderr.
    :returns: the :class:`DPOHistory`.
    :raises ValueError: naming ``pairs`` when fixed pairs meet several rounds, or an empty input.
    :raises FloatingPointError: when the loss stops being finite.

    Introduced in {doc}`/book/part10/01-dpo`.
    """
    if pairs is not None and config.rounds > 1:
        raise ValueError(f"pairs: fixed pairs cannot be rebuilt for {config.rounds} rounds")
    history = DPOHistory()
    started = time.perf_counter()
    reference = reference_model(policy)
    if val_pairs is None:
        sampler = samples_for
        if sampler is None and "sample" in config.kinds:
            sampler = sft_samples(
                reference,
                chat,
                temperature=config.sample_temperature,
                seed=config.seed + 1,
                limit=config.sample_examples,
            )
        val_pairs = reward_data(
            config, config.eval_pairs, split="val", seed=config.seed + 1, samples_for=sampler
        )
    if examples is None:
        examples = generate_examples(
            config.tasks, config.eval_examples, split="test", seed=config.seed + 2
        )
    val_pairs, examples = list(val_pairs), list(examples)
    if not val_pairs or not examples:
        raise ValueError("val_pairs, examples: each needs at least one item")
    val_ref = reference_logps(reference, chat, val_pairs)
    history.data_seconds = time.perf_counter() - started
    device = next(policy.parameters()).device
    torch.manual_seed(config.seed)
    optimizer = build_optimizer(
        policy, lr=config.lr, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)
    )
    params = [p for p in policy.parameters() if p.requires_grad]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, desc="dpo", unit="step", mininterval=1.0, leave=False)
    policy.train()
    seen_pairs: list[PreferencePair] = []
    for step in range(config.max_steps):
        if step == 0 or (config.eval_interval and step % config.eval_interval == 0):
            _evaluate(policy, reference, chat, val_pairs, val_ref, examples, config, history, step)
        if step % config.steps_per_round == 0:
            t0 = time.perf_counter()
            k = step // config.steps_per_round
            round_pairs, train_ref, lengths = _round_data(
                policy, reference, chat, config, k, pairs, samples_for
            )
            policy.train()
            seen_pairs += round_pairs
            history.data_seconds += time.perf_counter() - t0
            n, first = len(round_pairs), step
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
        index = [((step - first) * config.batch_size + i) % n for i in range(config.batch_size)]
        chosen, rejected = pair_logps(policy, chat, [round_pairs[i] for i in index])
        ref = train_ref[index].to(device)
        loss, metrics = dpo_loss(
            chosen,
            rejected,
            ref[:, 0],
            ref[:, 1],
            beta=config.beta,
            loss=config.loss,
            label_smoothing=config.label_smoothing,
            chosen_lengths=None if lengths is None else lengths[index, 0].to(device),
            rejected_lengths=None if lengths is None else lengths[index, 1].to(device),
            sft_coef=config.sft_coef,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip or float("inf"))
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
    history.data = pair_stats(seen_pairs)
    _evaluate(
        policy, reference, chat, val_pairs, val_ref, examples, config, history, config.max_steps
    )
    policy.eval()
    return history
