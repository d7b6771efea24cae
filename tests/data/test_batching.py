import pytest
import torch

from llmbook.data.batching import (
    IGNORE_INDEX,
    eval_batches,
    random_batch,
    to_hf_dataset,
    train_val_split,
)


def test_split_is_first_90_last_10():
    tr, va = train_val_split(list(range(100)))
    assert tr.tolist() == list(range(90)) and va.tolist() == list(range(90, 100))
    with pytest.raises(ValueError, match="train_fraction"):
        train_val_split([1, 2], 1.5)


def test_random_batch_targets_are_inputs_shifted_by_one():
    ids = torch.arange(1000)
    g = torch.Generator().manual_seed(0)
    x, y = random_batch(ids, 8, 16, generator=g)
    assert x.shape == y.shape == (8, 16)
    torch.testing.assert_close(y, x + 1)  # ids are consecutive integers
    g2 = torch.Generator().manual_seed(0)
    torch.testing.assert_close(random_batch(ids, 8, 16, generator=g2)[0], x)


def test_eval_batches_cover_every_target_once():
    ids = torch.arange(1, 104)  # 103 tokens -> 102 targets, not a multiple of the block
    targets = []
    for x, y in eval_batches(ids, batch_size=3, block_size=10):
        assert x.shape == y.shape and x.size(1) == 10
        keep = y != IGNORE_INDEX
        torch.testing.assert_close(y[keep], x[keep] + 1)
        targets.extend(y[keep].tolist())
    assert targets == list(range(2, 104))


def test_hf_dataset_map_and_torch_format():
    ds = to_hf_dataset(torch.arange(50), block_size=8)
    assert len(ds) == 6 and set(ds.column_names) == {"input_ids", "labels"}
    row = ds[2]
    assert isinstance(row["input_ids"], torch.Tensor)
    torch.testing.assert_close(row["input_ids"], torch.arange(16, 24))
    torch.testing.assert_close(row["labels"], torch.arange(17, 25))


def test_bos_prefixed_batches():
    ids = torch.arange(1, 1000)
    x, y = random_batch(ids, 4, 8, generator=torch.Generator().manual_seed(0), bos_id=0)
    assert (x[:, 0] == 0).all()
    torch.testing.assert_close(x[:, 1:], y[:, :-1])
    torch.testing.assert_close(y[:, 1:], y[:, :-1] + 1)


def test_bos_eval_batches_cover_every_token_once():
    ids = torch.arange(1, 104)  # 103 tokens: with BOS every one of them is a target
    targets = []
    for x, y in eval_batches(ids, batch_size=3, block_size=10, bos_id=0):
        assert (x[:, 0] == 0).all()
        keep = y != IGNORE_INDEX
        targets.extend(y[keep].tolist())
        torch.testing.assert_close(x[:, 1:][keep[:, :-1]], y[:, :-1][keep[:, :-1]])
    assert targets == list(range(1, 104))
