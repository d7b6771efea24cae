"""SFT batches: padding and packing compute what each example computes alone, and waste is counted."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.align.batching import (
    first_fit,
    iterate_batches,
    pack_batch,
    pad_batch,
    padding_waste,
    to_dataset,
)
from llmbook.align.sft_loss import sequence_losses, sft_labels, sft_loss
from llmbook.data.batching import IGNORE_INDEX
from llmbook.model import GPT, ModelConfig

X = IGNORE_INDEX
PAD = 0


def make_rows(lengths, seed=0, all_answer=False):
    """Rows of random ids; the second half of each is the answer (or all of it)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(1, 40, (n,), generator=g).tolist()
        mask = [True] * n if all_answer else [i >= n // 2 for i in range(n)]
        rows.append((ids, mask))
    return rows


def tiny_gpt(pos="rope"):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, pos_embedding=pos
    )
    return GPT(cfg).eval()


def test_pad_batch_by_hand():
    rows = [([5, 6, 7], [False, True, True]), ([8, 9], [False, True])]
    right = pad_batch(rows, pad_id=PAD)
    assert right.input_ids.tolist() == [[5, 6, 7], [8, 9, PAD]]
    assert right.labels.tolist() == [[6, 7, X], [9, X, X]]
    assert right.attention_mask.tolist() == [[True, True, True], [True, True, False]]
    assert right.document_ids.tolist() == [[0, 0, 0], [1, 1, -1]]
    assert (right.n_real_tokens, right.n_slots) == (5, 6)
    assert right.padding_fraction == pytest.approx(1 / 6)
    moved = right.to("cpu")
    assert torch.equal(moved.labels, right.labels) and moved.n_slots == 6
    left = pad_batch(rows, pad_id=PAD, side="left")
    assert left.input_ids.tolist() == [[5, 6, 7], [PAD, 8, 9]]
    assert left.labels.tolist() == [[6, 7, X], [X, 9, X]]
    assert left.attention_mask.tolist() == [[True, True, True], [False, True, True]]


def test_pad_batch_refuses_a_row_longer_than_the_block():
    rows = make_rows([3, 9, 4])
    with pytest.raises(ValueError, match="row 1 has 9 tokens"):
        pad_batch(rows, pad_id=PAD, block_size=8)
    with pytest.raises(ValueError, match="row 1 has 9 tokens"):
        pack_batch(rows, pad_id=PAD, block_size=8)
    with pytest.raises(ValueError, match="side"):
        pad_batch(rows, pad_id=PAD, side="middle")
    with pytest.raises(ValueError, match="row 0"):
        pad_batch([([1, 2], [True])], pad_id=PAD)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_does_not_change_real_positions(side):
    model = tiny_gpt(pos="learned")
    rows = make_rows([6, 3, 11])
    target = rows[0]
    alone = pad_batch([target], pad_id=PAD)
    with torch.no_grad():
        ref_logits = model(alone.input_ids).logits[0]  # (6, V), no padding at all
        ref_loss = sft_loss(model(alone.input_ids).logits, alone.labels)[0]
        # Padding of 0 (with the short row), 5 (with the long row) slots, on either side.
        for company in ([rows[1]], [rows[2]], [rows[1], rows[2]]):
            batch = pad_batch([target, *company], pad_id=PAD, side=side)
            out = model(batch.input_ids, attention_mask=batch.attention_mask).logits
            real = batch.attention_mask[0]
            torch.testing.assert_close(out[0][real], ref_logits, atol=1e-5, rtol=1e-5)
            losses, _ = sequence_losses(out, batch.labels)
            torch.testing.assert_close(losses[0], ref_loss, atol=1e-5, rtol=1e-5)
            assert torch.isfinite(out).all()


