"""Training a reward model: config checks, batching, the data a config describes, and a run that learns."""

import math
from types import SimpleNamespace

import pytest
import torch

import llmbook.align.reward as reward_module
from llmbook.align.preference import REJECTION_KINDS, pair_stats, preference_data
from llmbook.align.reward import (
    RewardConfig,
    RewardHistory,
    pair_batch,
    pair_rewards,
    pairwise_accuracy,
    reward_data,
    reward_model_from,
    sft_samples,
    train_reward,
)
from llmbook.align.reward_loss import bradley_terry_loss
from llmbook.align.reward_model import RewardModel, render_scored, score
from tests.align.test_reward_model import CHAT, tiny_gpt


def _policy(seed=0):
    return tiny_gpt(seed, block_size=128)


PAIRS = preference_data(16, split="train", seed=0, tasks=["add", "reverse", "sort_letters"])
VAL = preference_data(8, split="val", seed=1, tasks=["add", "reverse", "sort_letters"])


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("lr", 0.0),
        ("min_lr", 1.0),
        ("tasks", ["nope"]),
        ("tasks", []),
        ("tasks", ("add",)),
        ("kinds", ["typo"]),
        ("kinds", []),
        ("length_bias", 1.5),
        ("length_bias", float("nan")),
        ("equal_share", -0.1),
        ("pooling", "max"),
        ("loss", "mse"),
        ("margin", -1.0),
        ("margin", float("nan")),
        ("center_coef", -0.1),
        ("center_coef", float("inf")),
        ("causal", 1),
        ("max_steps", 0),
        ("max_steps", 2.5),
        ("batch_size", 0),
        ("eval_pairs", 0),
        ("warmup_steps", -1),
        ("sample_temperature", 0.0),
        ("grad_clip", -1.0),
        ("seed", -1),
        ("sample_examples", -1),
        ("sample_examples", 1.5),
    ],
)
def test_config_refuses_bad_values_by_name(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        RewardConfig(**{field: value})


def test_centering_goes_with_bradley_terry_only():
    with pytest.raises(ValueError, match="^center_coef:"):
        RewardConfig(loss="margin_ranking", center_coef=0.01)
    RewardConfig(loss="bradley_terry", center_coef=0.01)
    RewardConfig(loss="margin_ranking", margin=1.0)


def test_config_round_trips_through_a_dict():
    cfg = RewardConfig(
        tasks=["add", "reverse"],
        kinds=["off_by_one", "sample"],
        length_bias=0.9,
        pooling="mean",
        causal=False,
        loss="margin_ranking",
        margin=0.5,
        max_steps=7,
    )
    data = cfg.to_dict()
    assert RewardConfig.from_dict(data) == cfg
    import json

    assert RewardConfig.from_dict(json.loads(json.dumps(data))) == cfg
    assert RewardConfig().kinds == list(REJECTION_KINDS)
    with pytest.raises(ValueError, match="^temperature:"):
        RewardConfig.from_dict({**data, "temperature": 1.0})
    with pytest.raises(ValueError, match="^max_steps:"):
        RewardConfig.from_dict({**data, "max_steps": "7"})


def test_pair_batch_stacks_chosen_then_rejected():
    ids, mask = pair_batch(CHAT, PAIRS[:3])
    assert ids.shape[0] == 6 and mask.shape == ids.shape
    for i, p in enumerate(PAIRS[:3]):
        chosen, rejected = (
            render_scored(CHAT, p.prompt, p.chosen),
            render_scored(CHAT, p.prompt, p.rejected),
        )
        assert ids[i, : len(chosen)].tolist() == chosen and int(mask[i].sum()) == len(chosen)
        assert ids[3 + i, : len(rejected)].tolist() == rejected
    left, left_mask = pair_batch(CHAT, PAIRS[:3], side="left")
    assert bool(left_mask[:, -1].all())


def test_pair_rewards_and_accuracy_agree_with_score():
    model = reward_model_from(_policy(), RewardConfig()).eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)  # visible differences
    chosen, rejected = pair_rewards(model, CHAT, PAIRS)
    prompts = [p.prompt for p in PAIRS]
    torch.testing.assert_close(chosen, score(model, CHAT, prompts, [p.chosen for p in PAIRS]))
    torch.testing.assert_close(rejected, score(model, CHAT, prompts, [p.rejected for p in PAIRS]))
    acc = pairwise_accuracy(model, CHAT, PAIRS)
    assert acc == pytest.approx(float((chosen > rejected).float().mean()))
    assert 0.0 < acc < 1.0  # an untrained model gets some right and some wrong
    assert math.isnan(pairwise_accuracy(model, CHAT, []))


