import pytest
import torch

from llmbook.baselines import GRU, GRULM, GRUConfig, gru_cell
from llmbook.train.evaluate import evaluate
from llmbook.train.loop import TrainConfig, train


@pytest.mark.parametrize(("layers", "bias"), [(1, True), (2, True), (2, False)])
def test_equals_torch_gru_with_copied_weights(layers, bias):
    torch.manual_seed(0)
    ref = torch.nn.GRU(6, 10, layers, bias=bias, batch_first=True)
    ours = GRU(6, 10, layers, bias=bias)
    ours.load_state_dict(ref.state_dict())  # strict: the same names and shapes
    x = torch.randn(3, 7, 6, requires_grad=True)
    h0 = torch.randn(layers, 3, 10)
    out, h = ours(x, h0)
    ref_out, ref_h = ref(x, h0)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h, ref_h)
    grad = torch.autograd.grad(out.square().sum(), [x, *ours.parameters()])
    ref_grad = torch.autograd.grad(ref_out.square().sum(), [x, *ref.parameters()])
    for a, b in zip(grad, ref_grad, strict=True):
        torch.testing.assert_close(a, b)


def test_the_fused_kernel_equals_the_reference_loop():
    torch.manual_seed(3)
    reference = GRULM(GRUConfig(vocab_size=11, n_embd=8, hidden=12, n_layer=2, impl="reference"))
    fused = GRULM(GRUConfig(vocab_size=11, n_embd=8, hidden=12, n_layer=2, impl="fused"))
    fused.load_state_dict(reference.state_dict())
    idx = torch.randint(0, 11, (3, 9))
    y = torch.randint(0, 11, (3, 9))
    a, b = reference(idx, y), fused(idx, y)
    torch.testing.assert_close(a.logits, b.logits)
    ga = torch.autograd.grad(a.loss, list(reference.parameters()))
    gb = torch.autograd.grad(b.loss, list(fused.parameters()))
    for x, z in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, z)


def test_an_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="^impl:"):
        GRU(3, 4, impl="cudnn")


def test_zero_initial_state_is_the_default():
    torch.manual_seed(1)
    gru = GRU(4, 5)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(gru(x)[0], gru(x, torch.zeros(1, 2, 5))[0])


def test_cell_by_hand_when_the_update_gate_is_shut():
    # A large z-gate bias makes z = 1: the state passes through unchanged.
    H = 3
    h = torch.tensor([[0.5, -1.0, 2.0]])
    bias = torch.zeros(3 * H)
    bias[H : 2 * H] = 100.0
    out = gru_cell(torch.zeros(1, 3 * H), h, torch.zeros(3 * H, H), bias)
    torch.testing.assert_close(out, h)
    # And z = 0 with zero inputs gives n = tanh(r * b_hn), here tanh(0.5 * 1) with r = sigmoid(0).
    bias = torch.zeros(3 * H)
    bias[H : 2 * H] = -100.0
    bias[2 * H :] = 1.0
    out = gru_cell(torch.zeros(1, 3 * H), h, torch.zeros(3 * H, H), bias)
    torch.testing.assert_close(out, torch.full((1, H), torch.tanh(torch.tensor(0.5)).item()))


@pytest.mark.parametrize(
    ("field", "value"), [("hidden", 0), ("n_layer", -1), ("vocab_size", 1.0), ("impl", "cudnn")]
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        GRUConfig(**{field: value})


def test_the_language_model_is_causal_and_carries_state():
    torch.manual_seed(2)
    model = GRULM(GRUConfig(vocab_size=9, n_embd=8, hidden=12, n_layer=2))
    idx = torch.randint(0, 9, (2, 8))
    changed = idx.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 9
    a, b = model(idx).logits, model(changed).logits
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert (a[:, 5:] - b[:, 5:]).abs().amax() > 0
    # Running the second half from the first half's final state equals running the whole.
    _, h = model.gru(model.wte(idx[:, :4]))
    torch.testing.assert_close(model(idx[:, 4:], h0=h).logits, a[:, 4:])


def test_the_training_loop_trains_it():
    ids = torch.arange(3000) % 5
    torch.manual_seed(0)
    model = GRULM(GRUConfig(vocab_size=5, block_size=16, n_embd=8, hidden=16))
    config = TrainConfig(
        max_steps=80, batch_size=8, lr=1e-2, warmup_steps=0, eval_interval=0, seed=0
    )
    history = train(model, ids[:2700], ids[2700:], config, progress=False)
    assert history.final_val_loss < 0.1
    assert evaluate(model, ids[2700:], batch_size=4).loss < 0.1


def test_every_baseline_samples_through_generate_and_refuses_padding():
    from llmbook.baselines import BigramConfig, BigramLM, NGramMLP, NGramMLPConfig
    from llmbook.generate.generation import generate

    torch.manual_seed(4)
    models = [
        BigramLM(BigramConfig(vocab_size=7, block_size=8)),
        NGramMLP(NGramMLPConfig(vocab_size=7, block_size=8, context=3, n_embd=4, hidden=8)),
        GRULM(GRUConfig(vocab_size=7, block_size=8, n_embd=4, hidden=8)),
    ]
    for model in models:
        g = torch.Generator().manual_seed(0)
        out = generate(model, [[1, 2, 3]], max_new_tokens=12, use_cache=False, generator=g)
        assert out.sequences.shape == (1, 15)
        with pytest.raises(ValueError, match="^attention_mask:"):
            generate(model, [[1, 2, 3], [4]], max_new_tokens=2, use_cache=False)
