import math

import pytest
import torch

from llmbook.baselines import BigramConfig, BigramLM, bigram_counts, smoothed_log_probs
from llmbook.train.evaluate import evaluate
from llmbook.train.loop import TrainConfig, train


def test_counts_by_hand():
    counts = bigram_counts([0, 1, 0, 1, 1], 2)
    assert counts.tolist() == [[0, 2], [1, 1]]
    assert counts.dtype == torch.int64


def test_counts_of_a_stream_too_short_for_a_pair():
    assert bigram_counts([3], 4).sum() == 0
    assert bigram_counts([], 4).shape == (4, 4)


@pytest.mark.parametrize("ids", [[0, 4], [-1, 0]])
def test_counts_refuse_ids_outside_the_vocabulary(ids):
    with pytest.raises(ValueError, match="ids:"):
        bigram_counts(ids, 4)


def test_add_one_smoothing_by_hand():
    counts = torch.tensor([[0, 2], [1, 1]])
    p = smoothed_log_probs(counts, 1.0).exp()
    torch.testing.assert_close(p, torch.tensor([[1 / 4, 3 / 4], [2 / 4, 2 / 4]]))


def test_rows_are_distributions_and_alpha_zero_is_the_maximum_likelihood():
    counts = bigram_counts(
        torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(0)), 7
    )
    for alpha in (0.0, 0.1, 1.0, 5.0):
        rows = smoothed_log_probs(counts, alpha).exp().sum(-1)
        torch.testing.assert_close(rows, torch.ones(7))
    mle = smoothed_log_probs(torch.tensor([[0, 3], [2, 2]]), 0.0)
    assert mle[0, 0] == -math.inf
    assert mle[0, 1] == 0.0


@pytest.mark.parametrize("alpha", [-0.5, math.nan, math.inf, "1"])
def test_bad_alpha_names_the_argument(alpha):
    with pytest.raises(ValueError, match="alpha:"):
        smoothed_log_probs(torch.zeros(2, 2), alpha)


@pytest.mark.parametrize(
    ("field", "value"), [("vocab_size", 0), ("block_size", -1), ("vocab_size", True)]
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        BigramConfig(**{field: value})


def test_the_counting_model_as_a_module_scores_what_the_counts_say():
    g = torch.Generator().manual_seed(1)
    train_ids = torch.randint(0, 5, (400,), generator=g)
    val_ids = torch.randint(0, 5, (129,), generator=g)
    logp = smoothed_log_probs(bigram_counts(train_ids, 5), 0.5)
    by_hand = -logp[val_ids[:-1], val_ids[1:]].mean()
    model = BigramLM.from_counts(bigram_counts(train_ids, 5), alpha=0.5, block_size=16)
    result = evaluate(model, val_ids, block_size=16, batch_size=4)
    assert result.n_tokens == 128
    assert result.loss == pytest.approx(float(by_hand), rel=1e-5)


def test_gradient_descent_on_the_table_reaches_the_counted_distribution():
    # Every row seen often: the cross-entropy's minimum over the table is the empirical conditional.
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 4, (4000,), generator=g)
    model = BigramLM(BigramConfig(vocab_size=4, block_size=32))
    x, y = ids[:-1].view(1, -1), ids[1:].view(1, -1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned = torch.softmax(model.table.detach(), -1)
    counted = smoothed_log_probs(bigram_counts(ids, 4), 0.0).exp()
    torch.testing.assert_close(learned, counted, atol=2e-3, rtol=0)


def test_the_training_loop_trains_it():
    g = torch.Generator().manual_seed(3)
    # A stream where each token is mostly followed by the next one: a bigram can learn it.
    ids = (torch.arange(2000) + (torch.rand(2000, generator=g) < 0.1).long().cumsum(0)) % 6
    model = BigramLM(BigramConfig(vocab_size=6, block_size=16))
    before = model.table.detach().clone()
    config = TrainConfig(
        max_steps=60,
        batch_size=8,
        lr=0.1,
        warmup_steps=0,
        eval_interval=0,
        weight_decay=0.0,
        seed=0,
    )
    history = train(model, ids[:1800], ids[1800:], config, progress=False)
    assert not torch.equal(before, model.table.detach())
    assert history.final_val_loss < math.log(6) - 0.5