def test_pack_batch_first_fit_by_hand():
    rows = make_rows([5, 9, 4, 3, 6])
    batch = pack_batch(rows, block_size=12, pad_id=PAD)
    # 5 opens row 0; 9 does not fit (14) and opens row 1; 4 and 3 fill row 0; 6 opens row 2.
    assert batch.document_ids.tolist() == [
        [0] * 5 + [2] * 4 + [3] * 3,
        [1] * 9 + [-1] * 3,
        [4] * 6 + [-1] * 6,
    ]
    assert (batch.n_real_tokens, batch.n_slots) == (27, 36)
    assert batch.input_ids[1, 9:].tolist() == [PAD] * 3
    assert batch.input_ids[0, 5:9].tolist() == rows[2][0]
    m = batch.attention_mask
    assert m.shape == (3, 12, 12)
    assert m[0, 6, 5] and m[0, 5, 6]  # one document: the block is full (the model adds causality)
    assert not m[0, 5, 4] and not m[0, 4, 5]  # documents 0 and 2 do not see each other
    # Padding slots see only themselves: no empty softmax row.
    assert m[1, 10].tolist() == [False] * 10 + [True, False]


def test_first_fit_refuses_oversize():
    assert first_fit([3, 3, 3], 6) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="row 2"):
        first_fit([1, 1, 7], 6)


def test_no_label_crosses_a_document_boundary():
    # Every token is an answer token, so a crossing label would not be hidden by the mask.
    rows = make_rows([4, 3, 5, 2], all_answer=True)
    batch = pack_batch(rows, block_size=16, pad_id=PAD)
    assert batch.input_ids.shape == (1, 16)
    doc = batch.document_ids[0]
    counted = (batch.labels[0] != X).nonzero().flatten()
    assert len(counted) == sum(n - 1 for n in (4, 3, 5, 2))
    assert torch.equal(doc[counted], doc[counted + 1])
    # The last token of each document is ignored.
    ends = [3, 6, 11, 13]
    assert batch.labels[0, ends].tolist() == [X] * 4


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10), min_size=1, max_size=12), st.integers(10, 16))
def test_packing_places_every_document_once(lengths, block_size):
    rows = make_rows(lengths, all_answer=True)
    batch = pack_batch(rows, block_size=block_size, pad_id=PAD)
    for i, (ids, mask) in enumerate(rows):
        where = batch.document_ids == i
        assert int(where.sum()) == len(ids)
        b = int(where.any(1).nonzero()[0, 0])  # one packed row holds it, contiguously
        cols = where[b].nonzero().flatten()
        assert int(where[b].sum()) == len(ids) and cols[-1] - cols[0] == len(ids) - 1
        assert batch.input_ids[b, cols].tolist() == ids
        own = sft_labels(torch.tensor([ids]), torch.tensor([mask]))[0]
        assert torch.equal(batch.labels[b, cols], own)
    assert batch.n_real_tokens == sum(lengths)
    assert int((batch.document_ids == -1).sum()) == batch.n_slots - sum(lengths)
    # Each row is used and holds at most block_size tokens; first fit never leaves a row that
    # a later document would have fitted in unopened.
    assert batch.n_slots == block_size * len(first_fit(lengths, block_size))


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_packed_batch_gives_the_per_document_losses_of_padded_batches(pos):
    model = tiny_gpt(pos)
    rows = make_rows([5, 9, 4, 3, 6, 7])
    padded = pad_batch(rows, pad_id=PAD)
    packed = pack_batch(rows, block_size=16, pad_id=PAD)
    assert packed.n_slots < padded.n_slots
    with torch.no_grad():
        out_pad = model(padded.input_ids, attention_mask=padded.attention_mask).logits
        out_pack = model(packed.input_ids, attention_mask=packed.attention_mask).logits
    assert torch.isfinite(out_pack).all()
    per_row, n_row = sequence_losses(out_pad, padded.labels)
    per_doc, n_doc = sequence_losses(out_pack, packed.labels, document_ids=packed.document_ids)
    assert torch.equal(n_row, n_doc)
    torch.testing.assert_close(per_doc, per_row, atol=1e-5, rtol=1e-5)
    for reduction in ("token", "sequence"):
        a = sft_loss(out_pad, padded.labels, reduction=reduction)[0]
        b = sft_loss(
            out_pack, packed.labels, reduction=reduction, document_ids=packed.document_ids
        )[0]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_packing_wastes_fewer_slots_on_skewed_lengths():
    lengths = [3, 1, 2, 12, 1, 1, 5, 9]
    pad = padding_waste(lengths, batch_size=4, block_size=16, mode="pad")
    pack = padding_waste(lengths, batch_size=4, block_size=16, mode="pack")
    # Pad: batch [3,1,2,12] -> 4*12 = 48 slots, batch [1,1,5,9] -> 4*9 = 36.
    assert (pad["n_real"], pad["n_slots"], pad["n_pad"], pad["n_rows"]) == (34, 84, 50, 8)
    # Pack: [3,1,2] | [12] -> 2 rows of 16; [1,1,5,9] fills one row exactly.
    assert (pack["n_real"], pack["n_slots"], pack["n_pad"], pack["n_rows"]) == (34, 48, 14, 3)
    assert pack["padding_fraction"] == pytest.approx(14 / 48)
    assert pad["n_batches"] == pack["n_batches"] == 2
    # The counts agree with the batches the functions build.
    rows = make_rows(lengths)
    built = [pad_batch(rows[:4], pad_id=PAD), pad_batch(rows[4:], pad_id=PAD)]
    assert sum(b.n_slots for b in built) == pad["n_slots"]
    built = [pack_batch(rows[i : i + 4], block_size=16, pad_id=PAD) for i in (0, 4)]
    assert sum(b.n_slots for b in built) == pack["n_slots"]
    with pytest.raises(ValueError, match="block_size"):
        padding_waste(lengths, batch_size=4, mode="pack")
    with pytest.raises(ValueError, match="mode"):
        padding_waste(lengths, batch_size=4, mode="stream")


