"""From a long stream of token ids to (input, target) batches: random windows for training, a
deterministic full pass for evaluation, and the same data as a Hugging Face ``datasets.Dataset``."""

from __future__ import annotations

from collections.abc import Iterator

import torch

IGNORE_INDEX = -100
"""The target value that losses skip (PyTorch's ``cross_entropy`` default): padding, the position
after the last token, and in Part 6 the prompt."""


def as_ids(ids) -> torch.Tensor:
    """A 1-D ``torch.long`` tensor of token ids from a list, array or tensor.

    :param ids: the ids.
    :returns: the tensor (a view when ``ids`` already is one).
    """
    t = torch.as_tensor(ids, dtype=torch.long)
    if t.dim() != 1:
        raise ValueError(f"ids: expected a 1-D stream of token ids, got shape {tuple(t.shape)}")
    return t


def train_val_split(ids, train_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a token stream into its first ``train_fraction`` and the rest (nanoGPT's 90/10 split).

    :param ids: the token stream.
    :param train_fraction: share of tokens in the training part, in (0, 1).
    :returns: ``(train_ids, val_ids)``.

    Introduced in {doc}`/book/part2/02-batching`.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction: must be in (0, 1), got {train_fraction}")
    ids = as_ids(ids)
    n = int(train_fraction * len(ids))
    return ids[:n], ids[n:]


def random_batch(
    ids: torch.Tensor,
    batch_size: int,
    block_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    bos_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` random windows of ``block_size + 1`` tokens and shift them by one.

    ``x = window[:-1]`` and ``y = window[1:]``: position ``t`` of ``y`` is the token that follows position
    ``t`` of ``x``, so one window gives ``block_size`` next-token predictions at once. With ``bos_id``,
    every row starts with that token instead, as documents do in real pretraining: ``x = [BOS] + w[:-1]``
    and ``y = w`` for a window ``w`` of ``block_size`` tokens.

    :param ids: 1-D token stream, at least ``block_size + 1`` long.
    :param batch_size: windows per batch (B).
    :param block_size: window length (T).
    :param generator: the random generator (pass one for reproducible batches).
    :param device: where to put the batch.
    :param bos_id: start every row with this token (see above).
    :returns: ``(x, y)``, each ``(B, T)`` long.

    Introduced in {doc}`/book/part2/02-batching`.
    """
    if len(ids) < block_size + 1:
        raise ValueError(
            f"ids: need at least block_size + 1 = {block_size + 1} tokens, got {len(ids)}"
        )
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size + 1)  # (T+1,)
    windows = ids[starts[:, None] + offsets]  # (B, T+1)
    x, y = windows[:, :-1], windows[:, 1:]
    if bos_id is not None:
        x, y = torch.cat([torch.full_like(y[:, :1], bos_id), y[:, :-1]], dim=1), y
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y


def eval_batches(
    ids: torch.Tensor,
    batch_size: int,
    block_size: int,
    *,
    device: torch.device | str | None = None,
    bos_id: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A deterministic pass over the whole stream in non-overlapping windows.

    Every token after the first is a target exactly once. The last window is shorter; its missing
    targets are ``IGNORE_INDEX`` (and its missing inputs 0), so averaging the loss over targets that count
    gives the loss of the whole split.

    :param ids: 1-D token stream.
    :param batch_size: windows per batch.
    :param block_size: window length (T).
    :param device: where to put the batches.
    :param bos_id: start every window with this token; then the first token of the split is a target
        too, and each window's inputs are ``[BOS]`` plus its targets shifted by one.
    :returns: an iterator of ``(x, y)`` pairs, each ``(b, T)`` with ``b <= batch_size``.

    Introduced in {doc}`/book/part2/02-batching`.
    """
    ids = as_ids(ids)
    if bos_id is not None:
        n_windows = -(-len(ids) // block_size)
        y_all = torch.full((n_windows * block_size,), IGNORE_INDEX, dtype=torch.long)
        y_all[: len(ids)] = ids
        y_all = y_all.view(n_windows, block_size)
        x_all = torch.cat([torch.full((n_windows, 1), bos_id), y_all[:, :-1].clamp(min=0)], dim=1)
        for start in range(0, n_windows, batch_size):
            x, y = x_all[start : start + batch_size], y_all[start : start + batch_size]
            yield (x.to(device), y.to(device)) if device is not None else (x, y)
        return
    n_targets = len(ids) - 1
    if n_targets < 1:
        return
    n_windows = -(-n_targets // block_size)  # ceil
    padded = torch.full((n_windows * block_size + 1,), IGNORE_INDEX, dtype=torch.long)
    padded[: len(ids)] = ids
    x_all = padded[:-1].view(n_windows, block_size).clone()
    y_all = padded[1:].view(n_windows, block_size)
    x_all[x_all == IGNORE_INDEX] = 0  # inputs past the end are never used as targets' context
    for start in range(0, n_windows, batch_size):
        x, y = x_all[start : start + batch_size], y_all[start : start + batch_size]
        if device is not None:
            x, y = x.to(device), y.to(device)
        yield x, y


def to_hf_dataset(ids, block_size: int):
    """The token stream as a Hugging Face ``datasets.Dataset`` of shifted windows, formatted for torch.

    Non-overlapping windows of ``block_size + 1`` tokens are stored as ``window``; ``Dataset.map`` splits
    each into ``input_ids`` and ``labels`` (shifted by one); ``with_format("torch")`` makes rows tensors.

    :param ids: 1-D token stream.
    :param block_size: window length (T).
    :returns: a ``datasets.Dataset`` with columns ``input_ids`` and ``labels``, each ``(T,)`` per row.

    Introduced in {doc}`/book/part2/02-batching`.
    """
    from datasets import Dataset

    ids = as_ids(ids)
    n = (len(ids) - 1) // block_size
    windows = torch.stack([ids[i * block_size : i * block_size + block_size + 1] for i in range(n)])
    from datasets.utils.logging import (
        disable_progress_bar,
        enable_progress_bar,
        is_progress_bar_enabled,
    )

    ds = Dataset.from_dict({"window": windows.tolist()})
    was_enabled = is_progress_bar_enabled()
    disable_progress_bar()  # a bar per call clutters notebooks and logs
    try:
        ds = ds.map(
            lambda row: {"input_ids": row["window"][:-1], "labels": row["window"][1:]},
            remove_columns=["window"],
        )
    finally:
        if was_enabled:
            enable_progress_bar()
    return ds.with_format("torch")
