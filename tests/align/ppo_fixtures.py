"""Tiny models shared by the Part 8 tests: a chat policy, a reward model and a one-token bandit."""

import torch
from torch import nn

from llmbook.align.ppo_config import PPOConfig
from llmbook.align.reward_model import RewardModel
from tests.align.test_reward_model import CHAT, tiny_gpt

__all__ = ["CHAT", "BanditReward", "restrict_vocab", "tiny_gpt", "tiny_config", "tiny_reward_model"]


def tiny_reward_model(seed=1, **kwargs) -> RewardModel:
    """A reward model on a tiny backbone (untrained: its scores are arbitrary but deterministic)."""
    return RewardModel(tiny_gpt(seed), **kwargs).eval()


def tiny_config(**overrides) -> PPOConfig:
    """A PPO config small enough for a unit test (a few seconds on a CPU)."""
    settings = dict(
        prompts={"add": [1], "reverse": [3]},
        iterations=3,
        batch_size=8,
        minibatch_size=4,
        ppo_epochs=2,
        eval_examples=4,
        eval_interval=0,
        max_new_tokens=4,
        lr=1e-3,
    )
    return PPOConfig(**{**settings, **overrides})


class _Restricted(nn.Module):
    # The language-model head plus a fixed bias that makes every id outside `allowed` unreachable.
    def __init__(self, head: nn.Linear, allowed: list[int], vocab: int) -> None:
        super().__init__()
        self.head = head
        bias = torch.full((vocab,), -30.0)
        bias[allowed] = 0.0
        self.register_buffer("bias", bias)

    def forward(self, h):
        return self.head(h) + self.bias


def restrict_vocab(model, allowed: list[int]):
    """Make ``model`` choose only among ``allowed`` ids (a bandit with a few arms), in place."""
    model.lm_head = _Restricted(model.lm_head, allowed, model.config.vocab_size)
    return model


class BanditReward(nn.Module):
    """A "reward model" that pays 1 when the last real token is ``target``, else 0."""

    def __init__(self, config, target: int) -> None:
        super().__init__()
        self.config = config
        self.target = target
        self.causal = True
        self.dummy = nn.Parameter(torch.zeros(1))  # score() asks for a device

    def forward(self, input_ids, attention_mask=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        T = input_ids.size(1)
        index = torch.arange(T).expand_as(input_ids)
        last = torch.where(attention_mask.bool(), index, -1).amax(dim=1)
        tokens = input_ids[torch.arange(input_ids.size(0)), last]
        return (tokens == self.target).float() + 0 * self.dummy
