import pytest
import torch

from llmbook.baselines import NGramMLP, NGramMLPConfig, context_windows
from llmbook.train.loop import TrainConfig, train


def test_context_windows_by_hand():
    idx = torch.tensor([[5, 6, 7, 8]])
    out = context_windows(idx, 3, pad_id=0)
    assert out.tolist() == [[[0, 0, 5], [0, 5, 6], [5, 6, 7], [6, 7, 8]]]


def test_a_context_longer_than_the_window_is_all_padding_before_the_start():
    out = context_windows(torch.tensor([[1, 2]]), 4, pad_id=9)
    assert out.tolist() == [[[9, 9, 9, 1], [9, 9, 1, 2]]]


@pytest.mark.parametrize(
    ("field", "value"), [("context", 0), ("hidden", -3), ("n_embd", 2.5), ("block_size", None)]
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        NGramMLPConfig(**{field: value})


def test_each_position_sees_exactly_the_last_n_tokens():
    torch.manual_seed(0)
    n, T = 3, 10
    model = NGramMLP(NGramMLPConfig(vocab_size=11, context=n, n_embd=8, hidden=16))
    idx = torch.randint(0, 11, (2, T))
    base = model(idx).logits
    t = 4
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 11
    moved = (model(changed).logits - base).abs().amax(dim=(0, 2))  # (T,)
    # Position t' depends on tokens t'-n+1..t': a change at t shows at t..t+n-1 and nowhere else.
    assert (moved[:t] == 0).all()
    assert (moved[t : t + n] > 0).all()
    assert (moved[t + n :] == 0).all()


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = NGramMLP(NGramMLPConfig(vocab_size=13, context=2, n_embd=8, hidden=32))
    x = torch.randint(0, 13, (4, 12))
    y = torch.roll(x, -1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, before = model(x, y)
    before.backward()
    opt.step()
    _, after = model(x, y)
    assert after < before


def test_the_training_loop_trains_it():
    ids = torch.arange(3000) % 7  # fully predictable from the previous token
    torch.manual_seed(0)
    model = NGramMLP(NGramMLPConfig(vocab_size=7, block_size=16, context=2, n_embd=8, hidden=32))
    config = TrainConfig(
        max_steps=80, batch_size=8, lr=1e-2, warmup_steps=0, eval_interval=0, seed=0
    )
    history = train(model, ids[:2700], ids[2700:], config, progress=False)
    assert history.final_val_loss < 0.1
