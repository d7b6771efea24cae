"""The GRPO loop: config checks, group sampling, dynamic sampling, a bandit it solves, resume."""

import json
import math

import pytest
import torch

from llmbook.align.grpo import TRAIN_KEYS, GRPOHistory, concat_groups, group_rewards, train_grpo
from llmbook.align.grpo_config import GRPOConfig
from llmbook.align.policy import reference_model
from llmbook.align.ppo import ppo_examples
from llmbook.align.reward_model import pad_id_of
from llmbook.align.rollout import recompute_matches, sample_groups
from llmbook.train.logger import TensorBoardLogger, read_scalars
from tests.align.grpo_fixtures import tiny_grpo
from tests.align.ppo_fixtures import (
    CHAT,
    BanditReward,
    restrict_vocab,
    tiny_gpt,
    tiny_reward_model,
)


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", math.nan),
        ("lr", math.inf),
        ("iterations", 0),
        ("prompts_per_batch", 0),
        ("group_size", 1),
        ("minibatch_size", 5),
        ("updates_per_batch", 0),
        ("clip_low", 0.0),
        ("clip_low", 1.0),
        ("clip_high", -0.1),
        ("clip_high", math.nan),
        ("beta", -0.1),
        ("beta", math.inf),
        ("aggregation", "mean"),
        ("scale_rewards", "rank"),
        ("temperature", 0.0),
        ("max_new_tokens", 0),
        ("max_sampling_rounds", 0),
        ("max_sampling_rounds", 17),
        ("missing_end_penalty", -1.0),
        ("prompts", {"nope": [1]}),
        ("prompts", {"add": [99]}),
        ("dynamic_sampling", 1),
    ],
)
def test_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_grpo(**{field: value})


def test_config_round_trip_and_the_reward_needs_a_source():
    cfg = tiny_grpo(clip_high=0.28, aggregation="dr_grpo")
    assert GRPOConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.batch_size == 16
    with pytest.raises(ValueError, match="verifier_weight"):
        GRPOConfig(rm_weight=0.0, verifier_weight=0.0)


def test_sample_groups_puts_each_prompts_completions_in_adjacent_rows():
    policy = tiny_gpt(0)
    examples = ppo_examples(tiny_grpo(), 3, split="train", seed=0)
    g = sample_groups(
        policy,
        reference_model(policy),
        CHAT,
        examples,
        group_size=4,
        max_new_tokens=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert g.groups == 3 and g.sequences.shape[0] == 12
    assert [e.prompt for e in g.examples] == [e.prompt for e in examples for _ in range(4)]
    # Same prompt ids within a group; the samples differ (temperature 1).
    P = g.prompt_length
    for i in range(3):
        rows = g.sequences[4 * i : 4 * i + 4, :P]
        assert bool((rows == rows[:1]).all())
    assert g.rm_scores is None and g.timings["generate"] > 0 and g.timings["score"] > 0
    # The policy is its own reference here: the KL of every sampled token is 0.
    torch.testing.assert_close(g.ref_logps, g.logps, rtol=0, atol=1e-5)
    assert recompute_matches(policy, g) < 1e-4
    with pytest.raises(ValueError, match="group_size"):
        sample_groups(policy, policy, CHAT, examples, group_size=0, max_new_tokens=4)
    with pytest.raises(ValueError, match="temperature"):
        sample_groups(
            policy, policy, CHAT, examples, group_size=2, max_new_tokens=4, temperature=0.0
        )


def test_concat_groups_repads_and_keeps_every_log_prob():
    policy = tiny_gpt(0)
    ref = reference_model(policy)
    cfg = tiny_grpo(prompts={"add": [1], "reverse": [5]})
    gen = torch.Generator().manual_seed(1)
    a = sample_groups(
        policy,
        ref,
        CHAT,
        ppo_examples(cfg, 2, split="train", seed=0)[:1],
        group_size=2,
        max_new_tokens=3,
        generator=gen,
    )
    b = sample_groups(
        policy,
        ref,
        CHAT,
        ppo_examples(cfg, 2, split="train", seed=5),
        group_size=2,
        max_new_tokens=6,
        generator=gen,
    )
    joined = concat_groups([a, b], pad_id_of(CHAT))
    assert joined.groups == 3 and joined.mask.shape[1] == max(a.mask.shape[1], b.mask.shape[1])
    assert joined.texts == a.texts + b.texts
    # Extra left padding changes no position: recomputed log-probabilities still match.
    assert recompute_matches(policy, joined) < 1e-4
    with pytest.raises(ValueError, match="parts"):
        concat_groups([], 0)


def test_one_run_changes_the_policy_and_records_everything(tmp_path):
    policy = tiny_gpt(0)
    ref = reference_model(policy)
    before = [p.detach().clone() for p in policy.parameters()]
    with TensorBoardLogger(tmp_path / "tb") as logger:
        history = train_grpo(
            policy,
            ref,
            CHAT,
            tiny_grpo(rm_weight=1.0),
            reward_model=tiny_reward_model(),
            logger=logger,
            progress=False,
        )
    assert history.iterations == [0, 1, 2]
    for key in TRAIN_KEYS:
        assert len(history.train[key]) == 3 and all(math.isfinite(v) for v in history.train[key])
    assert history.eval_iterations == [0, 3]
    assert set(history.eval) == {"accuracy", "length", "rm_score"}
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, ref.parameters()))
    assert all(n == 16 * 4 or n > 0 for n in history.train["sampled_tokens"])
    scalars = read_scalars(tmp_path / "tb")
    assert {"grpo/kl", "grpo/zero_variance", "grpo/entropy", "grpo/length", "eval/accuracy"} <= set(
        scalars
    )


