"""Training with DPO: config checks, answer log-probs, the reference, and a run that learns."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from llmbook.align.dpo import (
    DPOConfig,
    DPOHistory,
    answer_lengths,
    answer_rows,
    pair_logps,
    reference_logps,
    sampled_kl,
    sequence_logps,
    train_dpo,
)
from llmbook.align.dpo_loss import dpo_loss
from llmbook.align.preference import preference_data
from llmbook.tasks import generate_examples
from tests.align.test_reward_model import CHAT, tiny_gpt

TASKS = ["add", "reverse", "sort_letters"]
PAIRS = preference_data(24, split="train", seed=0, tasks=TASKS)
VAL = preference_data(8, split="val", seed=1, tasks=TASKS)
EXAMPLES = generate_examples(TASKS, 6, split="test", seed=2)


def _policy(seed=0):
    return tiny_gpt(seed, block_size=128)


@pytest.mark.parametrize(
    "field, value",
    [
        ("beta", 0.0),
        ("beta", float("nan")),
        ("beta", float("inf")),
        ("loss", "hinge"),
        ("label_smoothing", 0.5),
        ("label_smoothing", 0.1),  # the sigmoid loss has no smoothing
        ("lr", float("nan")),
        ("max_steps", 0),
        ("batch_size", 0),
        ("eval_interval", -1),
        ("eval_pairs", 0),
        ("eval_examples", 0),
        ("tasks", ["nope"]),
        ("kinds", []),
        ("length_bias", 1.5),
        ("sample_temperature", 0.0),
        ("seed", -1),
        ("rounds", 0),
        ("sft_coef", -0.5),
    ],
)
def test_config_refuses_bad_fields_by_name(field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        DPOConfig(**{field: value})


def test_config_round_trip_and_cdpo_smoothing():
    cfg = DPOConfig(loss="cdpo", label_smoothing=0.1, beta=0.2)
    assert DPOConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="typo"):
        DPOConfig.from_dict({**cfg.to_dict(), "typo": 1})


def test_answer_rows_mask_is_the_sft_mask():
    ids, attention, answer = answer_rows(CHAT, ["Hi", "Reverse abc."], ["hello there", "cba"])
    for b, (prompt, reply) in enumerate([("Hi", "hello there"), ("Reverse abc.", "cba")]):
        row, mask = CHAT.render_example(prompt, reply)
        n = len(row)
        assert ids[b, :n].tolist() == row and answer[b, :n].tolist() == mask
        assert bool(attention[b, :n].all()) and not bool(attention[b, n:].any())
        assert not bool(answer[b, n:].any())
    assert answer_lengths(CHAT, PAIRS[:2])[0, 0] == len(PAIRS[0].chosen.encode()) + 1
    with pytest.raises(ValueError, match="^answers"):
        answer_rows(CHAT, ["a"], ["b", "c"])


def test_sequence_logps_by_hand_and_padding_changes_nothing():
    model = _policy().eval()
    prompts, answers = ["What is 2 plus 3?", "Hi"], ["5", "a much longer answer"]
    ids, attention, answer = answer_rows(CHAT, prompts, answers)
    with torch.no_grad():
        batch = sequence_logps(model, ids, attention, answer)
        for b in range(2):
            row, mask = CHAT.render_example(prompts[b], answers[b])
            x = torch.tensor([row])
            logps = torch.log_softmax(model(x).logits[0, :-1], -1)
            by_hand = sum(float(logps[t - 1, row[t]]) for t in range(1, len(row)) if mask[t])
            assert float(batch[b]) == pytest.approx(by_hand, abs=1e-4)


def test_pair_logps_and_reference_agree():
    model = _policy().train()
    chosen, rejected = pair_logps(model, CHAT, PAIRS[:5])
    ref = reference_logps(model, CHAT, PAIRS[:5], batch_size=2)
    assert model.training  # the mode is restored
    model.eval()
    chosen, rejected = pair_logps(model, CHAT, PAIRS[:5])
    torch.testing.assert_close(ref, torch.stack([chosen, rejected], 1).detach())
    assert chosen.requires_grad and ref.shape == (5, 2)
    assert reference_logps(model, CHAT, []).shape == (0, 2)


def test_sampled_kl_is_zero_for_the_same_model_and_positive_otherwise():
    model = _policy()
    prompts = [e.prompt for e in EXAMPLES]
    assert sampled_kl(
        model, copy.deepcopy(model), CHAT, prompts, max_new_tokens=6
    ) == pytest.approx(0.0, abs=1e-6)
    other = _policy(seed=5)
    assert sampled_kl(model, other, CHAT, prompts, max_new_tokens=6) > 0.01


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    model = _policy()
    ref = reference_logps(model, CHAT, PAIRS[:8])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        chosen, rejected = pair_logps(model, CHAT, PAIRS[:8])
        loss, _ = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta=0.5)
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at the start
    assert losses[1] < losses[0]


@pytest.mark.slow
def test_a_run_learns_records_everything_and_is_deterministic():
    cfg = DPOConfig(
        tasks=TASKS,
        kinds=["off_by_one", "truncated", "extended"],
        max_steps=12,
        batch_size=8,
        lr=3e-3,
        warmup_steps=1,
        beta=0.5,
        eval_interval=6,
        seed=3,
    )
    runs = []
    for _ in range(2):
        model = _policy()
        start = copy.deepcopy(model.state_dict())
        h = train_dpo(
            model, CHAT, cfg, pairs=PAIRS, val_pairs=VAL, examples=EXAMPLES, progress=False
        )
        runs.append((h, model.state_dict()))
    h, sd = runs[0]
    assert isinstance(h, DPOHistory)
    assert h.steps == list(range(12)) and h.eval_steps == [0, 6, 12]
    for name in ("val_accuracy", "chosen_shift", "rejected_shift", "kl", "verifier_accuracy"):
        assert len(getattr(h, name)) == 3
    assert (
        h.chosen_shift[0] == 0.0
        and h.rejected_shift[0] == 0.0
        and h.kl[0] == pytest.approx(0, abs=1e-6)
    )
    assert h.margin[-1] > 0 and h.train_loss[-1] < math.log(2)
    assert h.chosen_shift[-1] - h.rejected_shift[-1] > 0  # the gap grew
    assert h.kl[-1] > 0
    assert any(not torch.equal(sd[k], start[k]) for k in sd)
    assert DPOHistory.from_dict(h.to_dict()) == h
    h2, sd2 = runs[1]
    assert h2.train_loss == h.train_loss and all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_ipo_run_uses_lengths():
    cfg = DPOConfig(
        tasks=TASKS, loss="ipo", max_steps=2, batch_size=4, eval_interval=0, lr=1e-3, warmup_steps=0
    )
    h = train_dpo(
        _policy(), CHAT, cfg, pairs=PAIRS, val_pairs=VAL, examples=EXAMPLES[:2], progress=False
    )
    assert len(h.train_loss) == 2 and all(math.isfinite(v) for v in h.train_loss)
    assert h.eval_steps == [0, 2]


def test_rounds_must_divide_the_steps_and_fixed_pairs_take_one_round():
    with pytest.raises(ValueError, match="^rounds"):
        DPOConfig(max_steps=10, rounds=3)
    assert DPOConfig(max_steps=12, rounds=3).steps_per_round == 4
    cfg = DPOConfig(tasks=TASKS, max_steps=2, rounds=2)
    with pytest.raises(ValueError, match="^pairs"):
        train_dpo(
            _policy(), CHAT, cfg, pairs=PAIRS, val_pairs=VAL, examples=EXAMPLES, progress=False
        )


def test_rounds_build_fresh_pairs_from_the_config():
    cfg = DPOConfig(
        tasks=TASKS,
        kinds=["off_by_one", "truncated"],
        max_steps=4,
        rounds=2,
        batch_size=3,
        eval_interval=0,
        eval_pairs=4,
        lr=1e-3,
        warmup_steps=0,
        seed=1,
    )
    h = train_dpo(_policy(), CHAT, cfg, examples=EXAMPLES[:2], progress=False)
    assert h.data["n"] == 2 * 2 * 3  # two rounds of steps_per_round * batch_size pairs
    assert set(h.data["kinds"]) <= {"off_by_one", "truncated"}


def test_a_policy_without_wrong_finished_answers_is_named():
    # An untrained tiny model rarely ends its answers, so its samples give no pairs: the error
    # says which round failed instead of a bare count.
    cfg = DPOConfig(
        tasks=["add"], kinds=["sample"], max_steps=1, batch_size=64, eval_pairs=1, sample_examples=8
    )
    with pytest.raises(ValueError, match="^rounds: round 0"):
        train_dpo(_policy(), CHAT, cfg, val_pairs=VAL, examples=EXAMPLES[:1], progress=False)


def test_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="pairs"):
        train_dpo(
            _policy(),
            CHAT,
            DPOConfig(tasks=TASKS, max_steps=1),
            pairs=[],
            val_pairs=VAL,
            examples=EXAMPLES,
            progress=False,
        )
