import math

import pytest
import torch
import torch.nn.functional as F

from llmbook.data.batching import IGNORE_INDEX
from llmbook.train.loss import bits_per_byte, lm_loss, shift_labels


def test_shift_labels():
    ids = torch.tensor([[5, 6, 7, 8]])
    assert shift_labels(ids).tolist() == [[6, 7, 8, IGNORE_INDEX]]
    mask = torch.tensor([[True, False, True, True]])  # token 6 does not count as a target
    assert shift_labels(ids, mask=mask).tolist() == [[IGNORE_INDEX, 7, 8, IGNORE_INDEX]]


def test_lm_loss_by_hand():
    # Two positions count: uniform over 4 classes costs ln 4; a confident right answer costs ~0.
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [20.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]]])
    labels = torch.tensor([[2, 0, IGNORE_INDEX]])
    loss, metrics = lm_loss(logits, labels)
    expected = (math.log(4) + F.cross_entropy(logits[0, 1:2], labels[0, 1:2]).item()) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert int(metrics["n_tokens"]) == 2 and not metrics["loss_sum"].requires_grad


def test_lm_loss_matches_hf_style_shifted_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    ids = torch.randint(0, 11, (2, 6))
    ours, _ = lm_loss(logits, shift_labels(ids))
    hf = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(ours, hf)


def test_all_ignored_is_an_error():
    with pytest.raises(ValueError, match="labels"):
        lm_loss(torch.randn(1, 2, 3), torch.full((1, 2), IGNORE_INDEX))


def test_bits_per_byte():
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0)
    assert bits_per_byte(math.log(2), n_tokens=10, n_bytes=40) == pytest.approx(0.25)
