"""The reward model: the encoder pass, pooling by hand, padding-safe scores, and the score API."""

import pytest
import torch

from llmbook.align.chat import ChatFormat, chat_tokenizer
from llmbook.align.reward_model import (
    POOLINGS,
    RewardModel,
    collate,
    pad_id_of,
    render_scored,
    score,
)
from llmbook.model import GPT, ModelConfig
from llmbook.model.kv_cache import KVCache
from llmbook.tokenizer import ByteTokenizer

CHAT = ChatFormat(chat_tokenizer(ByteTokenizer()))

PROMPTS = ["What is 2 plus 3?", "Reverse abc.", "Sort these numbers: 39, 12, 93.", "Hi"]
ANSWERS = ["5", "cba", "12, 39, 93", "a much longer answer than the others"]


def tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=262,
        block_size=96,
        n_layer=2,
        n_head=2,
        n_embd=32,
        pos_embedding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        tie_weights=False,
    )
    return GPT(ModelConfig(**{**cfg, **overrides})).eval()


def tiny_reward_model(pooling="last", causal=True, seed=0, **overrides):
    model = RewardModel(tiny_gpt(seed, **overrides), pooling=pooling, causal=causal)
    # A visible head: the default one starts near zero, which would hide differences.
    torch.manual_seed(seed + 1)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    torch.nn.init.normal_(model.head.bias, std=1.0)
    return model.eval()


# --- GPT.hidden_states(causal=False): the encoder pass ---------------------------------------------


@pytest.mark.parametrize("pos_embedding", ["rope", "learned"])
def test_the_encoder_pass_sees_later_tokens_and_the_decoder_does_not(pos_embedding):
    model = tiny_gpt(pos_embedding=pos_embedding)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 12), generator=g)
    later = ids.clone()
    later[:, 9] = (later[:, 9] + 1) % 256  # change one later token
    with torch.no_grad():
        for causal in (True, False):
            a = model.hidden_states(ids, causal=causal)
            b = model.hidden_states(later, causal=causal)
            assert a.shape == (2, 12, 32)
            earlier = (a[:, :9] - b[:, :9]).abs().amax()
            if causal:
                assert float(earlier) < 1e-6  # positions before 9 cannot see it
            else:
                assert float((a[:, :9] - b[:, :9]).abs().amax(-1).min()) > 1e-4  # every one does


def test_causal_is_the_default_and_matches_the_language_model():
    model = tiny_gpt()
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = model.hidden_states(ids)
        torch.testing.assert_close(h, model.hidden_states(ids, causal=True))
        torch.testing.assert_close(model.lm_head(h), model(ids).logits)
        # One token: nothing to hide, the two passes agree.
        torch.testing.assert_close(
            model.hidden_states(ids[:, :1], causal=False), model.hidden_states(ids[:, :1])
        )


@pytest.mark.parametrize("pos_embedding", ["rope", "learned"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_the_encoder_pass_ignores_padding_on_either_side(pos_embedding, side):
    model = tiny_gpt(pos_embedding=pos_embedding)
    g = torch.Generator().manual_seed(2)
    row = torch.randint(0, 256, (7,), generator=g)
    ids = torch.full((1, 11), 258)
    mask = torch.zeros(1, 11, dtype=torch.bool)
    span = slice(0, 7) if side == "right" else slice(4, 11)
    ids[0, span], mask[0, span] = row, True
    with torch.no_grad():
        alone = model.hidden_states(row[None], causal=False)[0]
        padded = model.hidden_states(ids, attention_mask=mask, causal=False)[0, span]
        # Whatever the padding ids are, they are never attended to.
        ids[0, ~mask[0]] = torch.randint(0, 256, (4,), generator=g)
        other_pad = model.hidden_states(ids, attention_mask=mask, causal=False)[0, span]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other_pad, padded, atol=1e-6, rtol=1e-6)


def test_the_encoder_pass_refuses_a_cache_a_packed_mask_and_a_window():
    model = tiny_gpt()
    ids = torch.randint(0, 256, (1, 6))
    with pytest.raises(ValueError, match="^causal:"):
        model.hidden_states(ids, causal=False, cache=KVCache(model.config, 1, 16))
    with pytest.raises(ValueError, match="^attention_mask:"):
        model.hidden_states(ids, attention_mask=torch.ones(1, 6, 6, dtype=torch.bool), causal=False)
    with pytest.raises(ValueError, match="^attention_mask:"):
        model.hidden_states(ids, attention_mask=torch.ones(1, 5, dtype=torch.bool), causal=False)
    windowed = tiny_gpt(sliding_window=4)
    with pytest.raises(ValueError, match="^causal:"):
        windowed.hidden_states(ids, causal=False)
    with pytest.raises(ValueError, match="block_size"):
        model.hidden_states(torch.zeros(1, 97, dtype=torch.long), causal=False)


# --- RewardModel ------------------------------------------------------------------------------------


def test_pool_by_hand():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[True, True, True, False], [False, True, True, False]])
    last = RewardModel(tiny_gpt(), pooling="last")
    torch.testing.assert_close(last.pool(hidden, mask), torch.stack([hidden[0, 2], hidden[1, 2]]))
    mean = RewardModel(tiny_gpt(), pooling="mean")
    torch.testing.assert_close(
        mean.pool(hidden, mask),
        torch.stack([hidden[0, :3].mean(0), hidden[1, 1:3].mean(0)]),
    )


