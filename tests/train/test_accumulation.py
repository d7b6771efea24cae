"""Gradient accumulation and mixed precision (Parts 4.3 and 4.4)."""

import math

import pytest
import torch

from llmbook.data.batching import IGNORE_INDEX
from llmbook.train.loop import TrainConfig, accumulate_gradients, autocast, train
from tests.conftest import TEXT, tiny_model


def grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("k", [2, 4, 8])
def test_k_micro_batches_give_the_full_batch_gradient(k):
    torch.manual_seed(1)
    x = torch.randint(0, 256, (8, 16))
    y = torch.randint(0, 256, (8, 16))
    full = tiny_model()
    _, loss = full(x, y)
    loss.backward()
    acc = tiny_model()
    loss_acc = accumulate_gradients(acc, x, y, micro_batches=k)
    assert float(loss_acc) == pytest.approx(float(loss.detach()), rel=1e-6)
    for g_full, g_acc in zip(grads(full), grads(acc)):
        torch.testing.assert_close(g_acc, g_full, rtol=1e-5, atol=1e-6)


def test_accumulation_weights_micro_batches_by_their_target_count():
    # Ignored positions make micro-batches unequal: a plain average of their mean losses would be wrong.
    torch.manual_seed(2)
    x = torch.randint(0, 256, (4, 16))
    y = torch.randint(0, 256, (4, 16))
    y[0, 3:] = IGNORE_INDEX  # row 0 has 3 targets, the others 16
    y[1, :10] = IGNORE_INDEX
    full = tiny_model()
    _, loss = full(x, y)
    loss.backward()
    acc = tiny_model()
    accumulate_gradients(acc, x, y, micro_batches=4)
    for g_full, g_acc in zip(grads(full), grads(acc)):
        torch.testing.assert_close(g_acc, g_full, rtol=1e-5, atol=1e-6)
    naive = tiny_model()
    for i in range(4):  # the naive rule: average the 4 micro-batch means
        _, li = naive(x[i : i + 1], y[i : i + 1])
        (li / 4).backward()
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads(naive), grads(full)))


def test_micro_batches_must_divide_the_batch():
    with pytest.raises(ValueError, match="micro_batches"):
        accumulate_gradients(
            tiny_model(), torch.zeros(6, 4).long(), torch.zeros(6, 4).long(), micro_batches=4
        )
    with pytest.raises(ValueError, match="grad_accum_steps"):
        TrainConfig(batch_size=6, grad_accum_steps=4)


def test_accumulated_training_follows_the_full_batch_trajectory():
    cfg = dict(max_steps=15, batch_size=8, lr=3e-3, warmup_steps=3, eval_interval=0)
    a = train(tiny_model(), TEXT[:1500], TEXT[1500:], TrainConfig(**cfg), progress=False)
    b = train(
        tiny_model(),
        TEXT[:1500],
        TEXT[1500:],
        TrainConfig(grad_accum_steps=4, **cfg),
        progress=False,
    )
    assert a.tokens_seen == b.tokens_seen
    for la, lb in zip(a.train_loss, b.train_loss):
        assert lb == pytest.approx(la, abs=1e-4)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_trains_close_to_fp32(precision):
    cfg = dict(max_steps=30, batch_size=4, lr=3e-3, warmup_steps=5, eval_interval=0)
    ref = train(tiny_model(), TEXT[:1500], TEXT[1500:], TrainConfig(**cfg), progress=False)
    low = train(
        tiny_model(),
        TEXT[:1500],
        TEXT[1500:],
        TrainConfig(precision=precision, **cfg),
        progress=False,
    )
    assert math.isfinite(low.final_val_loss)
    assert low.train_loss[-1] < low.train_loss[0] - 1.0
    assert low.final_val_loss == pytest.approx(ref.final_val_loss, abs=0.05)


def test_autocast_runs_matmuls_in_low_precision_and_keeps_fp32_weights():
    model = tiny_model()
    x = torch.randint(0, 256, (2, 16))
    with autocast("bfloat16", "cpu"):
        logits, loss = model(x, x)
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32  # cross-entropy autocasts to fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with autocast("float32", "cpu"):
        logits, _ = model(x, x)
    assert logits.dtype == torch.float32


def test_unknown_precision_is_rejected_by_name():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="float8")