def test_dataset_and_iteration():
    rows = make_rows([4, 7, 2, 5, 3])
    ds = to_dataset(rows)
    assert ds.column_names == ["input_ids", "loss_mask", "length"]
    assert ds["length"] == [4, 7, 2, 5, 3]
    assert ds.with_format("torch")[1]["input_ids"].tolist() == rows[1][0]

    def ids_of(batches):
        return [b.input_ids[b.attention_mask].tolist() for b in batches]

    in_order = list(iterate_batches(ds, batch_size=2, pad_id=PAD, block_size=8, shuffle=False))
    assert [b.input_ids.shape[0] for b in in_order] == [2, 2, 1]
    assert in_order[0].input_ids[0, :4].tolist() == rows[0][0]
    assert in_order[2].input_ids[0].tolist() == rows[4][0]
    dropped = list(
        iterate_batches(ds, batch_size=2, pad_id=PAD, block_size=8, shuffle=False, drop_last=True)
    )
    assert len(dropped) == 2

    def seeded(seed, mode="pad"):
        g = torch.Generator().manual_seed(seed)
        return list(
            iterate_batches(ds, batch_size=2, pad_id=PAD, block_size=8, mode=mode, generator=g)
        )

    assert ids_of(seeded(3)) == ids_of(seeded(3))
    orders = {tuple(map(tuple, ids_of(seeded(s)))) for s in range(6)}
    assert len(orders) > 1  # the seed matters
    # Every example appears once per pass, padded or packed.
    for mode in ("pad", "pack"):
        seen = sorted(len(r) for b in seeded(5, mode) for r in _documents(b))
        assert seen == [2, 3, 4, 5, 7]
    # The message names the example's index in the dataset, before any batch is built.
    with pytest.raises(ValueError, match="row 1 has 7 tokens"):
        iterate_batches(ds, batch_size=2, pad_id=PAD, block_size=6, generator=torch.Generator())


def _documents(batch):
    out = []
    for b in range(batch.input_ids.shape[0]):
        for d in batch.document_ids[b].unique().tolist():
            if d >= 0:
                out.append(batch.input_ids[b][batch.document_ids[b] == d].tolist())
    return out
