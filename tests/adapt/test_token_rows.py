"""Trainable rows: only the chosen rows change, merging is exact, peft's trainable tokens agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmbook.adapt.lora import inject_lora
from llmbook.adapt.token_rows import TrainableRows, merge_rows, train_rows
from tests.conftest import tiny_model

LLAMA = dict(
    norm="rmsnorm",
    pos_embedding="rope",
    mlp="swiglu",
    bias=False,
    n_head=4,
    n_kv_head=2,
    tie_weights=False,
)


def test_starts_equal_and_only_rows_train():
    model = tiny_model(**LLAMA)
    x = torch.randint(0, 256, (2, 16))
    x[0, :4] = torch.tensor([3, 200, 3, 200])
    before = model(x).logits
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, r=2, alpha=4.0, seed=0)
    assert train_rows(model, [3, 200]) == ["tok_emb", "lm_head"]
    torch.testing.assert_close(model(x).logits, before, rtol=0, atol=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"tok_emb.delta", "lm_head.delta"} <= trainable
    assert not any(n.endswith(("tok_emb.base.weight", "lm_head.base.weight")) for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        out = model(x, x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    merge_rows(model)
    emb = model.tok_emb.weight
    assert isinstance(model.tok_emb, nn.Embedding) and isinstance(model.lm_head, nn.Linear)
    changed = (emb != sd["tok_emb.weight"]).any(-1).nonzero().flatten().tolist()
    assert changed == [3, 200]
    changed = (model.lm_head.weight != sd["lm_head.weight"]).any(-1).nonzero().flatten().tolist()
    assert changed == [3, 200]


def test_merge_is_exact_and_weight_reads_the_base():
    layer = nn.Linear(8, 5)
    wrapped = TrainableRows(layer, [1, 4])
    assert wrapped.weight is layer.weight
    with torch.no_grad():
        wrapped.delta.normal_()
    x = torch.randn(3, 8)
    y = wrapped(x)
    merged = wrapped.merged()
    assert merged is layer and layer.weight.requires_grad
    torch.testing.assert_close(merged(x), y)


def test_bf16_keeps_dtype():
    emb = nn.Embedding(10, 4).to(torch.bfloat16)
    wrapped = TrainableRows(emb, [0])
    assert wrapped(torch.tensor([[0, 1]])).dtype == torch.bfloat16
    assert wrapped.delta.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "rows, match", [([], "rows"), ([1, 1], "rows"), ([10], "rows"), ([-1], "rows")]
)
def test_bad_rows(rows, match):
    with pytest.raises(ValueError, match=f"^{match}"):
        TrainableRows(nn.Embedding(10, 4), rows)


def test_refusals():
    with pytest.raises(ValueError, match="^base"):
        TrainableRows(nn.Conv1d(2, 2, 1), [0])
    tied = tiny_model(tie_weights=True)
    with pytest.raises(ValueError, match="^model"):
        train_rows(tied, [1])
    with pytest.raises(ValueError, match="^names"):
        train_rows(tiny_model(**LLAMA), [1], names=("nope",))


def test_parity_with_peft_trainable_tokens():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    emb_a = nn.Embedding(12, 6)
    emb_b = nn.Embedding(12, 6)
    emb_b.load_state_dict(emb_a.state_dict())
    rows = [2, 7, 9]
    mine = TrainableRows(emb_a, rows)
    with torch.no_grad():
        mine.delta.normal_()
    holder = nn.Module()
    holder.emb = emb_b
    theirs = peft.get_peft_model(
        holder, peft.TrainableTokensConfig(target_modules=["emb"], token_indices=rows)
    )
    layer = theirs.base_model.model.emb
    with torch.no_grad():  # peft stores the rows' new values; llmbook stores their change
        layer.trainable_tokens_delta["default"].copy_(emb_a.weight[rows] + mine.delta)
    ids = torch.tensor([[2, 3, 9, 7, 7, 0]])
    out_mine, out_theirs = mine(ids), layer(ids)
    torch.testing.assert_close(out_mine, out_theirs)
    weights = torch.randn_like(out_mine)
    (out_mine * weights).sum().backward()
    (out_theirs * weights).sum().backward()
    torch.testing.assert_close(mine.delta.grad, layer.trainable_tokens_delta["default"].grad)
