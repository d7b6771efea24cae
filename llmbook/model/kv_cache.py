"""Key/value caches for generation: a preallocated cache, and a fixed-size rolling cache with
attention sinks for streaming past the context window (StreamingLLM, Xiao et al. 2023)."""

from __future__ import annotations

import torch

from llmbook.model.config import ModelConfig


class KVCache:
    """Keys and values of every layer for all tokens so far, in buffers allocated once.

    ``k`` and ``v`` have shape ``(L, B, K, max_len, D)``. Keys are stored already rotated (RoPE at
    their absolute positions), so a step only computes the new token's projections.

    :param config: the model config (layers, kv heads, head width).
    :param batch_size: rows (B).
    :param max_len: the longest sequence the cache will hold (prompt plus new tokens).
    :param device: where to allocate.
    :param dtype: the buffers' dtype.

    Introduced in {doc}`/book/part3/04-kv-cache`.
    """

    rotates_keys = False

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (config.n_layer, batch_size, config.kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0
        """Tokens already in the cache."""

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append one layer's new keys and values and return all of them so far.

        :param layer: layer index.
        :param k: new keys ``(B, K, T, D)``.
        :param v: new values ``(B, K, T, D)``.
        :returns: views ``(B, K, length + T, D)`` of keys and values.
        :raises ValueError: when the cache would overflow.
        """
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"max_len: the cache holds {self.max_len} tokens, {end} needed")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        """Mark ``n`` more tokens as stored (called once per forward, after every layer).

        :param n: tokens added.
        """
        self.length += n

    @property
    def nbytes(self) -> int:
        """Memory held by the buffers."""
        return self.k.nbytes + self.v.nbytes


class RollingKVCache:
    """A fixed-size cache for streaming: the first ``sinks`` tokens plus a ring of the last ``window``.

    Memory never grows, however long the stream. Keys are stored *unrotated*; each step they are rotated
    by their position inside the cache (sinks ``0..S-1``, then the window oldest to newest), so the
    distances RoPE sees never exceed ``sinks + window`` (the scheme of StreamingLLM). Tokens are fed
    one at a time. The sinks are the first tokens fed, so rows must not be padded (a padding column
    would become a sink): :class:`~llmbook.model.gpt.GPT` refuses an ``attention_mask`` with this
    cache. For padded batches use :class:`KVCache`, whose mask counts sinks in real tokens.

    :param config: the model config.
    :param batch_size: rows (B); all rows advance together (no padding).
    :param sinks: tokens kept from the start (S), may be 0.
    :param window: most recent tokens kept (W).
    :param device: where to allocate.
    :param dtype: the buffers' dtype.

    Introduced in {doc}`/book/part3/06-streaming`.
    """

    rotates_keys = True

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        *,
        sinks: int,
        window: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if window < 1 or sinks < 0:
            raise ValueError(f"window: need window >= 1 and sinks >= 0, got {window}, {sinks}")
        self.sinks, self.window = sinks, window
        size = sinks + window
        shape = (config.n_layer, batch_size, config.kv_heads, size, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        """Tokens fed so far (the index of the next token), as in :class:`KVCache`."""

    @property
    def size(self) -> int:
        """Slots in the cache (S + W)."""
        return self.sinks + self.window

    def _slot(self, t: int) -> int:
        if t < self.sinks:
            return t
        return self.sinks + (t - self.sinks) % self.window

    def slot_tokens(self, t: int) -> torch.Tensor:
        """Which token each slot holds once token ``t`` is stored (-1 for an empty slot).

        :param t: the newest token's index.
        :returns: ``(S + W,)`` long.
        """
        S, W = self.sinks, self.window
        held = torch.full((S + W,), -1, dtype=torch.long)
        held[:S] = torch.arange(S)
        held[:S][held[:S] > t] = -1
        if t >= S:
            r = torch.arange(W)
            latest = t - (t - S - r) % W  # the latest token <= t that maps to ring slot r
            held[S:] = torch.where(latest >= S, latest, -1)
        return held

    def positions(self, t: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Cache-relative positions after storing token ``t``.

        :param t: the newest token's index.
        :returns: ``(slot_positions (S+W,), valid (S+W,) bool, query_position)``.
        """
        held = self.slot_tokens(t)
        valid = held >= 0
        first_window = max(self.sinks, t - self.window + 1)
        pos = torch.where(held < self.sinks, held, self.sinks + held - first_window)
        return pos.clamp(min=0), valid, min(t, self.sinks + self.window - 1)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one new token's (unrotated) key and value for a layer.

        :param layer: layer index.
        :param k: ``(B, K, 1, D)``.
        :param v: ``(B, K, 1, D)``.
        :returns: all slots' keys and values ``(B, K, S + W, D)`` (empty slots are masked by the model).
        """
        if k.size(2) != 1:
            raise ValueError(f"k: the rolling cache takes one token per step, got {k.size(2)}")
        slot = self._slot(self.length)
        self.k[layer, :, :, slot] = k[:, :, 0]
        self.v[layer, :, :, slot] = v[:, :, 0]
        return self.k[layer], self.v[layer]

    def advance(self, n: int) -> None:
        """Mark ``n`` (= 1) more tokens as fed.

        :param n: tokens added.
        """
        self.length += n

    @property
    def nbytes(self) -> int:
        """Memory held by the buffers: constant."""
        return self.k.nbytes + self.v.nbytes
