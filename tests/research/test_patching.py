import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.research.patching import (
    MAX_ENTROPY,
    as_bytes_tensor,
    next_byte_entropy,
    patch_ends,
    patch_entropy,
    patch_fixed,
    patch_global,
    patch_lengths,
    patch_monotonic,
    patch_stats,
    split_patches,
    threshold_for_mean_length,
)


def random_case(seed, n=200):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (n,), generator=g)
    entropies = torch.rand(n, generator=g) * 6
    return data, entropies


def check_valid(starts, n):
    """The invariants every patching must satisfy."""
    assert starts.dtype == torch.long
    assert int(starts[0]) == 0
    assert torch.all(starts[1:] > starts[:-1]), "sorted, no duplicates"
    assert int(starts.max()) < n
    lengths = patch_lengths(starts, n)
    assert torch.all(lengths >= 1), "every patch non-empty"
    assert int(lengths.sum()) == n


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rule", ["global", "monotonic", "fixed"])
def test_patches_concatenate_back_to_the_input(seed, rule):
    data, H = random_case(seed)
    if rule == "fixed":
        starts = patch_fixed(len(data), 3 + seed)
    else:
        starts = patch_entropy(H, float(H.median()) - (1.5 if rule == "monotonic" else 0), rule)
    check_valid(starts, len(data))
    pieces = split_patches(data, starts)
    assert all(len(p) > 0 for p in pieces)
    assert b"".join(pieces) == bytes(data.tolist())
    assert [len(p) for p in pieces] == patch_lengths(starts, len(data)).tolist()


def test_text_round_trip_with_multibyte_characters():
    text = "Ünïcödé – naïve façade, 東京!\n"
    H = torch.linspace(0, 5, len(text.encode())).flip(0)
    for starts in (patch_global(H, 2.0), patch_monotonic(H, -0.01), patch_fixed(len(H), 4)):
        assert b"".join(split_patches(text, starts)).decode() == text


def test_rules_by_hand():
    H = torch.tensor([8.0, 1.0, 3.0, 2.9, 0.5, 1.8])
    # global: H_t > 2.5 at t = 2, 3; monotonic: H_t - H_{t-1} = -7, 2, -0.1, -2.4, 1.3 > 1 at t = 2, 5
    assert patch_global(H, 2.5).tolist() == [0, 2, 3]
    assert patch_monotonic(H, 1.0).tolist() == [0, 2, 5]
    assert patch_global(H, 100.0).tolist() == [0]
    assert patch_global(H, -1.0).tolist() == list(range(6))
    assert patch_fixed(7, 3).tolist() == [0, 3, 6]


@pytest.mark.parametrize("rule", ["global", "monotonic"])
def test_higher_threshold_gives_fewer_patches_nested(rule):
    _, H = random_case(3, n=500)
    previous = None
    for theta in torch.linspace(-6, 6, 25).tolist():
        starts = patch_entropy(H, theta, rule)
        check_valid(starts, len(H))
        if previous is not None:
            assert len(starts) <= len(previous)
            assert set(starts.tolist()) <= set(previous.tolist()), "a higher threshold only removes"
        previous = starts
    assert len(patch_entropy(H, -100.0, rule)) == len(H)
    assert len(patch_entropy(H, 100.0, rule)) == 1


@pytest.mark.parametrize("n, size", [(0, 3), (1, 4), (12, 4), (13, 4), (10, 1), (5, 9)])
def test_fixed_patching_is_exact(n, size):
    starts = patch_fixed(n, size)
    assert len(starts) == math.ceil(n / size)
    if n:
        check_valid(starts, n)
        lengths = patch_lengths(starts, n).tolist()
        assert lengths[:-1] == [size] * (len(lengths) - 1)
        assert lengths[-1] == n - size * (len(lengths) - 1)


@pytest.mark.parametrize("rule", ["global", "monotonic"])
@pytest.mark.parametrize("mean", [1.0, 2.5, 4.0, 7.0, 1000.0])
def test_threshold_for_mean_length_hits_the_count(rule, mean):
    _, H = random_case(7, n=400)  # continuous values: no ties
    theta = threshold_for_mean_length(H, mean, rule)
    starts = patch_entropy(H, theta, rule)
    assert len(starts) == max(1, round(400 / mean))
    assert patch_stats(starts, 400).mean == pytest.approx(400 / len(starts))


