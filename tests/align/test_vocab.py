import copy

import pytest
import torch
import torch.nn.functional as F

from llmbook.align.chat import ChatFormat, chat_tokenizer
from llmbook.align.vocab import grow_vocab, new_token_mass
from llmbook.model import GPT, ModelConfig
from llmbook.tokenizer import ByteTokenizer

V_OLD, V_NEW, K = 259, 262, 3
BOUND = K / (V_OLD + K)
TEXT = b"the cat sat on the mat. the dog sat on the log. " * 8


def tiny(tie: bool, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        ModelConfig(
            vocab_size=V_OLD, block_size=32, n_layer=2, n_head=4, n_embd=32, tie_weights=tie
        )
    )


def batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    data = torch.tensor(list(TEXT))
    starts = torch.randint(0, len(data) - 33, (4,), generator=g)
    return torch.stack([data[s : s + 33] for s in starts])  # (B, T + 1)


@pytest.fixture(scope="module")
def trained():
    """A tied model trained a little on byte text, so its logits are far from uniform."""
    model = tiny(tie=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(40):
        xy = batch(step)
        loss = model(xy[:, :-1], xy[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 2.5  # well below log(259) = 5.56: the logits are peaked
    return model.eval()


def test_old_rows_and_old_logits_are_unchanged():
    for tie in (True, False):
        model = tiny(tie).eval()
        emb, head = model.tok_emb.weight.detach().clone(), model.lm_head.weight.detach().clone()
        x = batch()[:, :-1]
        with torch.no_grad():
            before = model(x).logits  # (B, T, V_OLD)
        assert grow_vocab(model, V_NEW) is model
        assert model.tok_emb.weight.shape == model.lm_head.weight.shape == (V_NEW, 32)
        assert torch.equal(model.tok_emb.weight[:V_OLD], emb)
        assert torch.equal(model.lm_head.weight[:V_OLD], head)
        with torch.no_grad():
            after = model(x).logits  # (B, T, V_NEW)
        assert after.shape == (*x.shape, V_NEW)
        assert torch.equal(after[..., :V_OLD], before)
        assert model.config.vocab_size == V_NEW
        assert model.tok_emb.num_embeddings == model.lm_head.out_features == V_NEW


def test_tied_stays_tied_and_untied_is_grown_separately():
    model = tiny(tie=True)
    old = model.tok_emb.weight.detach().clone()
    grow_vocab(model, V_NEW)
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.num_params() == tiny(tie=True).num_params() + K * 32
    mean = old.sum(0) / V_OLD
    torch.testing.assert_close(model.tok_emb.weight[V_OLD:], mean.expand(K, 32), rtol=0, atol=1e-7)

    model = tiny(tie=False)
    emb, head = model.tok_emb.weight.detach().clone(), model.lm_head.weight.detach().clone()
    grow_vocab(model, V_NEW)
    assert model.lm_head.weight is not model.tok_emb.weight
    new_emb, new_head = model.tok_emb.weight[V_OLD:], model.lm_head.weight[V_OLD:]
    torch.testing.assert_close(new_emb, (emb.sum(0) / V_OLD).expand(K, 32), rtol=0, atol=1e-7)
    torch.testing.assert_close(new_head, (head.sum(0) / V_OLD).expand(K, 32), rtol=0, atol=1e-7)
    assert not torch.allclose(new_emb, new_head)


def test_config_is_replaced_and_validated():
    model = tiny(tie=False)
    old = model.config
    grow_vocab(model, 300)
    assert model.config is not old and old.vocab_size == V_OLD
    assert model.config.to_dict() == {**old.to_dict(), "vocab_size": 300}


def test_grown_model_trains_on_chat_ids():
    tok = chat_tokenizer(ByteTokenizer())
    model = grow_vocab(tiny(tie=False), tok.vocab_size)
    ids, mask = ChatFormat(tok).render_example("Hi", "Yo")
    x = torch.tensor([ids])
    targets = torch.tensor([[i if m else -100 for i, m in zip(ids[1:], mask[1:])]])
    loss = model(x[:, :-1], targets).loss
    loss.backward()
    # The loss reaches the new rows: <|end|> is a target, <|user|> and <|assistant|> are inputs.
    assert model.lm_head.weight.grad[tok.special_ids["<|end|>"]].abs().sum() > 0
    assert model.tok_emb.weight.grad[tok.special_ids["<|assistant|>"]].abs().sum() > 0
    assert model.tok_emb.weight.grad[tok.pad_id].abs().sum() == 0  # not in the input


def test_mean_init_respects_the_jensen_bound(trained):
    x = batch(99)[:, :-1]
    with torch.no_grad():
        old_probs = trained(x).logits.softmax(-1)  # (B, T, V_OLD)
    model = grow_vocab(copy.deepcopy(trained), V_NEW, init="mean")
    mass = new_token_mass(model, x, V_OLD)  # (B, T)
    assert mass.shape == x.shape
    with torch.no_grad():
        probs = model(x).logits.softmax(-1)  # (B, T, V_NEW)
    torch.testing.assert_close(mass, probs[..., V_OLD:].sum(-1))
    assert (mass <= BOUND * (1 + 1e-5)).all()
    assert mass.max() < 0.5 * BOUND  # peaked old logits: Jensen is far from tight
    # The old tokens keep their distribution, each shrunk by the same factor >= 1 / (1 + K / V).
    torch.testing.assert_close(probs[..., :V_OLD] / (1 - mass)[..., None], old_probs)
    assert ((1 - mass) >= 1 / (1 + K / V_OLD) - 1e-6).all()


def test_mean_init_bound_on_a_random_model_is_nearly_tight():
    model = tiny(tie=False)
    x = batch()[:, :-1]
    grow_vocab(model, V_NEW)
    mass = new_token_mass(model, x[0], V_OLD)  # (T,) from a 1-D input
    assert mass.shape == (32,)
    # Untrained logits are nearly equal, where Jensen is nearly an equality.
    assert (mass <= BOUND * (1 + 1e-5)).all()
    assert (mass >= 0.95 * BOUND).all()


def test_normal_init_with_a_large_std_breaks_the_bound(trained):
    x = batch(99)[:, :-1]
    g = torch.Generator().manual_seed(0)
    model = grow_vocab(copy.deepcopy(trained), V_NEW, init="normal", std=2.0, generator=g)
    mass = new_token_mass(model, x, V_OLD)
    assert (mass > BOUND).all()  # at every position, not by a fluke
    assert mass.median() > 0.5  # tokens the model has never seen take most of the mass
    # The same draw scaled to the model's init_std (0.02) stays under the bound, yet puts far more
    # mass on the new tokens than the mean does: the mean logit sits well below logsumexp.
    g = torch.Generator().manual_seed(0)
    small = grow_vocab(copy.deepcopy(trained), V_NEW, init="normal", generator=g)
    mean = grow_vocab(copy.deepcopy(trained), V_NEW, init="mean")
    small_mass, mean_mass = new_token_mass(small, x, V_OLD), new_token_mass(mean, x, V_OLD)
    assert (small_mass <= BOUND).all()
    assert (mean_mass < small_mass).all()


def test_mean_noise_is_seeded_and_near_the_mean():
    def grown(seed):
        model = tiny(tie=False)
        g = torch.Generator().manual_seed(seed)
        return grow_vocab(model, V_NEW, init="mean_noise", generator=g, noise_scale=0.1)

    a, b, c = grown(1), grown(1), grown(2)
    assert torch.equal(a.tok_emb.weight, b.tok_emb.weight)
    assert not torch.equal(a.tok_emb.weight[V_OLD:], c.tok_emb.weight[V_OLD:])
    old = tiny(tie=False).tok_emb.weight.detach()
    rows = a.tok_emb.weight[V_OLD:].detach()
    assert torch.equal(a.tok_emb.weight[:V_OLD], old)
    offset = rows - old.mean(0)
    assert len({tuple(r.tolist()) for r in rows}) == K  # distinguishable
    # Noise of 0.1 * the per-coordinate std (0.02 here): about 0.002 a coordinate.
    assert 0.0005 < offset.std() < 0.005


def test_dtype_and_requires_grad_are_kept():
    model = tiny(tie=False).to(torch.float64)
    model.tok_emb.weight.requires_grad_(False)
    grow_vocab(model, V_NEW, init="normal")
    assert model.tok_emb.weight.dtype == model.lm_head.weight.dtype == torch.float64
    assert not model.tok_emb.weight.requires_grad
    assert model.lm_head.weight.requires_grad
    assert isinstance(model.tok_emb.weight, torch.nn.Parameter)
    assert {n for n, _ in model.named_parameters()} == {
        n for n, _ in tiny(False).named_parameters()
    }


def test_equal_size_is_a_no_op_and_errors_are_named():
    model = tiny(tie=True)
    weight = model.tok_emb.weight
    config = model.config
    assert grow_vocab(model, V_OLD) is model
    assert model.tok_emb.weight is weight and model.config is config
    with pytest.raises(ValueError, match="new_vocab_size: .*259.*258"):
        grow_vocab(model, V_OLD - 1)
    with pytest.raises(ValueError, match="new_vocab_size"):
        grow_vocab(model, 300.0)
    with pytest.raises(ValueError, match="init: .*'zeros'"):
        grow_vocab(model, V_NEW, init="zeros")
    with pytest.raises(ValueError, match="std"):
        grow_vocab(model, V_NEW, init="normal", std=-1.0)
    with pytest.raises(ValueError, match="noise_scale"):
        grow_vocab(model, V_NEW, init="mean_noise", noise_scale=float("nan"))
    assert model.tok_emb.weight is weight  # nothing changed on error
    with pytest.raises(ValueError, match="old_vocab_size"):
        new_token_mass(model, [1, 2, 3], V_OLD + 1)
    with pytest.raises(ValueError, match="old_vocab_size"):
        new_token_mass(model, [1, 2, 3], 0)


def test_new_token_mass_runs_without_dropout_and_restores_the_mode():
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=V_OLD, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.3
    )
    model = grow_vocab(GPT(config), V_NEW)
    model.train()
    x = batch()[:, :-1]
    mass = new_token_mass(model, x, V_OLD)
    assert model.training
    assert torch.equal(new_token_mass(model, x, V_OLD), mass)  # no dropout noise
    model.eval()
    with torch.no_grad():
        logits = model(x).logits.double()
    want = F.softmax(logits, -1)[..., V_OLD:].sum(-1).float()
    torch.testing.assert_close(mass, want)