def test_reward_data_follows_the_config():
    cfg = RewardConfig(
        tasks=["add", "count"], kinds=["off_by_one", "truncated", "sample"], length_bias=0.9
    )
    pairs = reward_data(cfg, 200, split="test", seed=2)
    stats = pair_stats(pairs)
    assert len(pairs) == 200 and set(stats["tasks"]) <= {"add", "count"}
    assert set(stats["kinds"]) <= {"off_by_one", "truncated"}  # no sampler: "sample" is left out
    assert pairs == reward_data(cfg, 200, split="test", seed=2)
    with_samples = reward_data(
        cfg,
        50,
        split="test",
        seed=2,
        samples_for=lambda examples: [[e.answer + "7"] for e in examples],
    )
    assert "sample" in pair_stats(with_samples)["kinds"]


def test_reward_model_from_copies_the_policy_and_seeds_the_head():
    policy = _policy()
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = RewardConfig(pooling="mean", causal=False, seed=3)
    a, b = reward_model_from(policy, cfg), reward_model_from(policy, cfg)
    assert isinstance(a, RewardModel) and a.training
    assert a.pooling == "mean" and a.causal is False
    assert a.backbone is not policy
    assert all(
        x.data_ptr() != y.data_ptr() for x, y in zip(a.backbone.parameters(), policy.parameters())
    )
    torch.testing.assert_close(a.head.weight, b.head.weight)
    c = reward_model_from(policy, RewardConfig(seed=4))
    assert not torch.equal(a.head.weight, c.head.weight)
    with torch.no_grad():
        a.backbone.tok_emb.weight.add_(1.0)
    assert all(torch.equal(x, y) for x, y in zip(before, policy.parameters()))


def _fixed_batch_config(**overrides):
    # Every step sees the same 16 pairs (the batch is the whole set), at a constant rate.
    base = dict(
        tasks=["add", "reverse", "sort_letters"],
        max_steps=12,
        batch_size=16,
        lr=3e-3,
        min_lr=3e-3,
        warmup_steps=0,
        eval_pairs=8,
        seed=0,
    )
    return RewardConfig(**{**base, **overrides})


def _batch_loss(model, pairs):
    chosen, rejected = pair_rewards(model, CHAT, pairs)
    return float(bradley_terry_loss(chosen, rejected)[0])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"pooling": "mean", "causal": False},
        {"loss": "margin_ranking", "margin": 1.0},
        {"margin": 0.5, "center_coef": 0.01},
    ],
)
def test_train_reward_lowers_the_loss_on_a_fixed_batch_and_changes_the_parameters(overrides):
    policy = _policy()
    policy_before = [p.detach().clone() for p in policy.parameters()]
    cfg = _fixed_batch_config(**overrides)
    model = reward_model_from(policy, cfg)
    before = [p.detach().clone() for p in model.parameters()]
    loss_before = _batch_loss(model, PAIRS)
    history = train_reward(model, CHAT, cfg, pairs=PAIRS, val_pairs=VAL, progress=False)
    assert _batch_loss(model, PAIRS) < loss_before
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.steps == list(range(12))
    assert len(history.train_loss) == len(history.train_accuracy) == len(history.margin) == 12
    assert history.margin[-1] > history.margin[0]
    names = [name for name, _ in model.named_parameters()]
    changed = {n: not torch.equal(a, b) for n, a, b in zip(names, before, model.parameters())}
    assert changed["head.weight"]
    assert any(changed[n] for n in names if n.startswith("backbone.blocks."))
    assert all(torch.equal(a, b) for a, b in zip(policy_before, policy.parameters()))
    assert not model.training
    assert history.val_accuracy == pytest.approx(pairwise_accuracy(model, CHAT, VAL))
    assert history.data == pair_stats(PAIRS)
    assert history.train_seconds > 0 and history.data_seconds >= 0


