r"""The GRPO loop: sample a group of completions per prompt, score them, and update the policy alone.

One *iteration* takes ``prompts_per_batch`` prompts and

1. **samples groups**: ``group_size`` completions per prompt in one batched generation, with the
   reference's log-probabilities of the sampled tokens
   (:func:`~llmbook.align.rollout.sample_groups`);
2. **scores**: the verifier (and optionally the reward model) gives one reward per completion;
   with ``dynamic_sampling``, groups whose rewards are all equal are dropped and more prompts are
   sampled to refill the batch;
3. computes **group-relative advantages**: each reward minus its group's mean, optionally divided
   by the standard deviation (:func:`~llmbook.align.advantages.group_advantages`), one per completion;
4. **updates** for ``updates_per_batch`` passes over the batch in minibatches with the clipped loss
   and its $\beta\,k_3$ KL term (:func:`~llmbook.align.grpo_loss.grpo_loss`), against the
   log-probabilities stored at sampling time.

There is no critic and no per-token reward: the KL lives in the loss, not in the reward.
Every ``eval_interval`` iterations the policy answers held-out prompts greedily and the verifier
grades them. A run is seeded (prompts, samples, minibatch order) and resumes from its checkpoints to
the same numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from llmbook.align.advantages import group_advantages, zero_variance_groups
from llmbook.align.chat import ChatFormat
from llmbook.align.evaluate import default_max_new_tokens
from llmbook.align.grpo_config import MAX_SAMPLING_ROUNDS, GRPOConfig
from llmbook.align.grpo_loss import grpo_loss
from llmbook.align.history import HistoryRecord
from llmbook.align.normalize import masked_mean
from llmbook.align.ppo import evaluate_policy, ppo_examples
from llmbook.align.ppo_loss import entropy_from_logits
from llmbook.align.reward_model import RewardModel, pad_id_of
from llmbook.align.reward_signal import sequence_scores
from llmbook.align.rollout import (
    GroupRollout,
    completion_logits,
    recompute_matches,
    sample_groups,
    token_logps,
)
from llmbook.tasks.base import Example
from llmbook.train.checkpoint import load_latest, save_training_state

TRAIN_KEYS = (
    "reward",
    "verifier",
    "sampled_verifier",
    "reward_std",
    "zero_variance",
    "groups",
    "kl",
    "kl_k3",
    "entropy",
    "loss",
    "policy_loss",
    "clipfrac",
    "clipfrac_low",
    "clipfrac_high",
    "approx_kl",
    "grad_norm",
    "length",
    "finished",
    "sampled_tokens",
    "sampling_rounds",
    "generate_seconds",
    "score_seconds",
    "update_seconds",
)
"""What :class:`GRPOHistory` records for every iteration (the TensorBoard tags are ``grpo/<key>``)."""


@dataclass
class GRPOHistory(HistoryRecord):
    """What a GRPO run measured: one entry per iteration, and the held-out evaluations.

    Introduced in {doc}`/book/part9/05-the-loop`.
    """

    iterations: list[int] = field(default_factory=list)
    """The iterations, from 0."""
    train: dict = field(default_factory=lambda: {k: [] for k in TRAIN_KEYS})
    """Per-iteration values keyed by :data:`TRAIN_KEYS`: over the groups trained on, the mean reward,
    verifier accuracy and within-group reward standard deviation (with dynamic sampling these are
    biased by the filter; when no group was kept, the reward and accuracy are those of the groups
    sampled); the verifier accuracy over every completion sampled (all rounds: the policy's own
    accuracy at temperature 1); the share of *sampled* groups with
    all-equal rewards and the number of groups trained on; the KL to the reference per sequence
    ($k_1$ summed over tokens, as PPO's history) and the mean $k_3$ per token of the loss; over the
    optimizer steps, the mean entropy per token, loss, surrogate, clip fractions, approx-KL and
    gradient norm; the mean completion length and share finished; the completion tokens sampled
    (every round of dynamic sampling included) and the rounds; the wall time of generation, of
    scoring (reference pass, verifier, reward model) and of the update."""
    eval_iterations: list[int] = field(default_factory=list)
    """When held-out evaluations ran (the iteration's updates not yet applied: 0 is the start)."""
    eval: dict = field(default_factory=lambda: {"accuracy": [], "length": []})
    """Greedy answers to held-out prompts: verifier accuracy, length in tokens (and ``rm_score``,
    the reward model's mean score, when the run has a reward model)."""
    seconds: float = 0.0
    """Wall time of the iterations (evaluations excluded)."""
    eval_seconds: float = 0.0
    """Wall time of the evaluations."""


def group_rewards(batch: GroupRollout, config: GRPOConfig) -> torch.Tensor:
    """One reward per completion: the verifier (and reward model) weighted as the config says.

    :param batch: the sampled groups.
    :param config: the :class:`~llmbook.align.grpo_config.GRPOConfig`.
    :returns: ``(G*k,)`` float32 rewards.
    :raises ValueError: when ``rm_weight > 0`` and the batch has no reward-model scores.

    Introduced in {doc}`/book/part9/01-group-baseline`.
    """
    if config.rm_weight > 0 and batch.rm_scores is None:
        raise ValueError("rm_weight: > 0 needs a reward model to score the completions")
    rm = batch.rm_scores if batch.rm_scores is not None else torch.zeros_like(batch.verifier)
    return sequence_scores(
        rm,
        batch.verifier,
        batch.finished,
        rm_weight=config.rm_weight,
        verifier_weight=config.verifier_weight,
        missing_end_penalty=config.missing_end_penalty,
    )


def concat_groups(parts: list[GroupRollout], pad_id: int) -> GroupRollout:
    """Join group rollouts of different widths: prompts re-padded on the left, completions on the right.

    Positions come from the attention mask, so extra left padding changes no log-probability.

    :param parts: rollouts with the same ``group_size``.
    :param pad_id: the id written into new padding.
    :returns: one :class:`GroupRollout` with the groups of all parts, in order.
    :raises ValueError: for no parts or different group sizes.
    """
    if not parts:
        raise ValueError("parts: need at least one rollout")
    if len({p.group_size for p in parts}) != 1:
        raise ValueError("parts: the group sizes differ")
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_length for p in parts)
    N = max(p.mask.size(1) for p in parts)

    def widen(p: GroupRollout, name: str, left: int, right: int, value) -> torch.Tensor:
        t = getattr(p, name)
        return torch.nn.functional.pad(t, (left, right), value=value)

    cols = {n: [] for n in ("sequences", "attention_mask", "mask", "logps", "ref_logps")}
    for p in parts:
        left, right = P - p.prompt_length, N - p.mask.size(1)
        cols["sequences"].append(widen(p, "sequences", left, right, pad_id))
        cols["attention_mask"].append(widen(p, "attention_mask", left, right, False))
        for name in ("mask", "logps", "ref_logps"):
            cols[name].append(widen(p, name, 0, right, False if name == "mask" else 0.0))
    has_rm = all(p.rm_scores is not None for p in parts)
    return GroupRollout(
        examples=[e for p in parts for e in p.examples],
        group_size=parts[0].group_size,
        prompt_length=P,
        verifier=torch.cat([p.verifier for p in parts]),
        rm_scores=torch.cat([p.rm_scores for p in parts]) if has_rm else None,
        finished=torch.cat([p.finished for p in parts]),
        texts=[t for p in parts for t in p.texts],
        timings={k: sum(p.timings.get(k, 0.0) for p in parts) for k in ("generate", "score")},
        **{name: torch.cat(ts) for name, ts in cols.items()},
    )


def _rows(batch: GroupRollout, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    idx = idx.to(batch.sequences.device)
    return {
        "sequences": batch.sequences[idx],
        "attention_mask": batch.attention_mask[idx],
        "mask": batch.mask[idx],
        "logps": batch.logps[idx],
        "ref_logps": batch.ref_logps[idx],
    }


def _update(policy, optimizer, batch, advantages, config, generator, step, budget):
    """The passes of minibatch updates on one batch; returns mean metrics over the steps and the step."""
    B = batch.sequences.size(0)
    size = config.minibatch_size
    n_minibatches = -(-B // size)
    # DAPO's token-level mean: every minibatch divides by the batch's tokens per minibatch, so that
    # a token weighs the same in whichever minibatch it lands.
    normalizer = max(float(batch.mask.sum()) / n_minibatches, 1.0)
    sums: dict[str, float] = {}
    n = 0
    P = batch.prompt_length
    for _ in range(config.updates_per_batch):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, size):
            idx = order[start : start + size]
            mb = _rows(batch, idx)
            warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
            for group in optimizer.param_groups:
                group["lr"] = config.lr * warm
            logits, _ = completion_logits(policy, mb["sequences"], mb["attention_mask"], P)
            logits = logits.float() / config.temperature
            logps = token_logps(logits, mb["sequences"][:, P:], mb["mask"])
            loss, metrics = grpo_loss(
                logps,
                mb["logps"],
                advantages[idx.to(advantages.device)],
                mb["mask"],
                ref_logps=mb["ref_logps"],
                beta=config.beta,
                clip_low=config.clip_low,
                clip_high=config.clip_high,
                aggregation=config.aggregation,
                max_length=budget,
                normalizer=normalizer,
                kl_ratio_correction=config.kl_ratio_correction,
            )
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(
                    f"GRPO loss became {float(loss.detach())} at optimizer step {step}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm)
            optimizer.step()
            step += 1
            with torch.no_grad():
                entropy = entropy_from_logits(logits)
                metrics["entropy"] = (
                    float(masked_mean(entropy, mb["mask"])) if bool(mb["mask"].any()) else 0.0
                )
            metrics["grad_norm"] = float(grad_norm)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
    return {k: v / max(n, 1) for k, v in sums.items()}, step


def train_grpo(
    policy: nn.Module,
    reference: nn.Module,
    chat: ChatFormat,
    config: GRPOConfig,
    *,
    reward_model: RewardModel | None = None,
    checkpoint_dir: str | Path | None = None,
    logger=None,
    progress: bool = True,
) -> GRPOHistory:
    """Run GRPO on the config's prompts, in place on ``policy`` (see the module for the steps).

    :param policy: the language model to train (a :class:`~llmbook.model.gpt.GPT`; its dropout must
        be off, or sampled and recomputed log-probabilities disagree).
    :param reference: the frozen reference policy (:func:`~llmbook.align.policy.reference_model`).
    :param chat: the chat format.
    :param config: the :class:`~llmbook.align.grpo_config.GRPOConfig`.
    :param reward_model: optional reward model: its score enters the reward with ``rm_weight`` and
        every evaluation reports it.
    :param checkpoint_dir: where resumable checkpoints go; a run finds its newest checkpoint there
        and continues from it (same config required).
    :param logger: a :class:`~llmbook.train.logger.TrainLogger` (TensorBoard) or None.
    :param progress: show a progress bar on stderr.
    :returns: the :class:`GRPOHistory`.
    :raises ValueError: when ``rm_weight > 0`` and no reward model is given.
    :raises AssertionError: when the first batch's recomputed log-probabilities differ from the
        sampled ones (see :func:`~llmbook.align.rollout.recompute_matches`).
    :raises FloatingPointError: when the loss stops being finite.

    Introduced in {doc}`/book/part9/05-the-loop`.
    """
    if config.rm_weight > 0 and reward_model is None:
        raise ValueError("reward_model: the config's rm_weight > 0 needs a reward model")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    held_out = ppo_examples(config, config.eval_examples, split="val", seed=config.seed + 1)

    # Each iteration draws its prompts from (seed, iteration, round): a resumed or extended run
    # sees the same prompts at the same iterations.
    def prompts_at(it: int, round_: int) -> list[Example]:
        seed = config.seed * 100_003 + it
        if round_:
            seed = 1_000_000_007 + seed * MAX_SAMPLING_ROUNDS + round_
        return ppo_examples(config, config.prompts_per_batch, split="train", seed=seed)

    budget = config.max_new_tokens or default_max_new_tokens(
        chat, held_out + ppo_examples(config, 256, split="train", seed=config.seed)
    )
    optimizer = torch.optim.AdamW(
        policy.parameters(),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
    )
    history, start, step = GRPOHistory(), 0, 0
    if reward_model is not None:
        history.eval["rm_score"] = []
    model_config = policy.config.to_dict()
    if checkpoint_dir is not None:
        state = load_latest(
            checkpoint_dir,
            model=policy,
            optimizer=optimizer,
            model_config=model_config,
            train_config=config.to_dict(),
            generator=generator,
        )
        if state is not None:
            start = state.step
            history = GRPOHistory.from_dict(state.history["grpo"])
            step = int(state.history["optimizer_steps"])
    for p in reference.parameters():
        p.requires_grad_(False)
    if reward_model is not None:
        reward_model.requires_grad_(False)

    def run_eval(iteration: int) -> None:
        t0 = time.perf_counter()
        result = evaluate_policy(policy, reward_model, chat, held_out, max_new_tokens=budget)
        history.eval_iterations.append(iteration)
        for key in history.eval:
            history.eval[key].append(result[key])
        if logger is not None:
            logger.log_scalars(iteration, {f"eval/{k}": v for k, v in result.items()})
        history.eval_seconds += time.perf_counter() - t0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.iterations, initial=start, desc="grpo", unit="it", leave=False)
    k = config.group_size
    for it in range(start, config.iterations):
        interval = config.eval_interval
        if it == 0 or (interval and it % interval == 0 and it not in history.eval_iterations):
            run_eval(it)
        t0 = time.perf_counter()
        parts, kept_rewards = [], []
        sampled_groups = zero_groups = sampled_tokens = kept = rounds = 0
        spent = {"generate": 0.0, "score": 0.0}  # every round's, whether or not a group was kept
        sampled_right, sampled_rewards = 0.0, []
        while True:
            groups = sample_groups(
                policy,
                reference,
                chat,
                prompts_at(it, rounds),
                group_size=k,
                max_new_tokens=budget,
                temperature=config.temperature,
                generator=generator,
                reward_model=reward_model,
            )
            rounds += 1
            if it == start and rounds == 1:
                recompute_matches(policy, groups, temperature=config.temperature)
            rewards = group_rewards(groups, config)
            zero = zero_variance_groups(rewards, k)
            sampled_groups += groups.groups
            zero_groups += int(zero.sum())
            sampled_tokens += int(groups.lengths.sum())
            sampled_right += float(groups.verifier.float().sum())
            sampled_rewards.append(rewards)
            for phase in spent:
                spent[phase] += groups.timings[phase]
            if config.dynamic_sampling:
                keep = (~zero).nonzero().flatten()[: config.prompts_per_batch - kept]
                groups = groups.select_groups(keep)
                rows = (keep[:, None] * k + torch.arange(k)[None, :]).flatten()
                rewards = rewards[rows.to(rewards.device)]
            if groups.groups:
                parts.append(groups)
                kept_rewards.append(rewards)
                kept += groups.groups
            if (
                not config.dynamic_sampling
                or kept >= config.prompts_per_batch
                or rounds >= config.max_sampling_rounds
            ):
                break
        metrics: dict[str, float] = {}
        if parts:
            batch = concat_groups(parts, pad_id_of(chat))
            rewards = torch.cat(kept_rewards)
            advantages = group_advantages(rewards, k, scale=config.scale_rewards)
            policy.train()
            t_update = time.perf_counter()
            metrics, step = _update(
                policy, optimizer, batch, advantages, config, generator, step, budget
            )
            t_update = time.perf_counter() - t_update
            policy.eval()
            k1 = ((batch.logps - batch.ref_logps) * batch.mask).sum(dim=1)
            row = {
                "reward": float(rewards.mean()),
                "verifier": float(batch.verifier.float().mean()),
                "reward_std": float(rewards.view(-1, k).std(dim=1).mean()),
                "kl": float(k1.mean()),
                "length": float(batch.lengths.float().mean()),
                "finished": float(batch.finished.float().mean()),
            }
        else:  # dynamic sampling found no group with a signal: nothing to train on
            t_update = 0.0
            row = {
                "reward": float(torch.cat(sampled_rewards).mean()),
                "verifier": sampled_right / (sampled_groups * k),
                "reward_std": 0.0,
                "kl": 0.0,
                "length": 0.0,
                "finished": 0.0,
            }
        row.update(
            {
                "sampled_verifier": sampled_right / (sampled_groups * k),
                "generate_seconds": spent["generate"],
                "score_seconds": spent["score"],
                "zero_variance": zero_groups / max(sampled_groups, 1),
                "groups": kept,
                "kl_k3": metrics.get("kl", 0.0),
                "entropy": metrics.get("entropy", 0.0),
                "loss": metrics.get("loss", 0.0),
                "policy_loss": metrics.get("policy_loss", 0.0),
                "clipfrac": metrics.get("clipfrac", 0.0),
                "clipfrac_low": metrics.get("clipfrac_low", 0.0),
                "clipfrac_high": metrics.get("clipfrac_high", 0.0),
                "approx_kl": metrics.get("approx_kl", 0.0),
                "grad_norm": metrics.get("grad_norm", 0.0),
                "sampled_tokens": sampled_tokens,
                "sampling_rounds": rounds,
                "update_seconds": t_update,
            }
        )
        history.iterations.append(it)
        for key in TRAIN_KEYS:
            history.train[key].append(row[key])
        history.seconds += time.perf_counter() - t0
        if logger is not None:
            logger.log_scalars(it, {f"grpo/{key}": float(v) for key, v in row.items()})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                acc=f"{row['verifier']:.2f}",
                zero=f"{row['zero_variance']:.2f}",
                kl=f"{row['kl']:.2f}",
            )
        done = it + 1
        if (
            checkpoint_dir is not None
            and config.checkpoint_interval
            and (done % config.checkpoint_interval == 0 or done == config.iterations)
        ):
            save_training_state(
                checkpoint_dir,
                step=done,
                model=policy,
                optimizer=optimizer,
                model_config=model_config,
                train_config=config.to_dict(),
                history={"grpo": history.to_dict(), "optimizer_steps": step},
                generator=generator,
            )
    if bar is not None:
        bar.close()
    if config.iterations not in history.eval_iterations:
        run_eval(config.iterations)
    if logger is not None:
        logger.flush()
    policy.eval()
    return history