def test_reward_model_refusals_and_output():
    with pytest.raises(ValueError, match="^pooling:"):
        RewardModel(tiny_gpt(), pooling="max")
    assert POOLINGS == ("last", "mean")
    model = tiny_reward_model()
    ids = torch.randint(0, 256, (3, 5))
    out = model(ids)
    assert out.shape == (3,) and out.dtype == torch.float32
    torch.testing.assert_close(out, model(ids, torch.ones(3, 5, dtype=torch.long)))
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="^attention_mask:"):
        model(ids, mask)
    assert model.config is model.backbone.config


def test_the_head_starts_small():
    model = RewardModel(tiny_gpt())
    ids, mask = collate([render_scored(CHAT, p, a) for p, a in zip(PROMPTS, ANSWERS)], pad_id=0)
    with torch.no_grad():
        assert float(model(ids, mask).abs().max()) < 0.5
    assert float(model.head.bias.detach().abs().max()) == 0.0


def test_collate_by_hand_and_refusals():
    ids, mask = collate([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    ids, mask = collate([[5, 6, 7], [8]], pad_id=9, side="left")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
    with pytest.raises(ValueError, match="^side:"):
        collate([[1]], pad_id=0, side="middle")
    with pytest.raises(ValueError, match="^rows:"):
        collate([], pad_id=0)
    with pytest.raises(ValueError, match="^rows:"):
        collate([[1], []], pad_id=0)


def test_render_scored_is_the_rendered_exchange_ending_with_end():
    ids = render_scored(CHAT, "What is 2 plus 3?", "5")
    assert ids == CHAT.render_example("What is 2 plus 3?", "5")[0]
    assert ids[0] == CHAT.bos_id and ids[-1] == CHAT.end_id
    assert ids[-2] == ord("5")


def test_pad_id_of_falls_back_to_end():
    assert pad_id_of(CHAT) == CHAT.tokenizer.special_ids["<|pad|>"]
    no_pad = ChatFormat(chat_tokenizer(ByteTokenizer(specials=["<|bos|>", "<|eos|>"])))
    assert "<|pad|>" not in no_pad.tokenizer.special_ids
    assert pad_id_of(no_pad) == no_pad.end_id


@pytest.mark.parametrize(
    "pooling, causal", [("last", True), ("mean", False), ("last", False), ("mean", True)]
)
@pytest.mark.parametrize("pos_embedding", ["rope", "learned"])
def test_left_right_and_no_padding_give_the_same_reward(pooling, causal, pos_embedding):
    model = tiny_reward_model(pooling, causal, pos_embedding=pos_embedding)
    rows = [render_scored(CHAT, p, a) for p, a in zip(PROMPTS, ANSWERS)]
    assert len({len(r) for r in rows}) == len(rows)  # every row padded differently
    with torch.no_grad():
        alone = torch.cat([model(torch.tensor([r])) for r in rows])
        for side in ("left", "right"):
            ids, mask = collate(rows, pad_id=pad_id_of(CHAT), side=side)
            torch.testing.assert_close(model(ids, mask), alone, atol=1e-5, rtol=1e-5)
            # Another padding id changes nothing either.
            ids[~mask] = 7
            torch.testing.assert_close(model(ids, mask), alone, atol=1e-5, rtol=1e-5)
    assert alone.std() > 1e-3  # the rows do get different rewards
    for batch_size in (1, 256):
        scores = score(model, CHAT, PROMPTS, ANSWERS, batch_size=batch_size)
        torch.testing.assert_close(scores, alone, atol=1e-5, rtol=1e-5)


def test_an_early_token_moves_both_the_last_token_and_the_mean_pooled_reward():
    # The decoder's last position sees the whole row through attention; the encoder's mean covers it.
    ids = torch.tensor([render_scored(CHAT, "Reverse abc.", "cba")])
    changed = ids.clone()
    changed[0, 2] = ord("X")  # the prompt's first character (after <|bos|> and <|user|>)
    for pooling, causal in (("last", True), ("mean", False)):
        model = tiny_reward_model(pooling, causal)
        with torch.no_grad():
            assert float((model(ids) - model(changed)).abs()) > 1e-4


def test_score_keeps_the_input_order_restores_the_mode_and_refuses_by_name():
    model = tiny_reward_model().train()
    scores = score(model, CHAT, PROMPTS, ANSWERS)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        expected = torch.cat(
            [model(torch.tensor([render_scored(CHAT, p, a)])) for p, a in zip(PROMPTS, ANSWERS)]
        )
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert scores.device.type == "cpu" and scores.dtype == torch.float32
    reversed_scores = score(model, CHAT, PROMPTS[::-1], ANSWERS[::-1])
    torch.testing.assert_close(reversed_scores, scores.flip(0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="^completions:"):
        score(model, CHAT, PROMPTS, ANSWERS[:-1])
    with pytest.raises(ValueError, match="^completions: row 0"):
        score(model, CHAT, ["x" * 200], ["y"])
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="^batch_size:"):
            score(model, CHAT, PROMPTS, ANSWERS, batch_size=bad)
    assert score(model, CHAT, [], []).shape == (0,)
