"""Beam search: against greedy decoding, an exhaustive search, and transformers' beam search."""

import itertools
import math

import pytest
import torch

from llmbook.generate.beam import beam_search, check_beam_settings
from llmbook.generate.generation import generate, sequence_logprobs
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT


def tiny(seed=0, vocab=11, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw)
    return GPT(cfg).eval()


def logprob_of(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        return float(sequence_logprobs(model, ids)[0, len(prompt) - 1 :].sum())


def test_one_beam_is_greedy():
    model = tiny()
    prompts = [[1, 2, 3], [4, 5]]
    out = beam_search(model, prompts, num_beams=1, max_new_tokens=6)
    greedy = generate(model, prompts, max_new_tokens=6, temperature=0)
    assert out.completions == greedy.completions
    assert out.steps == 6


@pytest.mark.parametrize("num_beams", [1, 2, 4])
def test_scores_are_the_completions_log_probabilities(num_beams):
    model = tiny(1)
    prompts = [[1, 2, 3], [7], [4, 5, 6, 8]]
    out = beam_search(model, prompts, num_beams=num_beams, max_new_tokens=5, length_penalty=0.0)
    for prompt, completion, score, total in zip(prompts, out.completions, out.scores, out.logprobs):
        assert len(completion) == 5
        assert float(total) == pytest.approx(logprob_of(model, prompt, completion), abs=1e-4)
        assert float(score) == pytest.approx(float(total))  # length_penalty 0: no normalisation


def test_wide_beam_finds_the_most_probable_sequence():
    # With K >= V^(N-1) no hypothesis is ever dropped: beam search is exhaustive search.
    model = tiny(2, vocab=5)
    prompt = [1, 2]
    out = beam_search(model, [prompt], num_beams=25, max_new_tokens=3, length_penalty=0.0)
    best = max(
        itertools.product(range(5), repeat=3), key=lambda c: logprob_of(model, prompt, list(c))
    )
    assert out.completions[0] == list(best)


def test_more_beams_never_score_worse_than_greedy():
    model = tiny(3)
    prompts = [[i, i + 1] for i in range(1, 9)]
    greedy = beam_search(model, prompts, num_beams=1, max_new_tokens=6, length_penalty=0.0)
    wide = beam_search(model, prompts, num_beams=4, max_new_tokens=6, length_penalty=0.0)
    assert bool((wide.logprobs >= greedy.logprobs - 1e-5).all())
    assert bool((wide.logprobs > greedy.logprobs + 1e-5).any())  # and beat it somewhere


def test_eos_ends_a_hypothesis_and_left_padding_changes_nothing():
    model = tiny(4)
    first = generate(model, [[3, 1, 4]], max_new_tokens=1, temperature=0).completions[0][0]
    alone = [
        beam_search(model, [p], num_beams=3, max_new_tokens=6, eos_id=first)
        for p in ([3, 1, 4], [5])
    ]
    both = beam_search(model, [[3, 1, 4], [5]], num_beams=3, max_new_tokens=6, eos_id=first)
    assert both.completions == [a.completions[0] for a in alone]
    torch.testing.assert_close(both.scores, torch.cat([a.scores for a in alone]))
    assert (
        both.completions[0][-1] == first
    )  # the greedy first token is EOS: a hypothesis ends with it


@pytest.mark.parametrize("training", [True, False])
def test_beam_search_puts_the_model_back_in_its_mode(training):
    model = tiny(dropout=0.5).train(training)
    a = beam_search(model, [[1, 2]], num_beams=2, max_new_tokens=4)
    b = beam_search(model, [[1, 2]], num_beams=2, max_new_tokens=4)
    assert (
        model.training is training and a.completions == b.completions
    )  # no dropout while decoding


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(num_beams=0), "num_beams"),
        (dict(num_beams=True), "num_beams"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=2.0), "max_new_tokens"),
        (dict(length_penalty=math.nan), "length_penalty"),
        (dict(length_penalty=math.inf), "length_penalty"),
        (dict(length_penalty="1"), "length_penalty"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(kw, field):
    settings = {"num_beams": 2, "max_new_tokens": 3, "length_penalty": 1.0, **kw}
    with pytest.raises(ValueError, match=field):
        check_beam_settings(**settings)
    with pytest.raises(ValueError, match=field):
        beam_search(tiny(), [[1]], **settings)


# ---- parity with transformers' beam search (models built from config objects) ----------------------

transformers = pytest.importorskip("transformers")


def hf_model(kind, seed):
    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=13, n_positions=32, n_embd=32, n_layer=2, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.LlamaConfig(
        vocab_size=13, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def sharpen(model, factor=6.0):
    # A random model's next-token distribution is nearly flat; scaling the output layer makes it
    # peaked, like a trained model's, so that hypotheses finish and compete at different lengths.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(factor)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("num_beams", [2, 4])
@pytest.mark.parametrize(
    "length_penalty, eos_rank", [(1.0, None), (1.0, 0), (0.0, 0), (0.0, 3), (2.0, 1), (2.0, None)]
)
def test_equals_transformers_beam_search(kind, num_beams, length_penalty, eos_rank):
    """Early EOS, length penalties that reorder finished hypotheses, a left-padded batch."""
    from llmbook.model.hf import from_hf

    hf = sharpen(hf_model(kind, seed=num_beams))
    ours = from_hf(hf)
    eos = None
    if (
        eos_rank is not None
    ):  # an id the first prompt's first step ranks eos_rank-th: it does get chosen
        logits = ours(torch.tensor([PROMPTS[0]])).logits[0, -1]
        eos = int(torch.argsort(logits, descending=True)[eos_rank])
    compare_with_transformers(hf, ours, num_beams, 7, eos, length_penalty)


@pytest.mark.slow
@pytest.mark.parametrize("seed, eos, length_penalty", [(1, 1, 0.0), (1, 4, 1.0), (2, 0, 1.0)])
def test_equals_transformers_when_the_search_stops_early(seed, eos, length_penalty):
    """Cases (found by search) where every prompt's pool fills and no running hypothesis can beat it,
    so decoding stops before max_new_tokens: the stopping rule must match too."""
    from llmbook.model.hf import from_hf

    hf = sharpen(hf_model("llama", seed))
    ours = from_hf(hf)
    out = compare_with_transformers(hf, ours, 2, 10, eos, length_penalty)
    assert out.steps < 10


PROMPTS = [[5, 3, 8, 1], [7, 2], [9]]


def compare_with_transformers(hf, ours, num_beams, max_new_tokens, eos, length_penalty):
    # Our batch is left-padded; transformers decodes each prompt alone.
    settings = dict(
        num_beams=num_beams, max_new_tokens=max_new_tokens, length_penalty=length_penalty
    )
    out = beam_search(ours, PROMPTS, eos_id=eos, pad_id=0, **settings)
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([prompt])
        theirs = hf.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=eos,
            pad_token_id=0, early_stopping=False, return_dict_in_generate=True, output_scores=True,
            **settings,
        )  # fmt: skip
        assert out.completions[i] == theirs.sequences[0, len(prompt) :].tolist(), (i, eos)
        assert float(out.scores[i]) == pytest.approx(float(theirs.sequences_scores[0]), abs=1e-4)
    return out