def test_patch_stats_by_hand():
    stats = patch_stats(torch.tensor([0, 1, 4, 5]), 10)  # lengths 1, 3, 1, 5
    assert (stats.n_patches, stats.mean, stats.median, stats.max) == (4, 2.5, 1.0, 5)
    assert stats.single == 0.5
    assert stats.std == pytest.approx(math.sqrt(((1.5**2) * 2 + 0.5**2 + 2.5**2) / 4))


def test_patch_ends_marks_the_byte_before_each_start():
    ends = patch_ends(torch.tensor([0, 2, 3, 7]), 9)
    assert torch.nonzero(ends).flatten().tolist() == [1, 2, 6, 8]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), True, "1", None])
def test_threshold_must_be_a_finite_number(bad):
    H = torch.rand(10)
    for fn in (patch_global, patch_monotonic):
        with pytest.raises(ValueError, match="^threshold:"):
            fn(H, bad)


def test_other_invalid_inputs_name_what_is_wrong():
    H = torch.rand(10)
    with pytest.raises(ValueError, match="^rule:"):
        patch_entropy(H, 1.0, "local")
    with pytest.raises(ValueError, match="^entropies:"):
        patch_global(torch.tensor([1.0, float("nan")]), 1.0)
    with pytest.raises(ValueError, match="^entropies:"):
        patch_global(torch.rand(2, 3), 1.0)
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="^mean_length:"):
            threshold_for_mean_length(H, bad)
    with pytest.raises(ValueError, match="^size:"):
        patch_fixed(10, 0)
    with pytest.raises(ValueError, match="^n:"):
        patch_fixed(-1, 2)
    with pytest.raises(ValueError, match="^starts:"):
        split_patches(b"abcdef", torch.tensor([0, 3, 3]))
    with pytest.raises(ValueError, match="^starts:"):
        split_patches(b"abcdef", torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="^starts:"):
        split_patches(b"abcdef", torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="^data:"):
        as_bytes_tensor(torch.tensor([0, 256]))


class PositionModel(nn.Module):
    """A fake byte model whose prediction depends only on the position inside the window: the logit
    of byte 0 is 0.5 * position, so the entropy reveals how much context a prediction had."""

    def __init__(self, block_size):
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, T = x.shape
        logits = torch.zeros(B, T, 259)
        logits[..., 0] = 0.5 * torch.arange(T)
        return SimpleNamespace(logits=logits)


def entropy_at_position(W):
    logits = torch.zeros(W, 256)
    logits[:, 0] = 0.5 * torch.arange(W)
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1) / math.log(2)  # (W,), strictly decreasing


@pytest.mark.parametrize(
    "N, W, context", [(100, 16, 8), (100, 16, 0), (100, 16, 15), (37, 16, 5), (10, 16, 4)]
)
def test_every_prediction_after_the_first_window_has_the_promised_context(N, W, context):
    H = next_byte_entropy(PositionModel(W), torch.zeros(N, dtype=torch.long), context=context)
    table = entropy_at_position(W)
    assert H[0] == MAX_ENTROPY
    position = torch.stack([(table - h).abs().argmin() for h in H[1:]])  # context of byte t >= 1
    torch.testing.assert_close(table[position], H[1:])
    t = torch.arange(1, N)
    first = t <= W
    assert torch.equal(position[first], t[first] - 1), "the first window: all the context there is"
    assert torch.all(position[~first] >= context), "later: at least `context` bytes"
    assert torch.all(position <= W - 1)


def test_entropies_equal_a_direct_forward_and_do_not_depend_on_the_batching():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=259, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    data = torch.randint(0, 256, (60,))
    logp = model(data[None, :16]).logits[0, :, :256].log_softmax(-1)
    direct = -(logp.exp() * logp).sum(-1) / math.log(2)  # predictions of bytes 1..16
    H = next_byte_entropy(model, data, context=8)
    torch.testing.assert_close(H[1:17], direct)
    torch.testing.assert_close(next_byte_entropy(model, data, context=8, batch_size=1), H)
    assert torch.all((H >= 0) & (H <= MAX_ENTROPY))
    with pytest.raises(ValueError, match="^context:"):
        next_byte_entropy(model, data, context=16)
