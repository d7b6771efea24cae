"""The SFT loss: labels, the two reductions, and the masked loss equal to the answer-span loss."""

import pytest
import torch
import torch.nn.functional as F

from llmbook.align.sft_loss import REDUCTIONS, sequence_losses, sft_labels, sft_loss
from llmbook.data.batching import IGNORE_INDEX
from llmbook.model import GPT, ModelConfig

X = IGNORE_INDEX


def tiny_gpt(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, block_size=24, n_layer=2, n_head=2, n_embd=32, **kw)
    return GPT(cfg).eval()


def test_labels_by_hand():
    # Row 0: prompt 11 12 13, answer 21 22 (mask on the answer). Row 1: prompt 31, answer 41 42 43,
    # then a padding-like tail with the mask off.
    ids = torch.tensor([[11, 12, 13, 21, 22, 0], [31, 41, 42, 43, 0, 0]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    expected = torch.tensor([[X, X, 21, 22, X, X], [41, 42, 43, X, X, X]])
    assert torch.equal(sft_labels(ids, mask), expected)
    # With every token masked in, each position predicts the next and the last predicts nothing
    # (the first token is never a target: no position precedes it).
    everything = sft_labels(ids[:1], torch.ones(1, 6, dtype=torch.bool))[0]
    assert everything.tolist() == [12, 13, 21, 22, 0, X]


def test_labels_refuse_bad_shapes():
    with pytest.raises(ValueError, match="loss_mask"):
        sft_labels(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="input_ids"):
        sft_labels(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.bool))


def _random_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    # Row 0 counts 1 token, row 1 counts 4, row 2 none.
    keep = torch.zeros(3, 7, dtype=torch.bool)
    keep[0, 2] = True
    keep[1, 1:5] = True
    labels[~keep] = X
    return logits, labels, keep


def test_token_reduction_equals_cross_entropy_on_counted_positions():
    logits, labels, keep = _random_case()
    loss, metrics = sft_loss(logits, labels, reduction="token")
    expected = F.cross_entropy(logits[keep], labels[keep])  # the counted positions, concatenated
    torch.testing.assert_close(loss, expected)
    assert int(metrics["n_tokens"]) == 5
    assert int(metrics["n_sequences"]) == 2  # the row with no counted token is not a sequence
    torch.testing.assert_close(metrics["loss_sum"], expected * 5)


def test_sequence_reduction_is_the_mean_of_row_means():
    logits, labels, keep = _random_case()
    loss, metrics = sft_loss(logits, labels, reduction="sequence")
    row0 = F.cross_entropy(logits[0][keep[0]], labels[0][keep[0]])
    row1 = F.cross_entropy(logits[1][keep[1]], labels[1][keep[1]])
    torch.testing.assert_close(loss, (row0 + row1) / 2)  # row 2 is skipped, not counted as 0
    assert int(metrics["n_sequences"]) == 2
    losses, counts = sequence_losses(logits, labels)
    torch.testing.assert_close(losses, torch.stack([row0, row1]))
    assert counts.tolist() == [1, 4]


def test_document_ids_make_each_document_a_sequence():
    logits, labels, keep = _random_case()
    # Put rows 0 and 1 side by side in one row of 14: with document ids, "sequence" is unchanged.
    packed_logits = torch.cat([logits[0], logits[1]])[None]
    packed_labels = torch.cat([labels[0], labels[1]])[None]
    doc = torch.tensor([[0] * 7 + [1] * 7])
    per_row, _ = sft_loss(logits[:2], labels[:2], reduction="sequence")
    per_doc, m = sft_loss(packed_logits, packed_labels, reduction="sequence", document_ids=doc)
    torch.testing.assert_close(per_doc, per_row)
    assert int(m["n_sequences"]) == 2
    one_row, _ = sft_loss(packed_logits, packed_labels, reduction="sequence")
    assert not torch.allclose(one_row, per_row)  # without ids the row would be one example


def test_loss_is_fp32_for_half_logits():
    logits, labels, _ = _random_case()
    loss, _ = sft_loss(logits.bfloat16(), labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, sft_loss(logits.bfloat16().float(), labels)[0])


def test_refusals():
    logits, labels, _ = _random_case()
    with pytest.raises(ValueError, match="reduction"):
        sft_loss(logits, labels, reduction="mean")
    with pytest.raises(ValueError, match="IGNORE_INDEX"):
        sft_loss(logits, torch.full_like(labels, X))
    with pytest.raises(ValueError, match="labels"):
        sft_loss(logits, labels[:, :-1])
    assert REDUCTIONS == ("token", "sequence")


def _grads(logits, labels, reduction):
    z = logits.clone().requires_grad_(True)
    sft_loss(z, labels, reduction=reduction)[0].backward()
    return z.grad


def test_gradients_differ_with_answer_lengths_and_agree_without():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 9, generator=g)
    labels = torch.randint(0, 9, (2, 6), generator=g)
    uneven = labels.clone()
    uneven[0, 1:] = X  # answer of 1 token
    uneven[1, 4:] = X  # answer of 4 tokens
    tok, seq = _grads(logits, uneven, "token"), _grads(logits, uneven, "sequence")
    assert not torch.allclose(tok, seq)
    # The weights derived in the docstring: 1/sum(n) per token, or 1/(B n_i).
    base = F.softmax(logits, -1) - F.one_hot(uneven.clamp(min=0), 9)  # d(-log p)/dz per position
    torch.testing.assert_close(tok[0, 0], base[0, 0] / 5)
    torch.testing.assert_close(seq[0, 0], base[0, 0] / (2 * 1))
    torch.testing.assert_close(seq[1, 2], base[1, 2] / (2 * 4))
    assert torch.all(tok[0, 1:] == 0) and torch.all(seq[1, 4:] == 0)
    even = labels.clone()
    even[:, 3:] = X  # both answers 3 tokens
    torch.testing.assert_close(_grads(logits, even, "token"), _grads(logits, even, "sequence"))


def test_masked_loss_equals_the_answer_span_loss():
    """The loss of the full sequence under the mask = scoring each answer token given its prefix."""
    model = tiny_gpt()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 40, (1, 14), generator=g)
    mask = torch.zeros(1, 14, dtype=torch.bool)
    mask[0, 6:11] = True  # the answer; tokens 11..13 (a later turn) are read but not graded
    with torch.no_grad():
        loss, metrics = sft_loss(model(ids).logits, sft_labels(ids, mask))
        # One forward per answer token, each on its prefix alone: nothing after it is visible.
        nll = []
        for j in mask[0].nonzero().flatten().tolist():
            logits = model(ids[:, :j]).logits[0, -1]  # (V,), predicts token j
            nll.append(-torch.log_softmax(logits.double(), -1)[ids[0, j]])
    span = torch.stack(nll).mean()
    assert int(metrics["n_tokens"]) == 5
    torch.testing.assert_close(loss.double(), span, atol=1e-6, rtol=0)
