r"""Rollouts: sample completions for a batch of task prompts and record what PPO needs about each token.

For every prompt the policy samples a completion (left-padded batch, KV cache, stopping at
``<|end|>``; :func:`~llmbook.generate.generate`), and the rollout keeps, per completion token $t$:

- ``logps``: $\log\pi_{\theta_\text{old}}(y_t \mid s_t)$ as sampled (the "old" policy of the ratio),
- ``ref_logps``: the same token under the frozen reference,
- ``values``: the critic's $V(s_t)$,

and per completion the reward model's score, the verifier's 0/1 reward and whether it finished.

The old log-probabilities come from the sampler itself. PPO then recomputes them with a full
forward pass in training mode, and the two must agree before the first update, or every ratio
$\pi_\theta/\pi_{\theta_\text{old}}$ starts off 1 and the clipping acts on noise. Dropout left on,
a different temperature, positions shifted by the padding or a bf16 sampler are the usual culprits;
:func:`recompute_matches` is the check.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from llmbook.align.chat import ChatFormat
from llmbook.align.policy import ActorCritic
from llmbook.align.reward_model import RewardModel, pad_id_of
from llmbook.generate import generate
from llmbook.tasks.base import Example, verify


@dataclass
class Rollout:
    """A batch of sampled completions and the per-token quantities PPO trains on.

    Introduced in {doc}`/book/part8/01-policy-and-value`.
    """

    examples: list[Example]
    """The prompts' examples (gold answers for the verifier)."""
    sequences: torch.Tensor
    """``(B, P + N)`` ids: the left-padded prompts, then the completions (padded after ``<|end|>``)."""
    attention_mask: torch.Tensor
    """``(B, P + N)`` bool, True at real tokens."""
    prompt_length: int
    """P: completions start at this column."""
    mask: torch.Tensor
    """``(B, N)`` bool, True at the completion's tokens (up to and including ``<|end|>``)."""
    logps: torch.Tensor
    """``(B, N)`` log-probabilities of the sampled tokens under the sampling policy."""
    ref_logps: torch.Tensor
    """``(B, N)`` log-probabilities of the same tokens under the reference policy."""
    values: torch.Tensor
    """``(B, N)`` the critic's value of the state in which each token was chosen."""
    rm_scores: torch.Tensor
    """``(B,)`` the reward model's score of each (prompt, completion)."""
    verifier: torch.Tensor
    """``(B,)`` 1.0 where the verifier accepts the answer, else 0.0."""
    finished: torch.Tensor
    """``(B,)`` bool, True where the completion ended with ``<|end|>``."""
    texts: list[str]
    """The parsed answers."""

    @property
    def lengths(self) -> torch.Tensor:
        """``(B,)`` completion lengths in tokens (``<|end|>`` included)."""
        return self.mask.sum(dim=1)

    def select(self, index: torch.Tensor | Sequence[int]) -> Rollout:
        """The rows at ``index`` (a minibatch), with the columns trimmed to what they use.

        :param index: row indices.
        :returns: a new :class:`Rollout` sharing nothing it could modify.
        """
        index = torch.as_tensor(index, dtype=torch.long)
        return Rollout(
            examples=[self.examples[i] for i in index.tolist()],
            sequences=self.sequences[index],
            attention_mask=self.attention_mask[index],
            prompt_length=self.prompt_length,
            mask=self.mask[index],
            logps=self.logps[index],
            ref_logps=self.ref_logps[index],
            values=self.values[index],
            rm_scores=self.rm_scores[index],
            verifier=self.verifier[index],
            finished=self.finished[index],
            texts=[self.texts[i] for i in index.tolist()],
        )