def test_zero_variance_groups_give_no_gradient_without_the_kl_term():
    # An untrained model never answers right: every group is all-wrong, every advantage 0, and
    # with beta 0 the policy does not move.
    policy = tiny_gpt(0)
    before = [p.detach().clone() for p in policy.parameters()]
    history = train_grpo(policy, reference_model(policy), CHAT, tiny_grpo(beta=0.0), progress=False)
    assert history.train["zero_variance"] == [1.0, 1.0, 1.0]
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_dynamic_sampling_samples_more_rounds_and_drops_flat_groups():
    policy = tiny_gpt(0)
    cfg = tiny_grpo(dynamic_sampling=True, max_sampling_rounds=3, iterations=2)
    history = train_grpo(policy, reference_model(policy), CHAT, cfg, progress=False)
    # Nothing has a signal: three rounds sampled, no group kept, no update.
    assert history.train["sampling_rounds"] == [3, 3]
    assert history.train["groups"] == [0, 0]
    assert history.train["update_seconds"] == [0.0, 0.0]
    # Every metric stays finite; the rounds' sampling time is counted though nothing was kept.
    for key in TRAIN_KEYS:
        assert all(math.isfinite(v) for v in history.train[key]), key
    assert history.train["reward"] == [0.0, 0.0] and history.train["sampled_verifier"] == [0.0, 0.0]
    assert all(t > 0 for t in history.train["generate_seconds"] + history.train["score_seconds"])
    # Three rounds of 4 groups x 4 completions x 4 tokens were sampled (or fewer where one ended).
    assert all(0 < t <= 3 * 64 for t in history.train["sampled_tokens"])


def test_one_token_bandit_converges_to_the_rewarded_token():
    arms = [ord(c) for c in "01234567"]
    target = ord("7")
    policy = restrict_vocab(tiny_gpt(0), arms)
    ref = reference_model(policy)
    bandit = BanditReward(policy.config, target)
    cfg = tiny_grpo(
        iterations=20,
        prompts_per_batch=8,
        group_size=4,
        minibatch_size=16,
        updates_per_batch=2,
        max_new_tokens=1,
        beta=0.0,
        rm_weight=1.0,
        verifier_weight=0.0,
        lr=3e-3,
        warmup_steps=0,
    )
    examples = ppo_examples(cfg, 16, split="val", seed=3)
    ids = [CHAT.prompt_ids(e.prompt) for e in examples]

    def p_target():
        with torch.no_grad():
            probs = [
                torch.softmax(policy(torch.tensor([row])).logits[0, -1], -1)[target] for row in ids
            ]
        return float(torch.stack(probs).mean())

    assert p_target() < 0.3
    history = train_grpo(policy, ref, CHAT, cfg, reward_model=bandit, progress=False)
    assert p_target() > 0.9
    assert history.train["reward"][-1] > 0.8 > history.train["reward"][0]
    # Once nearly every sample is 7, most groups are all-equal: no signal left.
    assert history.train["zero_variance"][-1] > history.train["zero_variance"][0]
    assert "rm_score" in history.eval


def test_a_reward_model_weight_needs_a_reward_model():
    policy = tiny_gpt(0)
    with pytest.raises(ValueError, match="reward_model"):
        train_grpo(policy, reference_model(policy), CHAT, tiny_grpo(rm_weight=1.0), progress=False)
    g = sample_groups(
        policy,
        policy,
        CHAT,
        ppo_examples(tiny_grpo(), 1, split="val", seed=0),
        group_size=2,
        max_new_tokens=2,
    )
    with pytest.raises(ValueError, match="rm_weight"):
        group_rewards(g, tiny_grpo(rm_weight=1.0))


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
def test_resume_gives_the_same_run(tmp_path, aggregation):
    # The (untrained) reward model's scores differ within every group: there is a signal.
    def run(policy, iterations, directory):
        cfg = tiny_grpo(
            iterations=4,
            checkpoint_interval=2,
            aggregation=aggregation,
            dynamic_sampling=aggregation == "dapo",
            rm_weight=1.0,
            verifier_weight=0.0,
        )
        object.__setattr__(cfg, "iterations", iterations)
        return train_grpo(
            policy,
            reference_model(tiny_gpt(0)),
            CHAT,
            cfg,
            reward_model=tiny_reward_model(),
            checkpoint_dir=directory,
            progress=False,
        )

    policy = tiny_gpt(0)
    straight = run(policy, 4, tmp_path / "a")
    run(tiny_gpt(0), 2, tmp_path / "b")  # interrupted after two iterations
    for meta in (tmp_path / "b").glob("*/checkpoint.json"):
        data = json.loads(meta.read_text())
        data["train"]["iterations"] = 4  # the checkpoint must match the resumed config
        meta.write_text(json.dumps(data))
    resumed_policy = tiny_gpt(5)  # other weights: the checkpoint must replace them
    resumed = run(resumed_policy, 4, tmp_path / "b")
    assert resumed.iterations == straight.iterations

    def measured(history):
        return {k: v for k, v in history.train.items() if not k.endswith("_seconds")}

    assert measured(resumed) == measured(straight)
    assert resumed.eval == straight.eval
    assert min(straight.train["reward_std"]) > 0
    for a, b in zip(policy.parameters(), resumed_policy.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_history_round_trip():
    h = GRPOHistory(iterations=[0], seconds=1.5)
    assert GRPOHistory.from_dict(h.to_dict()) == h
