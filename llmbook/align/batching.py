"""From rendered chat examples to SFT batches: padding to the longest row, or packing whole rows.

An example is a pair ``(ids, loss_mask)`` as the chat template renders it. Padding puts one example
per row and fills the rest with a pad token that costs compute and teaches nothing; packing puts
several whole examples in a row of ``block_size`` tokens and keeps them apart with a block-diagonal
attention mask, so that each computes exactly what it computes alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from llmbook.align.sft_loss import sft_labels
from llmbook.data.batching import IGNORE_INDEX

SIDES = ("right", "left")
"""Where :func:`pad_batch` puts the padding."""

MODES = ("pad", "pack")
"""How :func:`iterate_batches` and :func:`padding_waste` lay examples out in rows."""


@dataclass
class SFTBatch:
    """One SFT training batch, ready for ``model(input_ids, attention_mask=attention_mask)``.

    :param input_ids: long ``(B, T)``.
    :param labels: long ``(B, T)``, aligned with the logits, ``IGNORE_INDEX`` where a position does
        not count (prompt, padding, the last token of each example).
    :param attention_mask: bool ``(B, T)`` True at real tokens (padded), or ``(B, T, T)`` True where
        query ``t`` and key ``s`` belong to the same example (packed).
    :param document_ids: long ``(B, T)``: the index in the input ``rows`` of the example each
        position holds, ``-1`` at padding (give it to :func:`~llmbook.align.sft_loss.sft_loss` for a
        per-example mean over packed rows).
    :param n_real_tokens: token slots that hold an example's token.
    :param n_slots: all token slots, ``B * T``.

    Introduced in {doc}`/book/part6/03-sft-loss`.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    document_ids: torch.Tensor
    n_real_tokens: int
    n_slots: int

    @property
    def padding_fraction(self) -> float:
        """The share of token slots that hold padding: compute spent on nothing."""
        return 1.0 - self.n_real_tokens / self.n_slots

    def to(self, device: torch.device | str) -> SFTBatch:
        """The same batch with its tensors on ``device`` (the counts stay Python ints).

        :param device: where to put the tensors.
        :returns: a new batch.
        """
        return replace(
            self,
            input_ids=self.input_ids.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            attention_mask=self.attention_mask.to(device, non_blocking=True),
            document_ids=self.document_ids.to(device, non_blocking=True),
        )


def _as_row(row, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = row
    ids = torch.as_tensor(ids, dtype=torch.long)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if ids.dim() != 1 or ids.shape != mask.shape or ids.numel() == 0:
        raise ValueError(
            f"rows: row {index} must be a non-empty 1-D (ids, loss_mask) pair of equal length, "
            f"got shapes {tuple(ids.shape)} and {tuple(mask.shape)}"
        )
    return ids, mask


def _check_lengths(lengths: Sequence[int], block_size: int | None) -> None:
    # Truncating would cut the end of the answer (its end-of-turn token first): the model would
    # learn to stop early. Refuse instead, and say which example.
    if block_size is None:
        return
    for i, n in enumerate(lengths):
        if n > block_size:
            raise ValueError(
                f"rows: row {i} has {n} tokens, more than block_size {block_size}; "
                "filter or shorten it before batching rather than truncating its answer"
            )


def pad_batch(
    rows: Sequence, *, pad_id: int, block_size: int | None = None, side: str = "right"
) -> SFTBatch:
    """One example per row, padded to the longest row of the batch.

    :param rows: ``(ids, loss_mask)`` pairs (lists or 1-D tensors).
    :param pad_id: the token that fills the padding (never attended to, never a label).
    :param block_size: the longest row allowed (None: no limit).
    :param side: ``"right"`` (training) or ``"left"`` (generation); the model's ``(B, T)`` mask
        makes either compute the same for the real tokens.
    :returns: the batch, ``attention_mask`` of shape ``(B, T)``.
    :raises ValueError: for no rows, a malformed row, or a row longer than ``block_size``.

    Introduced in {doc}`/book/part6/03-sft-loss`.
    """
    if side not in SIDES:
        raise ValueError(f"side: must be one of {SIDES}, got {side!r}")
    if len(rows) == 0:
        raise ValueError("rows: need at least one example")
    pairs = [_as_row(r, i) for i, r in enumerate(rows)]
    lengths = [len(ids) for ids, _ in pairs]
    _check_lengths(lengths, block_size)
    B, T = len(pairs), max(lengths)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.bool)
    document_ids = torch.full((B, T), -1, dtype=torch.long)
    for b, (ids, mask) in enumerate(pairs):
        n = len(ids)
        span = slice(0, n) if side == "right" else slice(T - n, T)
        input_ids[b, span] = ids
        # Labels per example, before placing it: a padding token is never a target.
        labels[b, span] = sft_labels(ids[None], mask[None])[0]
        attention_mask[b, span] = True
        document_ids[b, span] = b
    return SFTBatch(input_ids, labels, attention_mask, document_ids, sum(lengths), B * T)


