r"""Training a few rows of an embedding or an output head: the new tokens of a fine-tune, and nothing else.

Fine-tuning into a chat format adds tokens (Part 6.2): their embedding rows and their rows of the
output head start at the mean of the others and must be learned, or the model can neither read
``<|assistant|>`` nor write ``<|end|>``. Training the whole embedding and head for three new rows
would undo what a low-rank adapter saves, so :class:`TrainableRows` keeps the full matrix frozen and
learns an additive delta for the chosen rows only:

$$W' = W + S^\top D, \qquad S \in \{0,1\}^{k\times V} \text{ selects the } k \text{ rows},\ D \in \mathbb R^{k\times C},\ D_0 = 0,$$

so the adapted layer starts equal to the original, has $kC$ trainable numbers, and merges back into
a plain layer exactly (peft's ``trainable_token_indices`` does the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TrainableRows(nn.Module):
    """An ``nn.Embedding`` or ``nn.Linear`` whose weight is frozen except for some rows.

    For an embedding the rows are token ids; for a linear layer (an output head) they are output
    features, i.e. the logits of those tokens.

    :param base: the layer to wrap (kept as ``base``, frozen).
    :param rows: the row indices to train (distinct, in range).
    :raises ValueError: naming ``base`` for another layer type, or ``rows`` when empty, repeated or
        out of range.

    Introduced in {doc}`/book/part10/02-lora`.
    """

    def __init__(self, base: nn.Module, rows: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(base, (nn.Embedding, nn.Linear)):
            raise ValueError(f"base: expected nn.Embedding or nn.Linear, got {type(base).__name__}")
        rows = [int(r) for r in rows]
        n = base.weight.shape[0]
        if not rows or len(set(rows)) != len(rows) or not all(0 <= r < n for r in rows):
            raise ValueError(f"rows: expected distinct indices in [0, {n}), got {rows!r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.register_buffer(
            "rows", torch.tensor(rows, dtype=torch.long, device=base.weight.device)
        )
        C = base.weight.shape[1]
        self.delta = nn.Parameter(base.weight.new_zeros(len(rows), C))

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's frozen weight $W$ (what code that reads ``layer.weight`` expects).

        :returns: the base layer's weight parameter.
        """
        return self.base.weight

    def adapted_weight(self) -> torch.Tensor:
        """The adapted weight $W + S^\\top D$ (differentiable in ``delta``).

        :returns: ``(V, C)`` for an embedding, ``(out, in)`` for a linear layer.
        """
        return self.base.weight.index_add(0, self.rows, self.delta.to(self.base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped layer's forward with the adapted weight.

        :param x: ids ``(B, T)`` for an embedding, features ``(..., in)`` for a linear layer.
        :returns: what the wrapped layer returns.
        """
        if isinstance(self.base, nn.Embedding):
            b = self.base
            return F.embedding(
                x,
                self.adapted_weight(),
                b.padding_idx,
                b.max_norm,
                b.norm_type,
                b.scale_grad_by_freq,
                b.sparse,
            )
        return F.linear(x, self.adapted_weight(), self.base.bias)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The wrapped layer with the delta added into its weight (the same layer object).

        :returns: the base layer, whose parameters require gradients again.
        """
        self.base.weight.copy_(self.adapted_weight())
        for p in self.base.parameters():
            p.requires_grad_(True)
        return self.base


def train_rows(
    model: nn.Module, rows: Sequence[int], *, names: Sequence[str] = ("tok_emb", "lm_head")
) -> list[str]:
    """Wrap a model's token embedding and output head so that only ``rows`` of them train.

    Other parameters are left as they are (freeze them first, e.g. with
    :func:`~llmbook.adapt.lora.inject_lora`).

    :param model: the model (a :class:`~llmbook.model.gpt.GPT`).
    :param rows: token ids whose rows train (the new tokens).
    :param names: the attribute names of the layers to wrap.
    :returns: the wrapped names.
    :raises ValueError: naming ``model`` when its head is tied to its embedding (one matrix, which
        two wrappers would adapt twice), or ``names`` for a missing or already wrapped layer.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    layers = [getattr(model, name, None) for name in names]
    for name, layer in zip(names, layers):
        if not isinstance(layer, (nn.Embedding, nn.Linear)):
            raise ValueError(f"names: {name!r} is not an embedding or linear layer of the model")
    weights = [layer.weight for layer in layers]
    if len({id(w) for w in weights}) != len(weights):
        raise ValueError("model: its head is tied to its embedding; untie them to train rows")
    for name, layer in zip(names, layers):
        setattr(model, name, TrainableRows(layer, rows))
    return list(names)


def merge_rows(model: nn.Module) -> nn.Module:
    """Fold every :class:`TrainableRows` of a model back into a plain layer, in place.

    :param model: the model.
    :returns: the same model.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, TrainableRows):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, module.merged())
    return model
