"""The PPO loop: config checks, a run that changes the policy, a one-token bandit it solves, resume."""

import math

import pytest
import torch

from llmbook.align.policy import ActorCritic, reference_model
from llmbook.align.ppo import TRAIN_KEYS, PPOHistory, evaluate_policy, ppo_examples, train_ppo
from llmbook.align.ppo_config import PPO_PROMPTS, PPOConfig
from llmbook.train.logger import TensorBoardLogger, read_scalars
from tests.align.ppo_fixtures import (
    CHAT,
    BanditReward,
    restrict_vocab,
    tiny_config,
    tiny_gpt,
    tiny_reward_model,
)


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", math.nan),
        ("lr", math.inf),
        ("value_lr", 0.0),
        ("iterations", 0),
        ("batch_size", 0),
        ("minibatch_size", 3),
        ("ppo_epochs", 0),
        ("clip", 0.0),
        ("clip", math.nan),
        ("value_clip", -0.1),
        ("value_coef", -1.0),
        ("gamma", 1.5),
        ("lam", math.nan),
        ("beta", -0.1),
        ("beta", math.inf),
        ("kl_target", 0.0),
        ("kl_estimator", "k4"),
        ("score_norm", "rank"),
        ("critic", "both"),
        ("temperature", 0.0),
        ("stop_kl", -1.0),
        ("max_new_tokens", 0),
        ("prompts", {"nope": [1]}),
        ("prompts", {"add": []}),
        ("prompts", {"add": [99]}),
        ("whiten_advantages", 1),
        ("missing_end_penalty", -1.0),
    ],
)
def test_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        PPOConfig(**{field: value})


def test_config_round_trip_and_the_reward_needs_a_source():
    cfg = PPOConfig(kl_target=6.0)
    assert PPOConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="rm_weight"):
        PPOConfig(rm_weight=0.0, verifier_weight=0.0)
    with pytest.raises(ValueError, match="beta"):
        PPOConfig(beta=0.0, kl_target=1.0)
    assert set(PPOConfig().prompts) == set(PPO_PROMPTS)


def test_ppo_examples_cover_every_cell_and_respect_the_split():
    cfg = tiny_config(prompts={"add": [1], "count": [3, 4]})
    train = ppo_examples(cfg, 30, split="train", seed=0)
    assert len(train) == 30
    assert {(e.task, e.difficulty) for e in train} == {("add", 1), ("count", 3), ("count", 4)}
    assert ppo_examples(cfg, 30, split="train", seed=0) == train
    val = ppo_examples(cfg, 30, split="val", seed=0)
    assert not {(e.task, e.problem) for e in train} & {(e.task, e.problem) for e in val}


def _models(seed=0, critic="shared"):
    policy = tiny_gpt(seed)
    rm = tiny_reward_model()
    return ActorCritic(policy, critic=critic, reward_model=rm), reference_model(policy), rm


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_one_run_changes_the_policy_and_records_everything(tmp_path, critic):
    ac, ref, rm = _models(critic=critic)
    before = [p.detach().clone() for p in ac.policy.parameters()]
    with TensorBoardLogger(tmp_path / "tb") as logger:
        history = train_ppo(ac, ref, rm, CHAT, tiny_config(), logger=logger, progress=False)
    assert history.iterations == [0, 1, 2]
    for key in TRAIN_KEYS:
        assert len(history.train[key]) == 3 and all(math.isfinite(v) for v in history.train[key])
    assert history.eval_iterations == [0, 3]
    assert any(not torch.equal(a, b) for a, b in zip(before, ac.policy.parameters()))
    # The reference stays where it was.
    assert all(torch.equal(a, b) for a, b in zip(before, ref.parameters()))
    scalars = read_scalars(tmp_path / "tb")
    assert {"ppo/kl", "ppo/rm_score", "ppo/clipfrac", "eval/accuracy"} <= set(scalars)


def test_adaptive_controller_moves_beta_and_stop_kl_cuts_epochs():
    ac, ref, rm = _models()
    cfg = tiny_config(kl_target=1e-6, beta=0.1, kl_horizon=8.0, stop_kl=1e-12, ppo_epochs=4)
    history = train_ppo(ac, ref, rm, CHAT, cfg, progress=False)
    betas = history.train["beta"]
    assert betas[1] != betas[0]
    # Any movement at all exceeds a stop_kl this small: one minibatch, then the batch is done.
    assert history.train["epochs"][-1] == 1


def test_resume_gives_the_same_run(tmp_path):
    cfg = tiny_config(iterations=4, checkpoint_interval=2)
    ac, ref, rm = _models()
    straight = train_ppo(ac, ref, rm, CHAT, cfg, checkpoint_dir=tmp_path / "a", progress=False)
    # Interrupted after two iterations (a run configured for four that stops), then resumed.
    ac2, ref2, rm2 = _models()
    partial = tiny_config(iterations=4, checkpoint_interval=2)
    object.__setattr__(partial, "iterations", 2)
    train_ppo(ac2, ref2, rm2, CHAT, partial, checkpoint_dir=tmp_path / "b", progress=False)
    # Rewrite the saved config's iteration count: the checkpoint must match the resumed config.
    import json

    for meta in (tmp_path / "b").glob("*/checkpoint.json"):
        data = json.loads(meta.read_text())
        data["train"]["iterations"] = 4
        meta.write_text(json.dumps(data))
    # Other starting weights for the policy (the checkpoint must replace them); the same reference.
    ac3, _, rm3 = _models(seed=5)
    _, ref3, _ = _models()
    resumed = train_ppo(ac3, ref3, rm3, CHAT, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert resumed.iterations == straight.iterations

    def measured(history):  # everything but the wall times
        return {k: v for k, v in history.train.items() if not k.endswith("_seconds")}

    assert measured(resumed) == measured(straight)
    assert all(t > 0 for t in resumed.train["rollout_seconds"] + resumed.train["update_seconds"])
    for a, b in zip(ac.parameters(), ac3.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_history_round_trip():
    h = PPOHistory(iterations=[0], seconds=1.5)
    assert PPOHistory.from_dict(h.to_dict()) == h


def test_one_token_bandit_converges_to_the_rewarded_token():
    # Eight arms; only the digit 7 pays. No KL penalty: the optimum is to always say 7.
    arms = [ord(c) for c in "01234567"]
    target = ord("7")
    policy = restrict_vocab(tiny_gpt(0), arms)
    ac = ActorCritic(policy)
    ref = reference_model(policy)
    bandit = BanditReward(policy.config, target)
    cfg = tiny_config(
        iterations=25,
        batch_size=32,
        minibatch_size=16,
        ppo_epochs=4,
        max_new_tokens=1,
        beta=0.0,
        missing_end_penalty=0.0,
        score_norm="none",
        lr=3e-3,
        value_lr=3e-2,
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

    start = p_target()
    assert start < 0.3
    history = train_ppo(ac, ref, bandit, CHAT, cfg, progress=False)
    assert p_target() > 0.9
    assert history.train["rm_score"][-1] > 0.8 > history.train["rm_score"][0]


def test_evaluate_policy_reports_accuracy_score_and_length():
    ac, _, rm = _models()
    examples = ppo_examples(tiny_config(), 4, split="val", seed=0)
    out = evaluate_policy(ac.policy, rm, CHAT, examples, max_new_tokens=4)
    assert set(out) == {"accuracy", "rm_score", "length"}
    assert 0.0 <= out["accuracy"] <= 1.0 and 1 <= out["length"] <= 4