def first_fit(lengths: Sequence[int], block_size: int) -> list[list[int]]:
    """Greedy first-fit bin packing: each item goes to the first bin with room, else a new bin.

    Items keep their order inside a bin and are never split. Sorting the lengths first
    (first-fit decreasing) packs tighter, but would undo an order the caller chose (a curriculum).

    :param lengths: item sizes, each at most ``block_size``.
    :param block_size: the capacity of a bin.
    :returns: the item indices in each bin, bins in order of opening.
    :raises ValueError: for an item longer than ``block_size``.

    Introduced in {doc}`/book/part6/04-packing`.
    """
    _check_lengths(lengths, block_size)
    bins: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        for j, free in enumerate(room):
            if n <= free:
                bins[j].append(i)
                room[j] -= n
                break
        else:
            bins.append([i])
            room.append(block_size - n)
    return bins


def pack_batch(rows: Sequence, *, block_size: int, pad_id: int) -> SFTBatch:
    """Whole examples packed by first fit into rows of ``block_size`` tokens, kept apart by the mask.

    ``attention_mask[b, t, s]`` is True when query ``t`` and key ``s`` hold the same example: a
    block diagonal (the model adds causality, and restarts positions at each block). A padding slot
    at the end of a row sees only itself, so no softmax row is empty (an empty one is NaN, and NaN
    would leak through the matmul into real rows). Labels are made per example before packing, so
    the last token of an example never predicts the first token of the next.

    :param rows: ``(ids, loss_mask)`` pairs (lists or 1-D tensors).
    :param block_size: the length of every packed row (T).
    :param pad_id: the token that fills the end of a row.
    :returns: the batch, ``attention_mask`` of shape ``(B, T, T)``, ``B`` the number of rows used.
    :raises ValueError: for no rows, a malformed row, or a row longer than ``block_size``.

    Introduced in {doc}`/book/part6/04-packing`.
    """
    if len(rows) == 0:
        raise ValueError("rows: need at least one example")
    pairs = [_as_row(r, i) for i, r in enumerate(rows)]
    lengths = [len(ids) for ids, _ in pairs]
    bins = first_fit(lengths, block_size)
    B, T = len(bins), block_size
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    document_ids = torch.full((B, T), -1, dtype=torch.long)
    for b, members in enumerate(bins):
        start = 0
        for i in members:
            ids, mask = pairs[i]
            n = len(ids)
            input_ids[b, start : start + n] = ids
            labels[b, start : start + n] = sft_labels(ids[None], mask[None])[0]
            document_ids[b, start : start + n] = i
            start += n
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    real = document_ids >= 0  # (B, T)
    eye = torch.eye(T, dtype=torch.bool)
    attention_mask = (same & real[:, :, None]) | (eye & ~real[:, :, None])  # (B, T, T)
    return SFTBatch(input_ids, labels, attention_mask, document_ids, sum(lengths), B * T)


