"""The fine-tuning loop: config validation, model preparation, one step learns, a tiny run learns."""

import math

import pytest
import torch

from llmbook.align.chat import ChatFormat, chat_tokenizer
from llmbook.align.evaluate import evaluate_tasks, task_examples
from llmbook.align.sft import (
    SFTConfig,
    prepare_model,
    render_rows,
    sft_examples,
    train_sft,
    validation_loss,
)
from llmbook.model import GPT, ModelConfig
from llmbook.tokenizer import ByteTokenizer


def _base(**overrides):
    torch.manual_seed(0)
    cfg = dict(
        vocab_size=259,
        block_size=32,
        n_layer=2,
        n_head=2,
        n_embd=32,
        pos_embedding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        tie_weights=False,
    )
    return GPT(ModelConfig(**{**cfg, **overrides}))


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("grad_clip", float("nan")),
        ("min_lr", 1.0),
        ("max_steps", 0),
        ("reduction", "mean"),
        ("packing", "zip"),
        ("schedule", "backwards"),
        ("tasks", {}),
        ("tasks", {"add": float("nan")}),
        ("tasks", {"nope": 1.0}),
        ("difficulty", {"add": [9]}),
    ],
)
def test_config_refuses_bad_values_by_name(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        SFTConfig(**{field: value})


def test_config_round_trips_through_a_dict():
    cfg = SFTConfig(tasks={"add": 2.0, "reverse": 1.0}, max_steps=7, packing="pack")
    assert SFTConfig.from_dict(cfg.to_dict()) == cfg


def test_prepare_model_grows_vocab_and_context():
    model = _base()
    before = model(torch.tensor([[256, 72, 105]])).logits
    model, chat = prepare_model(model, ByteTokenizer(), block_size=96)
    assert model.config.vocab_size == 262 == chat.tokenizer.vocab_size
    assert model.config.block_size == 96
    after = model(torch.tensor([[256, 72, 105]])).logits
    # Old tokens' logits are untouched (up to the matmul's blocking for a wider output).
    torch.testing.assert_close(after[..., :259], before, atol=1e-6, rtol=1e-6)
    ids, _ = chat.render_example("x" * 60, "y")  # longer than the base context of 32
    assert model(torch.tensor([ids])).logits.shape[1] == len(ids) > 32


def test_prepare_model_refusals():
    with pytest.raises(ValueError, match="block_size"):
        prepare_model(_base(), ByteTokenizer(), block_size=16)
    learned = _base(pos_embedding="learned")
    with pytest.raises(ValueError, match="block_size: a learned position table"):
        prepare_model(learned, ByteTokenizer(), block_size=64)


def test_examples_come_from_the_split_in_the_schedule_order():
    cfg = SFTConfig(tasks={"add": 1.0, "reverse": 1.0}, schedule="easy_to_hard")
    examples = sft_examples(cfg, 200, split="val", seed=3)
    from llmbook.tasks import difficulty_score, split_of

    assert all(split_of(e.task, e.problem) == "val" for e in examples)
    scores = [difficulty_score(e) for e in examples]
    assert scores == sorted(scores)
    assert sft_examples(cfg, 200, split="val", seed=3) == examples


def test_one_step_changes_the_parameters_and_lowers_the_loss_on_that_batch():
    model, chat = prepare_model(_base(), ByteTokenizer(), block_size=64)
    cfg = SFTConfig(tasks={"add": 1.0}, max_steps=1, batch_size=8, warmup_steps=0, lr=3e-3)
    examples = sft_examples(cfg, 8, split="train", seed=0)
    rows = render_rows(chat, examples)
    before_params = [p.detach().clone() for p in model.parameters()]
    before = validation_loss(model, chat, rows, block_size=64)
    train_sft(model, chat, cfg, examples=examples, progress=False)
    after = validation_loss(model, chat, rows, block_size=64)
    assert any(not torch.equal(a, b) for a, b in zip(before_params, model.parameters()))
    assert after < before


def test_padding_and_packing_take_the_same_first_step():
    # Same examples, same loss (token mean over the same answer tokens): the same update.
    results = []
    for packing in ("pad", "pack"):
        model, chat = prepare_model(_base(), ByteTokenizer(), block_size=64)
        cfg = SFTConfig(tasks={"reverse": 1.0}, max_steps=1, batch_size=6, packing=packing)
        examples = sft_examples(cfg, 6, split="train", seed=1)
        history = train_sft(model, chat, cfg, examples=examples, progress=False)
        results.append((history.train_loss[0], [p.detach().clone() for p in model.parameters()]))
    (loss_pad, params_pad), (loss_pack, params_pack) = results
    assert loss_pad == pytest.approx(loss_pack, rel=1e-5)
    for a, b in zip(params_pad, params_pack):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_history_counts_answer_tokens_and_padding():
    model, chat = prepare_model(_base(), ByteTokenizer(), block_size=64)
    cfg = SFTConfig(tasks={"compare": 1.0}, max_steps=3, batch_size=4, eval_interval=2)
    examples = sft_examples(cfg, 12, split="train", seed=0)
    history = train_sft(model, chat, cfg, examples=examples, progress=False)
    # Each answer token plus each example's <|end|> counts once.
    n_answer = sum(len(chat.tokenizer.encode(e.answer)) + 1 for e in examples)
    assert history.answer_tokens[-1] == n_answer
    assert history.eval_steps == [2, 3] and len(history.val_loss) == 2
    assert 0.0 < history.padding_fraction < 1.0
    assert not model.training


@pytest.mark.slow
def test_a_tiny_run_learns_to_compare():
    # `compare` at one digit: the answer is one of the two numbers in the prompt. A model that has
    # learned the format but not the comparison picks one of them: at best 1/2 in expectation (it
    # cannot know which is larger). Above 0.9 on held-out problems means it compares.
    torch.manual_seed(0)
    model, chat = prepare_model(_base(n_embd=48), ByteTokenizer(), block_size=64)
    cfg = SFTConfig(
        tasks={"compare": 1.0},
        difficulty={"compare": [1]},
        max_steps=400,
        batch_size=32,
        lr=3e-3,
        warmup_steps=20,
        packing="pack",
    )
    train_sft(model, chat, cfg, progress=False)
    report = evaluate_tasks(model, chat, task_examples(["compare"], 40, split="val", seed=0))
    [row] = [r for r in report.accuracy(by=("task", "difficulty")) if r["difficulty"] == 1]
    assert row["accuracy"] > 0.9, row


def test_block_size_beyond_the_model_is_refused():
    model, chat = prepare_model(_base(), ByteTokenizer(), block_size=48)
    with pytest.raises(ValueError, match="block_size"):
        train_sft(model, chat, SFTConfig(block_size=64, max_steps=1), progress=False)
    assert math.isfinite(ChatFormat(chat_tokenizer(ByteTokenizer())).end_id)
