"""SFT with LoRA: what trains, what the history records, and the merge back to a plain model."""

from __future__ import annotations

import pytest
import torch

from llmbook.adapt.lora import lora_layers
from llmbook.align.sft import (
    SFTConfig,
    lora_rows,
    merge_lora_model,
    prepare_lora,
    prepare_model,
    render_rows,
    sft_examples,
    train_sft,
    validation_loss,
)
from llmbook.model import GPT
from llmbook.tokenizer import ByteTokenizer
from tests.align.test_sft import _base


@pytest.mark.parametrize(
    "field, value",
    [("lora_rank", -1), ("lora_alpha", 0.0), ("lora_alpha", float("nan")), ("lora_targets", [])],
)
def test_config_refuses_bad_lora_fields(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        SFTConfig(**{field: value})


def test_lora_sft_trains_adapters_and_new_rows_only_then_merges():
    base = _base()
    old_vocab = base.config.vocab_size
    model, chat = prepare_model(base, ByteTokenizer(), block_size=64)
    cfg = SFTConfig(
        tasks={"add": 1.0},
        max_steps=3,
        batch_size=8,
        warmup_steps=0,
        lr=1e-2,
        lora_rank=2,
        lora_alpha=4.0,
    )
    with pytest.raises(ValueError, match="^lora_rank"):
        prepare_lora(model, SFTConfig(), [old_vocab])
    rows = lora_rows(chat, cfg, old_vocab)
    assert rows == list(range(old_vocab, model.config.vocab_size))
    assert lora_rows(chat, SFTConfig(lora_tokens="0a0"), old_vocab) == [48, 97, *rows]
    names = prepare_lora(model, cfg, rows)
    assert len(names) == 2 * 7  # two layers, seven projections
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    examples = sft_examples(cfg, 24, split="train", seed=0)
    rows = render_rows(chat, examples)
    before = validation_loss(model, chat, rows, block_size=64)
    history = train_sft(model, chat, cfg, examples=examples, progress=False)
    after = validation_loss(model, chat, rows, block_size=64)
    assert after < before
    n_new = model.config.vocab_size - old_vocab
    C = model.config.n_embd
    adapters = sum(
        layer.lora_A.numel() + layer.lora_B.numel() for layer in lora_layers(model).values()
    )
    assert history.trainable_parameters == adapters + 2 * n_new * C
    # AdamW keeps two float32 moments per trainable number (and a scalar step per tensor).
    moments = 2 * 4 * history.trainable_parameters
    assert moments <= history.optimizer_state_bytes <= moments + 64 * 8 * 2
    for k, v in frozen.items():  # every original weight is untouched
        if k.endswith(("delta", "rows")):
            continue
        assert torch.equal(model.state_dict()[k], v), k
    x = torch.tensor([chat.prompt_ids("What is 1 plus 2?")])
    adapted = model.eval()(x).logits
    merged = merge_lora_model(model)
    assert type(merged) is GPT and not lora_layers(merged)
    assert set(merged.state_dict()) == set(_base().state_dict())
    assert all(p.requires_grad for p in merged.parameters())
    torch.testing.assert_close(merged(x).logits, adapted, rtol=1e-4, atol=1e-5)


def test_full_sft_records_every_parameter():
    model, chat = prepare_model(_base(), ByteTokenizer(), block_size=64)
    cfg = SFTConfig(tasks={"add": 1.0}, max_steps=1, batch_size=4, warmup_steps=0)
    history = train_sft(model, chat, cfg, progress=False)
    total = sum(p.numel() for p in model.parameters())
    assert history.trainable_parameters == total
    assert history.optimizer_state_bytes >= 2 * 4 * total
    assert merge_lora_model(model) is model  # nothing to merge: unchanged
