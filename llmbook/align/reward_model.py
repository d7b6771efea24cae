r"""The reward model: a transformer backbone and a linear head that turns a conversation into one number.

$$r_\theta(x, y) = w^\top h_\theta(x, y)_{\text{pool}} + b$$

where $h_\theta$ are the backbone's final hidden states for the prompt $x$ and answer $y$ rendered in
the chat format, and *pool* picks one vector per sequence:

- ``"last"``: the hidden state at the last real token (the ``<|end|>`` closing the answer). In a
  causal decoder it is the only position that has seen the whole conversation. This is the
  InstructGPT and Llama 2 reward model, and what ``transformers``' sequence-classification heads do.
- ``"mean"``: the mean over the real tokens. With ``causal=False`` (the *encoder* variant, the
  same blocks with the causal mask removed) every position sees every other, so a mean of them all
  summarises the sequence, as BERT-style classifiers do.

Padding never changes a score: the mask keeps padding out of attention and positions, and the pool
reads real tokens only, so left and right padding give the same reward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from llmbook.align.chat import ChatFormat
from llmbook.model.gpt import GPT

POOLINGS = ("last", "mean")
"""How :class:`RewardModel` reduces the hidden states to one vector per sequence."""


class RewardModel(nn.Module):
    """A backbone :class:`~llmbook.model.gpt.GPT` and a scalar head: one reward per sequence.

    The backbone's language-model head is kept (its weights travel with the checkpoint) but not used.

    :param backbone: the transformer (the SFT model, for Part 7).
    :param pooling: ``"last"`` or ``"mean"`` (see :data:`POOLINGS`).
    :param causal: True for the decoder reward model; False runs the backbone as an encoder.
    :raises ValueError: for an unknown pooling.

    Introduced in {doc}`/book/part7/02-reward-model`.
    """

    def __init__(self, backbone: GPT, *, pooling: str = "last", causal: bool = True) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: must be one of {POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.causal = bool(causal)
        C = backbone.config.n_embd
        self.head = nn.Linear(C, 1)
        # A small start: every reward near 0, so the first steps' sigmoid is in its linear range.
        nn.init.normal_(self.head.weight, std=1.0 / (C + 1) ** 0.5 * 0.1)
        nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        """The backbone's :class:`~llmbook.model.config.ModelConfig`."""
        return self.backbone.config

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One vector per row: the last real token's state, or the mean over real tokens.

        :param hidden: final hidden states ``(B, T, C)``.
        :param attention_mask: bool ``(B, T)``, True at real tokens (at least one per row).
        :returns: ``(B, C)``.
        """
        mask = attention_mask.to(dtype=torch.bool)
        if self.pooling == "mean":
            weights = mask.to(hidden.dtype)[..., None]  # (B, T, 1)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        T = mask.size(1)
        # The last True of each row, wherever the padding is: the largest index holding a real token.
        index = torch.arange(T, device=mask.device).expand_as(mask)
        last = torch.where(mask, index, -1).amax(dim=1)  # (B,)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The reward of each row.

        :param input_ids: token ids ``(B, T)``.
        :param attention_mask: bool ``(B, T)``, True at real tokens, padding on either side (default:
            no padding).
        :returns: rewards ``(B,)`` in float32.
        :raises ValueError: for a row without a real token.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.to(dtype=torch.bool)
        if not bool(attention_mask.any(dim=1).all()):
            raise ValueError("attention_mask: every row needs at least one real token")
        hidden = self.backbone.hidden_states(
            input_ids, attention_mask=attention_mask, causal=self.causal
        )  # (B, T, C)
        return self.head(self.pool(hidden, attention_mask)).squeeze(-1).float()  # (B,)


def render_scored(chat: ChatFormat, prompt: str, completion: str) -> list[int]:
    """The ids a reward model scores: the one-turn conversation, ending with ``<|end|>``.

    :param chat: the chat format.
    :param prompt: the user's prompt.
    :param completion: the assistant's answer.
    :returns: the ids (the same as :meth:`~llmbook.align.chat.ChatFormat.render_example` gives).

    Introduced in {doc}`/book/part7/02-reward-model`.
    """
    return chat.render_example(prompt, completion)[0]


def collate(
    rows: Sequence[Sequence[int]], *, pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id rows into a batch with its mask.

    :param rows: the id lists (each non-empty).
    :param pad_id: the id that fills padding (never attended to).
    :param side: ``"right"`` or ``"left"``.
    :returns: ``(input_ids (B, T), attention_mask (B, T))``.
    :raises ValueError: for no rows, an empty row, or an unknown side.

    Introduced in {doc}`/book/part7/02-reward-model`.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side: must be 'left' or 'right', got {side!r}")
    if len(rows) == 0 or any(len(r) == 0 for r in rows):
        raise ValueError("rows: need at least one row, each with at least one id")
    B, T = len(rows), max(len(r) for r in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(T - len(row), T)
        ids[b, span] = torch.as_tensor(list(row), dtype=torch.long)
        mask[b, span] = True
    return ids, mask


@torch.no_grad()
def score(
    model: RewardModel,
    chat: ChatFormat,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """Score (prompt, completion) pairs with a reward model: the function Parts 8 and 9 call.

    Each pair is rendered with :func:`render_scored`; rows are sorted by length and batched so that
    padding is small, and the scores come back in the input order. The model's train/eval mode is
    restored afterwards.

    :param model: the reward model.
    :param chat: the chat format it was trained with.
    :param prompts: user prompts.
    :param completions: the assistant's answers, one per prompt.
    :param batch_size: rows per forward pass.
    :returns: rewards ``(N,)``, float32, on the CPU.
    :raises ValueError: when the lists differ in length, a row is longer than the model's context,
        or ``batch_size`` is not a positive int.

    Introduced in {doc}`/book/part7/02-reward-model`.
    """
    if len(prompts) != len(completions):
        raise ValueError(
            f"completions: expected one per prompt ({len(prompts)}), got {len(completions)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    rows = [render_scored(chat, p, c) for p, c in zip(prompts, completions)]
    limit = model.config.block_size
    for i, row in enumerate(rows):
        if len(row) > limit:
            raise ValueError(f"completions: row {i} has {len(row)} tokens, over block_size {limit}")
    device = next(model.parameters()).device
    out = torch.empty(len(rows), dtype=torch.float32)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, mask = collate([rows[i] for i in chunk], pad_id=pad_id_of(chat))
            out[chunk] = model(ids.to(device), mask.to(device)).cpu()
    finally:
        model.train(was_training)
    return out


def pad_id_of(chat: ChatFormat) -> int:
    """The padding id of a chat format's tokenizer, or ``<|end|>`` when it has none (padding is masked).

    :param chat: the chat format.
    :returns: an id.
    """
    try:
        return chat.tokenizer.pad_id
    except ValueError:
        return chat.end_id
