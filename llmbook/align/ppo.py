r"""The PPO loop for language models: rollout, score, advantages, several epochs of clipped updates, log.

One *iteration* takes ``batch_size`` prompts and

1. **rolls out**: the policy samples a completion for each (:func:`~llmbook.align.rollout.rollout`),
   recording each token's log-probability, the reference's, and the critic's value;
2. **scores**: the reward model (and optionally the verifier) gives one score per completion, which is
   normalised and placed on the last token, with $-\beta\,\mathrm{KL}_t$ on every token
   (:mod:`~llmbook.align.reward_signal`);
3. computes **advantages** with GAE(γ, λ) and whitens them over the batch
   (:mod:`~llmbook.align.advantages`);
4. **updates** for ``ppo_epochs`` passes over the batch in minibatches, with the clipped policy loss
   and the clipped value loss (:mod:`~llmbook.align.ppo_loss`), stopping early if the policy moved too
   far (approx-KL over ``stop_kl``);
5. adapts $\beta$ (:mod:`~llmbook.align.kl_control`) and logs.

Every ``eval_interval`` iterations the policy answers held-out prompts greedily and the verifier
grades them: the accuracy the reward model is only a proxy for. A run is seeded (prompts, samples,
minibatch order) and resumes from its checkpoints to the same numbers.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from llmbook.align.advantages import gae
from llmbook.align.chat import ChatFormat
from llmbook.align.evaluate import complete, default_max_new_tokens
from llmbook.align.history import HistoryRecord
from llmbook.align.kl_control import AdaptiveKLController, FixedKLController
from llmbook.align.normalize import RunningMoments, masked_mean, masked_whiten
from llmbook.align.policy import ActorCritic
from llmbook.align.ppo_config import PPOConfig
from llmbook.align.ppo_loss import entropy_from_logits, explained_variance, ppo_loss
from llmbook.align.reward_model import RewardModel, score
from llmbook.align.reward_signal import normalize_scores, sequence_scores, token_rewards
from llmbook.align.rollout import completion_logits, recompute_matches, rollout, token_logps
from llmbook.tasks.base import Example, verify
from llmbook.tasks.splits import generate_examples
from llmbook.train.checkpoint import load_latest, save_training_state

TRAIN_KEYS = (
    "rm_score",
    "verifier",
    "score",
    "kl",
    "beta",
    "entropy",
    "policy_loss",
    "value_loss",
    "clipfrac",
    "approx_kl",
    "explained_variance",
    "grad_norm",
    "length",
    "finished",
    "epochs",
    "rollout_seconds",
    "update_seconds",
)
"""What :class:`PPOHistory` records for every iteration (the TensorBoard tags are ``ppo/<key>``)."""


@dataclass
class PPOHistory(HistoryRecord):
    """What a PPO run measured: one entry per iteration, and the held-out evaluations.

    Introduced in {doc}`/book/part8/04-the-loop`.
    """

    iterations: list[int] = field(default_factory=list)
    """The iterations, from 0."""
    train: dict = field(default_factory=lambda: {k: [] for k in TRAIN_KEYS})
    """Per-iteration means over the rollout batch, keyed by :data:`TRAIN_KEYS`: the reward model's
    score, the verifier's reward, the normalised score, the KL per sequence (k1, summed over tokens),
    $\\beta$, the entropy per token, the last epoch's losses, clip fraction and approx-KL, the value
    function's explained variance, the gradient norm, the completion length, the share finished,
    the epochs run, and the wall time of the rollout (sampling and the scoring passes) and of the
    update epochs."""
    eval_iterations: list[int] = field(default_factory=list)
    """When held-out evaluations ran (the iteration's updates not yet applied: 0 is the start)."""
    eval: dict = field(default_factory=lambda: {"accuracy": [], "rm_score": [], "length": []})
    """Greedy answers to held-out prompts: verifier accuracy, reward-model score, length in tokens."""
    seconds: float = 0.0
    """Wall time of the iterations (evaluations excluded)."""
    eval_seconds: float = 0.0
    """Wall time of the evaluations."""


def ppo_examples(config, n: int, *, split: str, seed: int) -> list[Example]:
    """Draw ``n`` prompts from the config's cells (task, level), every cell equally often.

    :param config: a :class:`~llmbook.align.ppo_config.PPOConfig` or
        :class:`~llmbook.align.grpo_config.GRPOConfig` (its ``prompts`` are read).
    :param n: the number of examples.
    :param split: ``"train"``, ``"val"`` or ``"test"`` (disjoint by problem).
    :param seed: seed of the draw.
    :returns: the examples in a seeded random order.

    Introduced in {doc}`/book/part8/04-the-loop`.
    """
    cells = [(task, level) for task, levels in config.prompts.items() for level in levels]
    per_cell = -(-n // len(cells))
    pool: list[Example] = []
    for k, (task, level) in enumerate(cells):
        pool += generate_examples(
            [task], per_cell, split=split, seed=seed * 1009 + k, difficulty=level
        )
    random.Random(seed).shuffle(pool)
    return pool[:n]


@torch.no_grad()
def evaluate_policy(
    policy: nn.Module,
    reward_model: RewardModel | None,
    chat: ChatFormat,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
) -> dict[str, float]:
    """Greedy answers to held-out prompts, graded by the verifier and scored by the reward model.

    :param policy: the language model.
    :param reward_model: the reward model (None: no ``rm_score``).
    :param chat: the chat format.
    :param examples: the held-out examples.
    :param max_new_tokens: the generation budget.
    :returns: ``accuracy`` (verifier), ``rm_score`` (mean reward-model score; absent without a
        reward model) and ``length`` (mean answer length in tokens, ``<|end|>`` included).

    Introduced in {doc}`/book/part8/04-the-loop`.
    """
    answers = [
        a[0]
        for a in complete(policy, chat, [e.prompt for e in examples], max_new_tokens=max_new_tokens)
    ]
    texts = [a.text for a in answers]
    rewards = [verify(e, t) for e, t in zip(examples, texts)]
    result = {
        "accuracy": sum(rewards) / len(rewards),
        "length": sum(a.n_tokens for a in answers) / len(answers),
    }
    if reward_model is not None:
        scores = score(reward_model, chat, [e.prompt for e in examples], texts)
        result["rm_score"] = float(scores.mean())
    return result


def _optimizer(actor_critic: ActorCritic, config: PPOConfig) -> torch.optim.Optimizer:
    groups = [
        {"params": actor_critic.policy_parameters(), "lr": config.lr, "name": "policy"},
        {"params": actor_critic.value_parameters(), "lr": config.value_lr, "name": "value"},
    ]
    return torch.optim.AdamW(
        groups, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay
    )


def _update(actor_critic, optimizer, batch, advantages, returns, config, generator, step):
    """The epochs of minibatch updates on one rollout batch; returns the last metrics and counts."""
    B = batch.sequences.size(0)
    metrics: dict[str, float] = {}
    epochs = 0
    for _epoch in range(config.ppo_epochs):
        epochs += 1
        order = torch.randperm(B, generator=generator)
        stop = False
        for start in range(0, B, config.minibatch_size):
            idx = order[start : start + config.minibatch_size].to(batch.sequences.device)
            mb = batch.select(idx.cpu())
            warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
            for group, base in zip(optimizer.param_groups, (config.lr, config.value_lr)):
                group["lr"] = base * warm
            logits, values = completion_logits(
                actor_critic, mb.sequences, mb.attention_mask, mb.prompt_length
            )
            logits = logits.float() / config.temperature
            tokens = mb.sequences[:, mb.prompt_length :]
            logps = token_logps(logits, tokens, mb.mask)
            entropy = entropy_from_logits(logits)
            loss, metrics = ppo_loss(
                logps,
                mb.logps,
                advantages[idx],
                values,
                mb.values,
                returns[idx],
                mb.mask,
                clip=config.clip,
                value_clip=config.value_clip,
                value_coef=config.value_coef,
                entropy=entropy,
                entropy_coef=config.entropy_coef,
            )
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(
                    f"PPO loss became {float(loss.detach())} at optimizer step {step}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(actor_critic.parameters(), max_norm)
            optimizer.step()
            step += 1
            metrics = {**metrics, "grad_norm": float(grad_norm)}
            metrics["entropy"] = float(masked_mean(entropy.detach(), mb.mask))
            if config.stop_kl is not None and metrics["approx_kl"] > config.stop_kl:
                stop = True
                break
        if stop:
            break
    return metrics, epochs, step


def train_ppo(
    actor_critic: ActorCritic,
    reference: nn.Module,
    reward_model: RewardModel,
    chat: ChatFormat,
    config: PPOConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    logger=None,
    progress: bool = True,
) -> PPOHistory:
    """Run PPO on the config's prompts, in place on ``actor_critic`` (see the module for the steps).

    :param actor_critic: the policy with its critic (:class:`~llmbook.align.policy.ActorCritic`).
    :param reference: the frozen reference policy (:func:`~llmbook.align.policy.reference_model`).
    :param reward_model: the reward model (frozen: it is never updated).
    :param chat: the chat format all three share.
    :param config: the :class:`~llmbook.align.ppo_config.PPOConfig`.
    :param checkpoint_dir: where resumable checkpoints go; a run finds its newest checkpoint there and
        continues from it (same config required).
    :param logger: a :class:`~llmbook.train.logger.TrainLogger` (TensorBoard) or None.
    :param progress: show a progress bar on stderr.
    :returns: the :class:`PPOHistory`.
    :raises AssertionError: when the first batch's recomputed log-probabilities differ from the
        sampled ones (see :func:`~llmbook.align.rollout.recompute_matches`).
    :raises FloatingPointError: when the loss stops being finite.

    Introduced in {doc}`/book/part8/04-the-loop`.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    held_out = ppo_examples(config, config.eval_examples, split="val", seed=config.seed + 1)

    # Each iteration draws its own prompts from (seed, iteration): a resumed or extended run sees
    # the same prompts at the same iterations.
    def prompts_at(it: int) -> list[Example]:
        return ppo_examples(
            config, config.batch_size, split="train", seed=config.seed * 100_003 + it
        )

    budget = config.max_new_tokens or default_max_new_tokens(
        chat, held_out + ppo_examples(config, 256, split="train", seed=config.seed)
    )
    optimizer = _optimizer(actor_critic, config)
    controller = (
        AdaptiveKLController(config.beta, target=config.kl_target, horizon=config.kl_horizon)
        if config.kl_target is not None
        else FixedKLController(config.beta)
    )
    moments = RunningMoments()
    history, start, step = PPOHistory(), 0, 0
    model_config = {**actor_critic.config.to_dict(), "critic": actor_critic.critic_kind}
    if checkpoint_dir is not None:
        state = load_latest(
            checkpoint_dir,
            model=actor_critic,
            optimizer=optimizer,
            model_config=model_config,
            train_config=config.to_dict(),
            generator=generator,
        )
        if state is not None:
            start = state.step
            history = PPOHistory.from_dict(state.history["ppo"])
            controller.load_state_dict(state.history["controller"])
            moments.load_state_dict(state.history["moments"])
            step = int(state.history["optimizer_steps"])
    for p in reference.parameters():
        p.requires_grad_(False)
    reward_model.requires_grad_(False)

    def run_eval(iteration: int) -> None:
        t0 = time.perf_counter()
        result = evaluate_policy(
            actor_critic.policy, reward_model, chat, held_out, max_new_tokens=budget
        )
        history.eval_iterations.append(iteration)
        for key in history.eval:
            history.eval[key].append(result[key])
        if logger is not None:
            logger.log_scalars(iteration, {f"eval/{k}": v for k, v in result.items()})
        history.eval_seconds += time.perf_counter() - t0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.iterations, initial=start, desc="ppo", unit="it", leave=False)
    for it in range(start, config.iterations):
        interval = config.eval_interval
        if it == 0 or (interval and it % interval == 0 and it not in history.eval_iterations):
            run_eval(it)
        t0 = time.perf_counter()
        examples = prompts_at(it)
        t_rollout = time.perf_counter()
        batch = rollout(
            actor_critic,
            reference,
            reward_model,
            chat,
            examples,
            max_new_tokens=budget,
            temperature=config.temperature,
            generator=generator,
        )
        t_rollout = time.perf_counter() - t_rollout
        if it == start:
            recompute_matches(actor_critic, batch, temperature=config.temperature)
        raw = sequence_scores(
            batch.rm_scores,
            batch.verifier,
            batch.finished,
            rm_weight=config.rm_weight,
            verifier_weight=config.verifier_weight,
            missing_end_penalty=config.missing_end_penalty,
        )
        scores = normalize_scores(raw, config.score_norm, moments)
        rewards, kl = token_rewards(
            scores,
            batch.logps,
            batch.ref_logps,
            batch.mask,
            beta=controller.beta,
            estimator=config.kl_estimator,
        )
        advantages, returns = gae(
            rewards, batch.values, batch.mask, gamma=config.gamma, lam=config.lam
        )
        if config.whiten_advantages:
            advantages = masked_whiten(advantages, batch.mask)
        actor_critic.train()
        t_update = time.perf_counter()
        metrics, epochs, step = _update(
            actor_critic, optimizer, batch, advantages, returns, config, generator, step
        )
        t_update = time.perf_counter() - t_update
        k1 = (batch.logps - batch.ref_logps) * batch.mask
        kl_seq = float(k1.sum(dim=1).mean())
        row = {
            "rm_score": float(batch.rm_scores.mean()),
            "verifier": float(batch.verifier.mean()),
            "score": float(scores.mean()),
            "kl": kl_seq,
            "beta": controller.beta,
            "entropy": metrics["entropy"],
            "policy_loss": metrics["policy_loss"],
            "value_loss": metrics["value_loss"],
            "clipfrac": metrics["clipfrac"],
            "approx_kl": metrics["approx_kl"],
            "explained_variance": explained_variance(batch.values, returns, batch.mask),
            "grad_norm": metrics["grad_norm"],
            "length": float(batch.lengths.float().mean()),
            "finished": float(batch.finished.float().mean()),
            "epochs": epochs,
            "rollout_seconds": t_rollout,
            "update_seconds": t_update,
        }
        controller.update(kl_seq, len(examples))
        history.iterations.append(it)
        for key in TRAIN_KEYS:
            history.train[key].append(row[key])
        history.seconds += time.perf_counter() - t0
        if logger is not None:
            logger.log_scalars(it, {f"ppo/{k}": float(v) for k, v in row.items()})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                rm=f"{row['rm_score']:.2f}", acc=f"{row['verifier']:.2f}", kl=f"{kl_seq:.2f}"
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
                model=actor_critic,
                optimizer=optimizer,
                model_config=model_config,
                train_config=config.to_dict(),
                history={
                    "ppo": history.to_dict(),
                    "controller": controller.state_dict(),
                    "moments": moments.state_dict(),
                    "optimizer_steps": step,
                },
                generator=generator,
            )
    if bar is not None:
        bar.close()
    if config.iterations not in history.eval_iterations:
        run_eval(config.iterations)
    if logger is not None:
        logger.flush()
    actor_critic.eval()
    return history
