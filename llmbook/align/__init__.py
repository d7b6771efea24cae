"""Alignment, Part 6 on: the chat format, supervised fine-tuning on verifiable tasks, evaluation
against gold (and, in Parts 7-9, rewards and reinforcement learning).

One concept per module: :mod:`~llmbook.align.chat` (special tokens, render with a loss mask, parse),
:mod:`~llmbook.align.vocab` (growing the embedding for new tokens), :mod:`~llmbook.align.sft_loss`
(the masked loss), :mod:`~llmbook.align.batching` (padding and packing), :mod:`~llmbook.align.sft`
(the fine-tuning loop), :mod:`~llmbook.align.evaluate` and :mod:`~llmbook.align.passk` (exact
match and pass@k); for Part 7, :mod:`~llmbook.align.preference` (verifier-labelled preference pairs),
:mod:`~llmbook.align.reward_model` (the scalar-head model and :func:`~llmbook.align.reward_model.score`),
:mod:`~llmbook.align.reward_loss` (Bradley–Terry, margin ranking, centering),
:mod:`~llmbook.align.reward` (training and pairwise accuracy) and :mod:`~llmbook.align.probes`
(calibration, length, invariances, the reward-hacking probe); for Part 8 (PPO),
:mod:`~llmbook.align.policy` (the actor-critic and the frozen reference), :mod:`~llmbook.align.rollout`
(sampling with per-token log-probs and values), :mod:`~llmbook.align.reward_signal` (scores and the
KL penalty folded into per-token rewards), :mod:`~llmbook.align.kl` (the k1, k2, k3 estimators),
:mod:`~llmbook.align.normalize` (masked statistics, whitening, running moments),
:mod:`~llmbook.align.advantages` (GAE), :mod:`~llmbook.align.ppo_loss` (the clipped losses),
:mod:`~llmbook.align.kl_control` (fixed and adaptive KL coefficients), and
:mod:`~llmbook.align.ppo_config` with :mod:`~llmbook.align.ppo` (the loop).
"""

from llmbook.align.advantages import gae
from llmbook.align.batching import SFTBatch, iterate_batches, pack_batch, pad_batch, to_dataset
from llmbook.align.chat import (
    CHAT_SPECIALS,
    ChatFormat,
    Message,
    ParsedCompletion,
    chat_tokenizer,
)
from llmbook.align.evaluate import TaskEval, complete, evaluate_tasks
from llmbook.align.kl import kl_estimate
from llmbook.align.kl_control import AdaptiveKLController, FixedKLController
from llmbook.align.normalize import RunningMoments, masked_mean, masked_whiten
from llmbook.align.passk import pass_at_k
from llmbook.align.policy import ActorCritic, reference_model
from llmbook.align.ppo import PPOHistory, train_ppo
from llmbook.align.ppo_config import PPOConfig
from llmbook.align.ppo_loss import ppo_loss
from llmbook.align.preference import PreferencePair, build_pairs, preference_data
from llmbook.align.reward import RewardConfig, RewardHistory, pairwise_accuracy, train_reward
from llmbook.align.reward_loss import bradley_terry_loss, margin_ranking_loss
from llmbook.align.reward_model import RewardModel, score
from llmbook.align.rollout import Rollout, rollout
from llmbook.align.sft import SFTConfig, SFTHistory, prepare_model, train_sft
from llmbook.align.sft_loss import sft_labels, sft_loss
from llmbook.align.vocab import grow_vocab, new_token_mass

__all__ = [
    "ActorCritic",
    "AdaptiveKLController",
    "FixedKLController",
    "PPOConfig",
    "PPOHistory",
    "Rollout",
    "RunningMoments",
    "gae",
    "kl_estimate",
    "masked_mean",
    "masked_whiten",
    "ppo_loss",
    "reference_model",
    "rollout",
    "train_ppo",
    "CHAT_SPECIALS",
    "ChatFormat",
    "Message",
    "ParsedCompletion",
    "PreferencePair",
    "RewardConfig",
    "RewardHistory",
    "RewardModel",
    "SFTBatch",
    "SFTConfig",
    "SFTHistory",
    "TaskEval",
    "bradley_terry_loss",
    "build_pairs",
    "chat_tokenizer",
    "complete",
    "evaluate_tasks",
    "grow_vocab",
    "iterate_batches",
    "margin_ranking_loss",
    "new_token_mass",
    "pack_batch",
    "pad_batch",
    "pairwise_accuracy",
    "pass_at_k",
    "preference_data",
    "prepare_model",
    "score",
    "sft_labels",
    "sft_loss",
    "to_dataset",
    "train_reward",
    "train_sft",
]
