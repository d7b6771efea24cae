r"""The PPO policy and its critic: a language model that also estimates, at every token, the return to come.

PPO needs two functions of a partial answer $s_t = (x, y_{<t})$: the policy
$\pi_\theta(y_t \mid s_t)$ (the language model's next-token distribution) and a *value*
$V_\phi(s_t) \approx \mathbb E[\sum_{k \ge t} r_k \mid s_t]$, the baseline that turns rewards into
advantages. Both read the hidden state at the position just before token $t$. Two designs:

- **shared trunk** (``critic="shared"``): a linear value head on the policy's own final hidden
  states. One forward pass gives logits and values; the value loss shapes the trunk the policy uses.
- **separate critic** (``critic="separate"``): a second transformer with its own head, initialised
  from the reward model (InstructGPT's choice). Its first values already read the reward model's
  judgement at every prefix; it costs a second forward and backward pass per step.

The value head never changes the policy's logits: the logits are the backbone's language-model head
on the same hidden states, whichever critic is used.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from llmbook.align.reward_model import RewardModel
from llmbook.model.gpt import GPT

CRITICS = ("shared", "separate")
"""The two places the value function can live (see :class:`ActorCritic`)."""


class ActorCritic(nn.Module):
    """A policy language model with a value head, on its own trunk or on a separate critic.

    :param policy: the language model (the SFT model; trained in place).
    :param critic: ``"shared"`` puts the value head on the policy's hidden states; ``"separate"``
        runs a copy of ``reward_model``'s backbone with a copy of its head as the critic.
    :param reward_model: the reward model to initialise a separate critic from (required for
        ``"separate"``; it is copied, never modified; a causal one only).
    :raises ValueError: for an unknown critic, a separate critic without a causal reward model, or
        a reward model whose width differs from what the head reads.

    Introduced in {doc}`/book/part8/01-policy-and-value`.
    """

    def __init__(
        self, policy: GPT, *, critic: str = "shared", reward_model: RewardModel | None = None
    ) -> None:
        super().__init__()
        if critic not in CRITICS:
            raise ValueError(f"critic: must be one of {CRITICS}, got {critic!r}")
        self.policy = policy
        self.critic_kind = critic
        if critic == "separate":
            if reward_model is None:
                raise ValueError("reward_model: a separate critic is initialised from one; pass it")
            if not reward_model.causal:
                raise ValueError(
                    "reward_model: a critic scores every prefix, so it must be causal (an encoder "
                    "reward model sees the tokens after each position)"
                )
            self.critic = copy.deepcopy(reward_model.backbone)
            self.value_head = copy.deepcopy(reward_model.head)
            # A copy keeps the flags of what it copies: a frozen reward model (train_ppo freezes
            # the one it is given) would give a critic that silently never learns.
            self.critic.requires_grad_(True)
            self.value_head.requires_grad_(True)
        else:
            self.critic = None
            C = policy.config.n_embd
            self.value_head = nn.Linear(C, 1)
            # Values start at zero: the first advantages are the rewards themselves, and the value
            # loss does not push the shared trunk hard before the head has learnt anything.
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        self.value_head.float()

    @property
    def config(self):
        """The policy's :class:`~llmbook.model.config.ModelConfig` (what ``generate`` reads)."""
        return self.policy.config

    def policy_parameters(self) -> list[nn.Parameter]:
        """The parameters of the policy alone (the trunk and its language-model head).

        :returns: a list of parameters.
        """
        return list(self.policy.parameters())

    def value_parameters(self) -> list[nn.Parameter]:
        """The parameters only the value function uses (the head, and a separate critic's trunk).

        :returns: a list of parameters.
        """
        params = list(self.value_head.parameters())
        if self.critic is not None:
            params += list(self.critic.parameters())
        return params

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits and the value of every prefix.

        ``values[:, t]`` estimates the return after the model has read tokens ``0..t``: the state in
        which token ``t + 1`` is chosen, the same position whose logits predict it.

        :param input_ids: ids ``(B, T)``, left padding allowed.
        :param attention_mask: bool ``(B, T)``, True at real tokens (None: no padding).
        :returns: ``(logits (B, T, V), values (B, T))``, values in float32.
        """
        hidden = self.policy.hidden_states(input_ids, attention_mask=attention_mask)  # (B, T, C)
        logits = self.policy.lm_head(hidden)  # (B, T, V)
        if self.critic is not None:
            hidden = self.critic.hidden_states(input_ids, attention_mask=attention_mask)
        values = self.value_head(hidden.float()).squeeze(-1)  # (B, T)
        return logits, values


def reference_model(policy: GPT) -> GPT:
    """A frozen copy of the policy: $\\pi_\\text{ref}$, the anchor of the KL penalty.

    :param policy: the starting policy (the SFT model).
    :returns: a copy in eval mode whose parameters do not require gradients.

    Introduced in {doc}`/book/part8/01-policy-and-value`.
    """
    ref = copy.deepcopy(policy).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
