"""Rollouts: shapes and masks, scores that agree with the scoring API, and old = new log-probs."""

import pytest
import torch

from llmbook.align.policy import ActorCritic, reference_model
from llmbook.align.reward_model import score
from llmbook.align.rollout import (
    completion_logits,
    recompute_matches,
    rollout,
    token_logps,
)
from llmbook.generate import sequence_logprobs
from llmbook.tasks.base import verify
from llmbook.tasks.splits import generate_examples
from tests.align.ppo_fixtures import CHAT, tiny_gpt, tiny_reward_model

# Prompts of different lengths, so the batch is left-padded.
EXAMPLES = generate_examples(["add", "reverse", "sort_letters", "lookup"], 6, split="train", seed=0)


def _setup(critic="shared", **gpt):
    policy = tiny_gpt(0, **gpt)
    rm = tiny_reward_model()
    return ActorCritic(policy, critic=critic, reward_model=rm), reference_model(policy), rm


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_rollout_shapes_masks_and_scores(critic):
    ac, ref, rm = _setup(critic)
    g = torch.Generator().manual_seed(0)
    batch = rollout(ac, ref, rm, CHAT, EXAMPLES, max_new_tokens=6, generator=g)
    B, N = batch.mask.shape
    assert B == len(EXAMPLES) and batch.sequences.shape == (B, batch.prompt_length + N)
    assert len({len(CHAT.prompt_ids(e.prompt)) for e in EXAMPLES}) > 1  # really left-padded
    # The mask is a prefix of each row, and nothing outside it carries a value.
    assert bool((batch.mask.int().diff(dim=1) <= 0).all())
    for name in ("logps", "ref_logps", "values"):
        assert torch.count_nonzero(getattr(batch, name)[~batch.mask]) == 0
    # Before any update the reference is the policy: identical log-probs.
    torch.testing.assert_close(batch.ref_logps, batch.logps, atol=1e-5, rtol=0)
    # The verifier and the reward model agree with their own APIs on the parsed answers.
    prompts = [e.prompt for e in EXAMPLES]
    expected = torch.tensor([verify(e, t) for e, t in zip(EXAMPLES, batch.texts)])
    torch.testing.assert_close(batch.verifier, expected)
    finished = batch.finished
    if finished.any():
        api = score(rm, CHAT, prompts, batch.texts)
        torch.testing.assert_close(batch.rm_scores[finished], api[finished], atol=1e-5, rtol=1e-5)


def test_recomputed_logps_equal_the_sampled_ones_before_the_update():
    ac, ref, rm = _setup()
    ac.train()
    batch = rollout(ac, ref, rm, CHAT, EXAMPLES, max_new_tokens=6, generator=torch.Generator())
    assert ac.training  # the rollout put the mode back
    assert recompute_matches(ac, batch) < 1e-5
    # The same through the package's sequence log-probs (Part 2.8), column for column.
    full = sequence_logprobs(ac.policy, batch.sequences, batch.attention_mask)
    P = batch.prompt_length
    torch.testing.assert_close(full[:, P - 1 :] * batch.mask, batch.logps, atol=1e-5, rtol=0)


def test_recompute_catches_a_temperature_mismatch_and_dropout():
    ac, ref, rm = _setup()
    batch = rollout(
        ac, ref, rm, CHAT, EXAMPLES, max_new_tokens=6, temperature=0.7, generator=torch.Generator()
    )
    assert recompute_matches(ac, batch, temperature=0.7) < 1e-5
    with pytest.raises(AssertionError, match="temperature"):
        recompute_matches(ac, batch, temperature=1.0)
    leaky, ref, rm = _setup(dropout=0.3)
    batch = rollout(leaky, ref, rm, CHAT, EXAMPLES, max_new_tokens=6, generator=torch.Generator())
    with pytest.raises(AssertionError, match="dropout"):
        recompute_matches(leaky, batch)


def test_select_and_completion_logits():
    ac, ref, rm = _setup()
    batch = rollout(ac, ref, rm, CHAT, EXAMPLES, max_new_tokens=6, generator=torch.Generator())
    sub = batch.select([4, 1])
    assert sub.examples == [EXAMPLES[4], EXAMPLES[1]]
    torch.testing.assert_close(sub.logps, batch.logps[[4, 1]])
    logits, values = completion_logits(ac, sub.sequences, sub.attention_mask, sub.prompt_length)
    tokens = sub.sequences[:, sub.prompt_length :]
    torch.testing.assert_close(token_logps(logits, tokens, sub.mask), sub.logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(values * sub.mask, sub.values, atol=1e-6, rtol=0)
    plain, none = completion_logits(ac.policy, sub.sequences, sub.attention_mask, sub.prompt_length)
    assert none is None
    torch.testing.assert_close(plain, logits)


def test_refusals():
    ac, ref, rm = _setup()
    with pytest.raises(ValueError, match="examples"):
        rollout(ac, ref, rm, CHAT, [], max_new_tokens=4)
    with pytest.raises(ValueError, match="temperature"):
        rollout(ac, ref, rm, CHAT, EXAMPLES, max_new_tokens=4, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        token_logps(
            torch.zeros(1, 1, 3),
            torch.zeros(1, 1, dtype=torch.long),
            torch.ones(1, 1),
            temperature=0,
        )
