import copy
import dataclasses
import math
import typing

import pytest
import torch

from llmbook.data.batching import random_batch
from llmbook.train.evaluate import evaluate
from llmbook.train.loop import TrainConfig, train
from llmbook.train.optim import param_groups
from llmbook.train.schedule import warmup_cosine
from tests.conftest import TEXT
from tests.conftest import tiny_model as shared_tiny_model


def tiny_model(seed=0):
    return shared_tiny_model(seed, n_layer=1)


def quick(**kw):
    return TrainConfig(
        max_steps=30, batch_size=4, lr=3e-3, warmup_steps=5, eval_interval=10, eval_batches=2, **kw
    )


def test_same_seed_gives_identical_losses():
    a = train(tiny_model(), TEXT[:1500], TEXT[1500:], quick(), progress=False)
    b = train(tiny_model(), TEXT[:1500], TEXT[1500:], quick(), progress=False)
    assert a.train_loss == b.train_loss
    assert a.val_loss == b.val_loss
    c = train(tiny_model(), TEXT[:1500], TEXT[1500:], quick(seed=7), progress=False)
    assert c.train_loss != a.train_loss


def test_training_lowers_loss_and_records_history():
    h = train(tiny_model(), TEXT[:1500], TEXT[1500:], quick(), progress=False)
    assert len(h.train_loss) == 30 and h.eval_steps == [10, 20, 30]
    assert h.train_loss[-1] < h.train_loss[0] - 1.0
    assert h.tokens_seen == 30 * 4 * 16 and h.tokens_per_second > 0
    assert h.lr[0] == pytest.approx(3e-3 / 5)


def test_one_step_changes_parameters_and_lowers_the_loss_on_its_batch():
    model = tiny_model()
    before = copy.deepcopy(model)
    config = TrainConfig(max_steps=1, batch_size=4, warmup_steps=0, eval_interval=0, seed=5)
    h = train(model, TEXT[:1500], TEXT[1500:], config, progress=False)
    assert all(not torch.equal(a, b) for a, b in zip(before.parameters(), model.parameters()))
    # The step's batch, drawn here the way the loop draws it: the loop's recorded loss is the loss of
    # this batch under the weights before the step, and after the step that loss is lower.
    x, y = random_batch(TEXT[:1500], 4, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        loss_before = float(before(x, y).loss)
        loss_after = float(model(x, y).loss)
    assert h.train_loss == [pytest.approx(loss_before, rel=1e-6)]
    assert loss_after < loss_before


def test_bf16_autocast_trains():
    h = train(tiny_model(), TEXT[:1500], TEXT[1500:], quick(precision="bfloat16"), progress=False)
    assert math.isfinite(h.final_val_loss) and h.train_loss[-1] < h.train_loss[0]


def test_param_groups_decay_matrices_only():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(
        p.dim() < 2 for p in no_decay["params"]
    )
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == model.num_params()  # the tied embedding/head matrix counted once


def test_warmup_cosine_shape():
    kw = dict(max_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)
    assert warmup_cosine(60, **kw) == pytest.approx(0.55)
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)
    assert warmup_cosine(500, **kw) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"max_steps": 0}, "max_steps"),
        ({"lr": -1.0}, "lr"),
        ({"min_lr": 1.0}, "min_lr"),
        ({"precision": "fp8"}, "precision"),
        ({"beta2": 1.0}, "beta2"),
        ({"eval_batches": 0}, "eval_batches"),
        ({"bos_id": -1}, "bos_id"),
    ],
)
def test_bad_train_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        TrainConfig(**kw)


FLOAT_FIELDS = [
    f.name
    for f in dataclasses.fields(TrainConfig)
    if float in typing.get_args(typing.get_type_hints(TrainConfig)[f.name])
    or typing.get_type_hints(TrainConfig)[f.name] is float
]


def test_the_float_fields_are_the_ones_expected():
    # So that the parametrisation below cannot silently cover nothing.
    expected = {"lr", "min_lr", "decay_fraction", "weight_decay", "beta1", "beta2", "grad_clip"}
    assert set(FLOAT_FIELDS) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_every_float_field_refuses_nan_and_inf(field, value):
    # NaN passed every range check (nan < 0 is False): grad_clip=nan switched clipping off silently.
    with pytest.raises(ValueError, match=rf"^{field}: must be a finite number"):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=rf"^{field}: must be a finite number"):
        TrainConfig.from_dict({field: value})


def test_evaluate_equals_mean_loss_over_all_targets():
    model = tiny_model().eval()
    ids = TEXT[:200]
    result = evaluate(model, ids, block_size=16, batch_size=3)
    # Reference: the same non-overlapping windows, loss summed by hand.
    total, count = 0.0, 0
    for start in range(0, 199, 16):
        x = ids[start : start + 16]
        y = ids[start + 1 : start + 17]
        x = x[: len(y)]
        logits = model(x[None]).logits[0]
        total += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        count += len(y)
    assert result.n_tokens == count == 199
    assert result.loss == pytest.approx(total / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert result.bits_per_byte == pytest.approx(result.loss / math.log(2))


def test_quick_estimate_spreads_batches_over_the_split():
    model = tiny_model().eval()
    ids = TEXT[:1000]
    quick = evaluate(model, ids, block_size=16, batch_size=2, max_batches=4)
    # By hand: 999 targets in windows of 16 are 62 full windows and one of 7, so 32 batches of two
    # windows; 4 evenly spaced batches are 0, 10, 21 and 31 (round(31 k / 3)), i.e. windows
    # 0, 1, 20, 21, 42, 43 and the short window 62: 6 * 16 + 7 = 103 targets.
    total, count = 0.0, 0
    with torch.no_grad():
        for w in (0, 1, 20, 21, 42, 43, 62):
            y = ids[16 * w + 1 : 16 * w + 17]
            x = ids[16 * w : 16 * w + len(y)]
            logits = model(x[None]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            count += len(y)
    assert quick.n_tokens == count == 103
    assert quick.loss == pytest.approx(total / count, rel=1e-5)