def padding_waste(
    lengths: Sequence[int], *, batch_size: int, block_size: int | None = None, mode: str
) -> dict[str, int | float]:
    """Count real and padding token slots for a stream of examples, batched in order.

    The stream is cut into batches of ``batch_size`` examples (the last may be short), as
    :func:`iterate_batches` does without shuffling. Mode ``"pad"`` pads each batch to its longest
    example (``len(batch) * max(batch)`` slots); mode ``"pack"`` packs each batch by
    :func:`first_fit` into rows of ``block_size`` (``rows * block_size`` slots). Only lengths are
    needed, so the measurement runs on a whole dataset without building a tensor.

    :param lengths: example lengths in tokens, in stream order.
    :param batch_size: examples per batch.
    :param block_size: the row length; required for ``"pack"``, a limit for ``"pad"``.
    :param mode: ``"pad"`` or ``"pack"``.
    :returns: ``n_examples``, ``n_batches``, ``n_rows``, ``n_real`` (token slots holding a token),
        ``n_slots``, ``n_pad`` (``n_slots - n_real``) and ``padding_fraction``.
    :raises ValueError: for an unknown mode, a bad size, or an example longer than ``block_size``.

    Introduced in {doc}`/book/part6/04-packing`.
    """
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    if mode == "pack" and block_size is None:
        raise ValueError("block_size: packing needs the row length")
    lengths = [int(n) for n in lengths]
    _check_lengths(lengths, block_size)
    n_rows = n_slots = 0
    for start in range(0, len(lengths), batch_size):
        chunk = lengths[start : start + batch_size]
        if mode == "pad":
            n_rows += len(chunk)
            n_slots += len(chunk) * max(chunk)
        else:
            rows = len(first_fit(chunk, block_size))
            n_rows += rows
            n_slots += rows * block_size
    n_real = sum(lengths)
    return {
        "n_examples": len(lengths),
        "n_batches": -(-len(lengths) // batch_size),
        "n_rows": n_rows,
        "n_real": n_real,
        "n_slots": n_slots,
        "n_pad": n_slots - n_real,
        "padding_fraction": (n_slots - n_real) / n_slots if n_slots else 0.0,
    }


def to_dataset(rows: Sequence):
    """The examples as a Hugging Face ``datasets.Dataset`` with columns ``input_ids``,
    ``loss_mask`` and ``length``.

    The container keeps tokenized data on disk-backed Arrow tables, filters and maps in batches,
    and sorts by ``length`` for a curriculum. For a model that reads columns directly,
    ``dataset.with_format("torch")`` returns tensors; :func:`iterate_batches` pads or packs the
    plain lists itself, since rows of different lengths do not stack.

    :param rows: ``(ids, loss_mask)`` pairs (lists or 1-D tensors).
    :returns: the dataset, one example per row, in the given order.
    :raises ValueError: for a malformed row.

    Introduced in {doc}`/book/part6/04-packing`.
    """
    import datasets  # imported here: a heavy import that only the data path needs

    pairs = [_as_row(r, i) for i, r in enumerate(rows)]
    return datasets.Dataset.from_dict(
        {
            "input_ids": [ids.tolist() for ids, _ in pairs],
            "loss_mask": [mask.tolist() for _, mask in pairs],
            "length": [len(ids) for ids, _ in pairs],
        }
    )


def iterate_batches(
    dataset,
    *,
    batch_size: int,
    pad_id: int,
    block_size: int,
    mode: str = "pad",
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[SFTBatch]:
    """One pass over a dataset, ``batch_size`` examples per batch, padded or packed.

    The order is a permutation drawn from ``generator`` (the same seed gives the same batches), or
    the dataset's own order with ``shuffle=False``, which a curriculum relies on (sort the dataset,
    then iterate without shuffling). In ``"pack"`` mode every batch holds the same number of
    examples as in ``"pad"`` mode, so both see the same tokens per step; only the number of rows
    differs.

    :param dataset: a dataset from :func:`to_dataset` (columns ``input_ids`` and ``loss_mask``).
    :param batch_size: examples per batch.
    :param pad_id: the padding token.
    :param block_size: the longest example allowed; in ``"pack"`` mode, the row length.
    :param mode: ``"pad"`` (:func:`pad_batch`, right padding) or ``"pack"`` (:func:`pack_batch`).
    :param generator: the random generator for the shuffle (None: torch's global one).
    :param shuffle: draw a random order; False keeps the dataset order.
    :param drop_last: leave out a last batch smaller than ``batch_size``.
    :returns: an iterator of :class:`SFTBatch`.
    :raises ValueError: for an unknown mode, a bad batch size, or an example longer than
        ``block_size`` (named by its index in the dataset, raised before the first batch).

    Introduced in {doc}`/book/part6/04-packing`.
    """
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    lengths = dataset["length"] if "length" in dataset.column_names else None
    if lengths is None:
        lengths = [len(ids) for ids in dataset["input_ids"]]
    _check_lengths([int(n) for n in lengths], block_size)
    return _batches(dataset, batch_size, pad_id, block_size, mode, generator, shuffle, drop_last)


def _batches(dataset, batch_size, pad_id, block_size, mode, generator, shuffle, drop_last):
    # A plain generator, so that iterate_batches validates eagerly when called.
    n = len(dataset)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        picked = dataset[order[start : start + batch_size].tolist()]  # dict of columns
        rows = list(zip(picked["input_ids"], picked["loss_mask"]))
        if mode == "pad":
            yield pad_batch(rows, pad_id=pad_id, block_size=block_size)
        else:
            yield pack_batch(rows, block_size=block_size, pad_id=pad_id)