def completion_logits(
    model: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits (and, for an :class:`~llmbook.align.policy.ActorCritic`, values) that score each completion token.

    The logits at column ``P + t - 1`` predict completion token ``t``, so one forward pass over the
    whole sequence scores every completion token (teacher forcing).

    :param model: an :class:`~llmbook.align.policy.ActorCritic` or a plain language model.
    :param sequences: ``(B, P + N)`` ids.
    :param attention_mask: ``(B, P + N)`` bool.
    :param prompt_length: P.
    :returns: ``(logits (B, N, V), values (B, N) or None)``.
    """
    P = prompt_length
    if isinstance(model, ActorCritic):
        logits, values = model(sequences, attention_mask)
        return logits[:, P - 1 : -1], values[:, P - 1 : -1]
    logits = model(sequences, attention_mask=attention_mask).logits
    return logits[:, P - 1 : -1], None


def token_logps(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probabilities of given tokens under logits, at the sampling temperature.

    :param logits: ``(B, N, V)``.
    :param tokens: ``(B, N)`` ids.
    :param mask: ``(B, N)`` bool; masked-out positions come out as 0.
    :param temperature: the temperature the tokens were sampled at (> 0).
    :returns: ``(B, N)`` float32.
    :raises ValueError: for a temperature that is not a positive finite number.

    Introduced in {doc}`/book/part8/04-the-loop`.
    """
    temperature = float(temperature)
    if not (0.0 < temperature < float("inf")):
        raise ValueError(f"temperature: must be > 0 and finite, got {temperature!r}")
    logps = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logps.gather(-1, tokens[..., None]).squeeze(-1) * mask


@torch.no_grad()
def rollout(
    actor_critic: ActorCritic,
    reference: nn.Module,
    reward_model: RewardModel,
    chat: ChatFormat,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample one completion per example and score it: the "rollout" and "score" steps of PPO.

    :param actor_critic: the policy and its critic.
    :param reference: the frozen reference policy.
    :param reward_model: the reward model (its chat format and tokenizer are the policy's).
    :param chat: the chat format.
    :param examples: the prompts (with gold answers).
    :param max_new_tokens: the generation budget, ``<|end|>`` included.
    :param temperature: the sampling temperature (> 0: PPO needs a stochastic policy).
    :param generator: random generator for reproducible samples.
    :returns: a :class:`Rollout`.
    :raises ValueError: for no examples or a temperature that is not > 0.

    Introduced in {doc}`/book/part8/01-policy-and-value`.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("examples: need at least one example")
    if not float(temperature) > 0:
        raise ValueError(f"temperature: PPO samples from its policy; need > 0, got {temperature!r}")
    pad = pad_id_of(chat)
    prompts = [chat.prompt_ids(ex.prompt) for ex in examples]
    out = generate(
        actor_critic.policy,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos_id=chat.end_id,
        pad_id=pad,
        generator=generator,
    )
    device = next(actor_critic.parameters()).device
    sequences, attention = out.sequences.to(device), out.attention_mask.to(device)
    P, mask = out.prompt_length, out.completion_mask.to(device)
    was_training = actor_critic.training
    actor_critic.eval()
    try:
        _, values = completion_logits(actor_critic, sequences, attention, P)
    finally:
        actor_critic.train(was_training)
    ref_logits, _ = completion_logits(reference, sequences, attention, P)
    tokens = sequences[:, P:]
    ref_logps = token_logps(ref_logits, tokens, mask, temperature=temperature)
    rm_was_training = reward_model.training
    reward_model.eval()
    try:
        rm_scores = reward_model(sequences, attention).float()
    finally:
        reward_model.train(rm_was_training)
    parsed = [chat.parse(row) for row in out.completions]
    verifier = torch.tensor([verify(ex, p.text) for ex, p in zip(examples, parsed)])
    finished = torch.tensor([p.finished for p in parsed], dtype=torch.bool)
    return Rollout(
        examples=examples,
        sequences=sequences,
        attention_mask=attention,
        prompt_length=P,
        mask=mask,
        logps=out.logps.to(device),
        ref_logps=ref_logps,
        values=values * mask,
        rm_scores=rm_scores,
        verifier=verifier.to(device),
        finished=finished.to(device),
        texts=[p.text for p in parsed],
    )


def recompute_matches(
    actor_critic: nn.Module,
    batch: Rollout | GroupRollout,
    *,
    temperature: float = 1.0,
    atol: float = 1e-4,
) -> float:
    """Recompute the sampled tokens' log-probabilities in training mode; return the largest gap.

    :param actor_critic: the policy (unchanged since it sampled ``batch``): an
        :class:`~llmbook.align.policy.ActorCritic` or a plain language model (GRPO).
    :param batch: the rollout.
    :param temperature: the sampling temperature.
    :param atol: the tolerance.
    :returns: the largest absolute difference between recomputed and sampled log-probabilities.
    :raises AssertionError: when it exceeds ``atol`` (the classic silent PPO bug: see the module).

    Introduced in {doc}`/book/part8/01-policy-and-value`.
    """
    was_training = actor_critic.training
    actor_critic.train()
    try:
        with torch.no_grad():
            logits, _ = completion_logits(
                actor_critic, batch.sequences, batch.attention_mask, batch.prompt_length
            )
    finally:
        actor_critic.train(was_training)
    tokens = batch.sequences[:, batch.prompt_length :]
    logps = token_logps(logits, tokens, batch.mask, temperature=temperature)
    gap = float((logps - batch.logps).abs().max()) if batch.mask.any() else 0.0
    if gap > atol:
        raise AssertionError(
            f"recomputed log-probabilities differ from the sampled ones by {gap:.2e} (> {atol}): "
            "dropout, temperature, positions or precision differ between sampling and training"
        )
    return gap


@dataclass
class GroupRollout:
    """``k`` sampled completions for each of ``G`` prompts, in adjacent rows: what GRPO trains on.

    Introduced in {doc}`/book/part9/01-group-baseline`.
    """

    examples: list[Example]
    """One example per row (each prompt's example repeated ``group_size`` times)."""
    group_size: int
    """k: rows ``g*k .. g*k + k - 1`` answer prompt ``g``."""
    sequences: torch.Tensor
    """``(G*k, P + N)`` ids: the left-padded prompts, then the completions."""
    attention_mask: torch.Tensor
    """``(G*k, P + N)`` bool, True at real tokens."""
    prompt_length: int
    """P: completions start at this column."""
    mask: torch.Tensor
    """``(G*k, N)`` bool, True at the completion's tokens (up to and including ``<|end|>``)."""
    logps: torch.Tensor
    """``(G*k, N)`` log-probabilities of the sampled tokens under the sampling policy."""
    ref_logps: torch.Tensor
    """``(G*k, N)`` log-probabilities of the same tokens under the reference policy."""
    verifier: torch.Tensor
    """``(G*k,)`` 1.0 where the verifier accepts the answer, else 0.0."""
    rm_scores: torch.Tensor | None
    """``(G*k,)`` the reward model's scores, or None when no reward model scored."""
    finished: torch.Tensor
    """``(G*k,)`` bool, True where the completion ended with ``<|end|>``."""
    texts: list[str]
    """The parsed answers."""
    timings: dict = field(default_factory=dict)
    """Wall seconds of the ``"generate"`` and ``"score"`` (reference pass, verifier, reward model)
    steps that produced the rollout."""

    @property
    def groups(self) -> int:
        """G, the number of prompts."""
        return self.sequences.size(0) // self.group_size

    @property
    def lengths(self) -> torch.Tensor:
        """``(G*k,)`` completion lengths in tokens (``<|end|>`` included)."""
        return self.mask.sum(dim=1)

    def select_groups(self, groups: torch.Tensor | Sequence[int]) -> GroupRollout:
        """The rows of the given groups, in the given order (each group's rows stay adjacent).

        :param groups: group indices.
        :returns: a new :class:`GroupRollout`.
        """
        k = self.group_size
        groups = torch.as_tensor(groups, dtype=torch.long).reshape(-1)
        rows = (groups[:, None] * k + torch.arange(k)[None, :]).reshape(-1)
        idx = rows.tolist()
        dev = self.sequences.device
        return GroupRollout(
            examples=[self.examples[i] for i in idx],
            group_size=k,
            sequences=self.sequences[rows.to(dev)],
            attention_mask=self.attention_mask[rows.to(dev)],
            prompt_length=self.prompt_length,
            mask=self.mask[rows.to(dev)],
            logps=self.logps[rows.to(dev)],
            ref_logps=self.ref_logps[rows.to(dev)],
            verifier=self.verifier[rows.to(dev)],
            rm_scores=None if self.rm_scores is None else self.rm_scores[rows.to(dev)],
            finished=self.finished[rows.to(dev)],
            texts=[self.texts[i] for i in idx],
            timings=dict(self.timings),
        )


@torch.no_grad()
def sample_groups(
    policy: nn.Module,
    reference: nn.Module,
    chat: ChatFormat,
    examples: Sequence[Example],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    reward_model: RewardModel | None = None,
) -> GroupRollout:
    """Sample ``group_size`` completions per prompt in one batched, KV-cached generation, and score them.

    Each prompt is repeated ``group_size`` times in adjacent rows, so one call of
    :func:`~llmbook.generate.generate` samples every group; the rows then get the reference's
    log-probabilities of the sampled tokens (one forward pass), the verifier's 0/1 reward and,
    when a reward model is given, its score.

    :param policy: the language model being trained (a :class:`~llmbook.model.gpt.GPT`).
    :param reference: the frozen reference policy.
    :param chat: the chat format.
    :param examples: one example per prompt (with its gold answer).
    :param group_size: completions per prompt, ``>= 1``.
    :param max_new_tokens: the generation budget, ``<|end|>`` included.
    :param temperature: the sampling temperature (> 0: a group of identical greedy answers
        teaches nothing).
    :param generator: random generator for reproducible samples.
    :param reward_model: optional reward model to score every completion.
    :returns: a :class:`GroupRollout`.
    :raises ValueError: for no examples, a ``group_size`` below 1 or a temperature that is not > 0.

    Introduced in {doc}`/book/part9/01-group-baseline`.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("examples: need at least one example")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected a positive integer, got {group_size!r}")
    if not float(temperature) > 0:
        raise ValueError(
            f"temperature: GRPO samples from its policy; need > 0, got {temperature!r}"
        )
    rows = [ex for ex in examples for _ in range(group_size)]
    pad = pad_id_of(chat)
    prompt_ids = [chat.prompt_ids(ex.prompt) for ex in examples]
    t0 = time.perf_counter()
    out = generate(  # in eval mode, restored afterwards
        policy,
        [ids for ids in prompt_ids for _ in range(group_size)],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos_id=chat.end_id,
        pad_id=pad,
        generator=generator,
    )
    t1 = time.perf_counter()
    device = next(policy.parameters()).device
    sequences, attention = out.sequences.to(device), out.attention_mask.to(device)
    P, mask = out.prompt_length, out.completion_mask.to(device)
    tokens = sequences[:, P:]
    ref_logits, _ = completion_logits(reference, sequences, attention, P)
    ref_logps = token_logps(ref_logits, tokens, mask, temperature=temperature)
    rm_scores = None
    if reward_model is not None:
        rm_was_training = reward_model.training
        reward_model.eval()
        try:
            rm_scores = reward_model(sequences, attention).float()
        finally:
            reward_model.train(rm_was_training)
    parsed = [chat.parse(row) for row in out.completions]
    verifier = torch.tensor([float(verify(ex, p.text)) for ex, p in zip(rows, parsed)])
    finished = torch.tensor([p.finished for p in parsed], dtype=torch.bool)
    return GroupRollout(
        examples=rows,
        group_size=group_size,
        sequences=sequences,
        attention_mask=attention,
        prompt_length=P,
        mask=mask,
        logps=out.logps.to(device),
        ref_logps=ref_logps,
        verifier=verifier.to(device),
        rm_scores=rm_scores,
        finished=finished.to(device),
        texts=[p.text for p in parsed],
        timings={"generate": t1 - t0, "score": time.perf_counter() - t1},
    )