def test_the_head_bias_gets_no_gradient_from_a_pairwise_loss_and_some_from_centering():
    # Both losses depend on r_c - r_r only: the bias b enters both rewards and cancels.
    model = reward_model_from(_policy(), RewardConfig())
    ids, mask = pair_batch(CHAT, PAIRS)
    for center_coef in (0.0, 0.1):
        model.zero_grad()
        chosen, rejected = model(ids, mask).chunk(2)
        bradley_terry_loss(chosen, rejected, center_coef=center_coef)[0].backward()
        grad = float(model.head.bias.grad.abs())
        assert (grad < 1e-6) if center_coef == 0.0 else (grad > 1e-4)


def test_train_reward_is_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        cfg = _fixed_batch_config(max_steps=3)
        model = reward_model_from(_policy(), cfg)
        history = train_reward(model, CHAT, cfg, pairs=PAIRS, val_pairs=VAL, progress=False)
        runs.append((history.train_loss, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_train_reward_builds_its_own_data_when_given_none():
    cfg = _fixed_batch_config(max_steps=2, batch_size=4, eval_pairs=4, kinds=["off_by_one", "swap"])
    model = reward_model_from(_policy(), cfg)
    history = train_reward(model, CHAT, cfg, progress=False)
    assert history.data["n"] == 2 * 4
    assert set(history.data["kinds"]) <= {"off_by_one", "swap"}
    assert 0.0 <= history.val_accuracy <= 1.0
    d = history.to_dict()
    assert set(d) == {f for f in RewardHistory.__dataclass_fields__}


def test_a_non_finite_loss_stops_training(monkeypatch):
    def nan_loss(chosen, rejected, **kwargs):
        loss = (chosen - rejected).mean() * float("nan")
        return loss, {"loss": float("nan"), "accuracy": 0.0, "margin": 0.0}

    monkeypatch.setattr(reward_module, "bradley_terry_loss", nan_loss)
    cfg = _fixed_batch_config(max_steps=2)
    model = reward_model_from(_policy(), cfg)
    with pytest.raises(FloatingPointError, match="step 0"):
        train_reward(model, CHAT, cfg, pairs=PAIRS, val_pairs=VAL, progress=False)


def test_sft_samples_keeps_finished_answers_and_passes_the_sampling_settings(monkeypatch):
    seen = {}

    def fake_complete(model, chat, prompts, **kwargs):
        seen.update(kwargs, prompts=list(prompts))
        return [
            [
                SimpleNamespace(text=p + "!", finished=True),
                SimpleNamespace(text="cut", finished=False),
            ]
            for p in prompts
        ]

    monkeypatch.setattr(reward_module, "complete", fake_complete)
    sampler = sft_samples(_policy(), CHAT, n_samples=2, temperature=0.7, seed=5)
    out = sampler([p.example for p in VAL[:3]])
    assert out == [[p.prompt + "!"] for p in VAL[:3]]
    assert seen["prompts"] == [p.prompt for p in VAL[:3]]
    assert seen["n_samples"] == 2 and seen["temperature"] == 0.7
    assert isinstance(seen["generator"], torch.Generator)


def test_sft_samples_stops_sampling_after_its_limit_over_all_calls(monkeypatch):
    asked = []

    def fake_complete(model, chat, prompts, **kwargs):
        asked.append(list(prompts))
        return [[SimpleNamespace(text="x", finished=True)] for _ in prompts]

    monkeypatch.setattr(reward_module, "complete", fake_complete)
    sampler = sft_samples(_policy(), CHAT, limit=5)
    examples = [p.example for p in VAL[:4]]
    assert sampler(examples) == [["x"]] * 4
    assert sampler(examples) == [["x"], [], [], []]
    assert sampler(examples) == [[]] * 4
    assert [len(a) for a in asked] == [4, 1]  # the third call sampled nothing


def test_sft_samples_on_a_real_model_is_seeded():
    examples = [p.example for p in VAL[:3]]
    a = sft_samples(_policy(), CHAT, n_samples=2, seed=1)(examples)
    b = sft_samples(_policy(), CHAT, n_samples=2, seed=1)(examples)
    assert a == b and len(a) == 3
    assert all(isinstance(s, str) for row in a for s in row) and all(len(row) <= 2 for row in a)
