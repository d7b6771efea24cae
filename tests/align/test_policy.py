"""The actor-critic: the value head leaves the policy alone, the critic's two homes, the frozen reference."""

import pytest
import torch

from llmbook.align.policy import CRITICS, ActorCritic, reference_model
from llmbook.align.reward_model import collate
from tests.align.ppo_fixtures import CHAT, tiny_gpt, tiny_reward_model

ROWS = [CHAT.prompt_ids("What is 2 plus 3?") + [53], CHAT.prompt_ids("Reverse abc.")]


def _batch(side="left"):
    return collate(ROWS, pad_id=0, side=side)


@pytest.mark.parametrize("critic", CRITICS)
def test_value_head_does_not_change_the_logits(critic):
    policy = tiny_gpt(0)
    ac = ActorCritic(policy, critic=critic, reward_model=tiny_reward_model())
    ids, mask = _batch()
    logits, values = ac(ids, mask)
    expected = policy(ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert values.shape == ids.shape and values.dtype == torch.float32


def test_shared_values_start_at_zero_and_the_head_learns_from_the_trunk():
    ac = ActorCritic(tiny_gpt(0))
    ids, mask = _batch()
    _, values = ac(ids, mask)
    assert torch.count_nonzero(values) == 0
    # The value loss reaches the shared trunk once the head is not zero.
    torch.nn.init.normal_(ac.value_head.weight)
    _, values = ac(ids, mask)
    values[mask].pow(2).mean().backward()
    assert ac.policy.blocks[0].attn.q_proj.weight.grad.abs().sum() > 0


def test_separate_critic_starts_as_the_reward_model_at_every_prefix():
    rm = tiny_reward_model()
    ac = ActorCritic(tiny_gpt(0), critic="separate", reward_model=rm)
    ids, mask = _batch(side="right")
    _, values = ac(ids, mask)
    # At the last real token the critic reads exactly what the reward model scores.
    last = mask.sum(dim=1) - 1
    torch.testing.assert_close(values[torch.arange(2), last], rm(ids, mask))
    # It is a copy: training the critic leaves the reward model unchanged.
    assert ac.critic is not rm.backbone
    assert ac.value_head.weight.data_ptr() != rm.head.weight.data_ptr()


def test_parameters_split_into_policy_and_value():
    for critic in CRITICS:
        ac = ActorCritic(tiny_gpt(0), critic=critic, reward_model=tiny_reward_model())
        policy = {id(p) for p in ac.policy_parameters()}
        value = {id(p) for p in ac.value_parameters()}
        assert not policy & value
        assert policy | value == {id(p) for p in ac.parameters()}
    shared = ActorCritic(tiny_gpt(0))
    assert len(shared.value_parameters()) == 2  # the head's weight and bias


def test_refusals():
    with pytest.raises(ValueError, match="critic"):
        ActorCritic(tiny_gpt(0), critic="both")
    with pytest.raises(ValueError, match="reward_model"):
        ActorCritic(tiny_gpt(0), critic="separate")
    with pytest.raises(ValueError, match="causal"):
        ActorCritic(
            tiny_gpt(0),
            critic="separate",
            reward_model=tiny_reward_model(causal=False, pooling="mean"),
        )


def test_reference_is_a_frozen_copy():
    policy = tiny_gpt(0)
    ref = reference_model(policy)
    ids, mask = _batch()
    before = ref(ids, attention_mask=mask).logits
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)
    torch.testing.assert_close(ref(ids, attention_mask=mask).logits, before)


def test_a_separate_critic_from_a_frozen_reward_model_still_learns():
    rm = tiny_reward_model().requires_grad_(False)
    ac = ActorCritic(tiny_gpt(0), critic="separate", reward_model=rm)
    assert all(p.requires_grad for p in ac.value_parameters())
    assert not any(p.requires_grad for p in rm.parameters())
