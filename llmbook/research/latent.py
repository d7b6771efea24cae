r"""A tiny byte latent transformer: a local encoder over bytes, a global transformer over patches,
a local decoder back to bytes.

The three stacks follow the Byte Latent Transformer (Pagnoni et al., 2024) in miniature:

1. the **local encoder**, a small causal transformer over the bytes of a window;
2. **pooling** into one vector per patch (here the mean of the patch's encoder states, where BLT uses
   cross-attention from a pooled query to the patch's bytes), projected to the global width;
3. the **global transformer**, causal over the patches, which does most of the work per patch and so
   costs a fraction of a byte model's per byte;
4. the **local decoder**, a small causal transformer over the bytes again, whose input at byte $t$ is
   the encoder's state plus the global output of the last patch that is complete at $t$.

Step 4 is what keeps the model causal. Byte $t$ predicts $x_{t+1}$ and may only use $x_{\le t}$; a patch
is complete at $t$ when its last byte is at or before $t$, and whether byte $t$ closes its patch is
decided by $H(x_{t+1})$, a function of $x_{\le t}$. So the hard byte that opens a patch is predicted
with the global model's view of everything before it, as in BLT's decoder.

Introduced in {doc}`/book/part10/09-byte-patches`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.data.batching import IGNORE_INDEX, as_ids, eval_batches
from llmbook.model.block import Block
from llmbook.model.config import ATTN_IMPLS, ModelConfig, check_field_values
from llmbook.model.gpt import GPTOutput
from llmbook.model.norm import RMSNorm
from llmbook.model.rope import rope_cache
from llmbook.train.loop import History, TrainConfig
from llmbook.train.optim import build_optimizer
from llmbook.train.schedule import learning_rate


@dataclass(kw_only=True)
class LatentConfig:
    """Shape of a :class:`LatentLM`. Blocks are pre-norm with RMSNorm, RoPE and a GELU MLP of 4C.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """

    vocab_size: int = 256
    """Byte values the model reads and predicts (V)."""
    block_size: int = 128
    """Bytes per window (T); a window holds at most T patches."""
    n_embd_local: int = 64
    """Width of the local encoder and decoder."""
    n_head_local: int = 4
    """Attention heads of the local stacks."""
    n_layer_encoder: int = 1
    """Blocks in the local encoder."""
    n_layer_decoder: int = 1
    """Blocks in the local decoder."""
    n_embd_global: int = 128
    """Width of the global transformer."""
    n_head_global: int = 4
    """Attention heads of the global transformer."""
    n_layer_global: int = 2
    """Blocks in the global transformer."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation."""
    norm_eps: float = 1e-5
    """Epsilon of the RMSNorms."""
    attn_impl: str = "auto"
    """Attention kernel of every block (see :class:`~llmbook.model.config.ModelConfig`)."""

    def __post_init__(self) -> None:
        check_field_values(type(self), {f.name: getattr(self, f.name) for f in fields(self)})
        for f in fields(self):
            if f.name != "attn_impl" and getattr(self, f.name) <= 0:
                raise ValueError(f"{f.name}: must be positive, got {getattr(self, f.name)!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl: must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        for width, heads in (("n_embd_local", "n_head_local"), ("n_embd_global", "n_head_global")):
            C, H = getattr(self, width), getattr(self, heads)
            if C % H or (C // H) % 2:
                raise ValueError(f"{width}: must be {heads} ({H}) heads of even width, got {C}")

    def block_config(self, part: str) -> ModelConfig:
        """The :class:`~llmbook.model.config.ModelConfig` the blocks of one part are built from.

        :param part: ``"local"`` or ``"global"``.
        :returns: the config (its ``n_layer`` is the part's depth; encoder and decoder together
            for ``"local"``).
        """
        local = part == "local"
        return ModelConfig(
            vocab_size=self.vocab_size,
            block_size=self.block_size,
            n_layer=self.n_layer_encoder + self.n_layer_decoder if local else self.n_layer_global,
            n_head=self.n_head_local if local else self.n_head_global,
            n_embd=self.n_embd_local if local else self.n_embd_global,
            bias=False,
            norm="rmsnorm",
            pos_embedding="rope",
            mlp="gelu",
            norm_eps=self.norm_eps,
            init_std=self.init_std,
            attn_impl=self.attn_impl,
        )


class LatentLM(nn.Module):
    """Local encoder, global transformer over patches, local decoder (see the module docstring).

    :param config: the :class:`LatentConfig`.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """

    def __init__(self, config: LatentConfig) -> None:
        super().__init__()
        self.config = config
        local, glob = config.block_config("local"), config.block_config("global")
        Cl, Cg = config.n_embd_local, config.n_embd_global
        self.tok_emb = nn.Embedding(config.vocab_size, Cl)
        self.encoder = nn.ModuleList(Block(local, i) for i in range(config.n_layer_encoder))
        self.to_global = nn.Linear(Cl, Cg, bias=False)
        self.blocks = nn.ModuleList(Block(glob, i) for i in range(config.n_layer_global))
        self.global_norm = RMSNorm(Cg, eps=config.norm_eps)
        self.from_global = nn.Linear(Cg, Cl, bias=False)
        self.start = nn.Parameter(torch.zeros(Cl))  # the condition before any patch is complete
        self.decoder = nn.ModuleList(Block(local, i) for i in range(config.n_layer_decoder))
        self.norm_f = RMSNorm(Cl, eps=config.norm_eps)
        self.lm_head = nn.Linear(Cl, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self._rope = {part: rope_cache(config.block_size, cfg.head_dim) for part, cfg in
                      (("local", local), ("global", glob))}  # fmt: skip
        std, local_depth = config.init_std, len(self.encoder) + len(self.decoder)
        for name, p in self.named_parameters():
            if "norm" in name or name == "start":
                continue  # norm gains stay one, the start vector zero
            # GPT-2's init; residual output projections get 1/sqrt(2 L) for their stack's L blocks.
            L = len(self.blocks) if name.startswith("blocks") else local_depth
            residual = name.endswith(("o_proj.weight", "down_proj.weight"))
            nn.init.normal_(p, std=std / math.sqrt(2 * L) if residual else std)

    def _stack(self, blocks: nn.ModuleList, x: torch.Tensor, part: str) -> torch.Tensor:
        cos, sin = (t[: x.size(1)].to(x.device) for t in self._rope[part])
        for i, block in enumerate(blocks):
            x = block(x, rope=(cos, sin, cos, sin), layer=i)  # causal: no mask means causal
        return x

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, ends: torch.Tensor
    ) -> GPTOutput:
        """Next-byte logits for a batch of windows cut into patches.

        :param idx: bytes ``(B, T)``.
        :param targets: the next bytes ``(B, T)``; ``IGNORE_INDEX`` does not count.
        :param ends: bool ``(B, T)``, True where a byte is the last of its patch (see
            :func:`~llmbook.research.patching.patch_ends`); the window's first byte always opens
            a patch.
        :returns: a :class:`~llmbook.model.gpt.GPTOutput` with ``logits`` ``(B, T, V)`` and the loss.
        :raises ValueError: when ``ends`` does not match ``idx`` or the window is too long.
        """
        B, T = idx.shape
        if tuple(ends.shape) != (B, T):
            raise ValueError(f"ends: expected shape {(B, T)}, got {tuple(ends.shape)}")
        if T > self.config.block_size:
            raise ValueError(f"idx: {T} bytes exceed block_size ({self.config.block_size})")
        e = ends.to(device=idx.device, dtype=torch.long)
        closed = e.cumsum(1)  # (B, T): patches complete at t, inclusive
        patch = closed - e  # (B, T): index of the patch byte t belongs to
        P = int(patch.max()) + 1
        h = self._stack(self.encoder, self.tok_emb(idx), "local")  # (B, T, Cl)
        Cl = h.size(-1)
        sums = h.new_zeros(B, P, Cl).scatter_add(1, patch[..., None].expand(B, T, Cl), h)
        count = h.new_zeros(B, P).scatter_add(1, patch, h.new_ones(B, T))
        pooled = sums / count.clamp(min=1)[..., None]  # (B, P, Cl): mean of each patch's bytes
        g = self._stack(self.blocks, self.to_global(pooled), "global")  # (B, P, Cg)
        g = self.from_global(self.global_norm(g))  # (B, P, Cl)
        last = (closed - 1).clamp(min=0)[..., None].expand(B, T, Cl)  # last complete patch at t
        cond = torch.where((closed > 0)[..., None], g.gather(1, last), self.start)  # (B, T, Cl)
        x = self._stack(self.decoder, h + cond, "local")
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return GPTOutput(logits, loss)

    def num_params(self) -> int:
        """Count the distinct parameters (the tied head counts once).

        :returns: the number of scalar parameters.
        """
        return sum(p.numel() for p in self.parameters())


def latent_flops_per_byte(config: LatentConfig, mean_patch: float) -> float:
    r"""Training FLOPs per byte of a :class:`LatentLM`, counted like
    :func:`~llmbook.model.counting.flops_per_token`: $6N$ per matmul weight and $12\,L\,T\,C$ for
    attention at full length.

    With $L_\ell$ local blocks of width $C_\ell$, $L_g$ global blocks of width $C_g$ and patches of
    mean length $\bar p$ (so $T / \bar p$ patches per window), every byte pays the local part and
    every patch the global part:

    $$F = 6\,(12 L_\ell C_\ell^2 + V C_\ell) + 12 L_\ell T C_\ell
    + \frac{1}{\bar p}\Big(6\,(12 L_g C_g^2 + 2 C_\ell C_g) + 12 L_g \frac{T}{\bar p} C_g\Big).$$

    :param config: the model's config.
    :param mean_patch: mean patch length $\bar p$ (bytes), at least 1.
    :returns: FLOPs per byte for one training step.
    :raises ValueError: for a ``mean_patch`` that is not a finite number >= 1.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    ok = isinstance(mean_patch, (int, float)) and not isinstance(mean_patch, bool)
    if not ok or not math.isfinite(mean_patch) or mean_patch < 1:
        raise ValueError(f"mean_patch: must be a finite number >= 1, got {mean_patch!r}")
    c, T, V = config, config.block_size, config.vocab_size
    Ll, Cl = c.n_layer_encoder + c.n_layer_decoder, c.n_embd_local
    Lg, Cg = c.n_layer_global, c.n_embd_global
    local = 6 * (12 * Ll * Cl * Cl + V * Cl) + 12 * Ll * T * Cl
    per_patch = 6 * (12 * Lg * Cg * Cg + 2 * Cl * Cg) + 12 * Lg * (T / mean_patch) * Cg
    return local + per_patch / mean_patch


def patched_batch(
    ids: torch.Tensor,
    ends: torch.Tensor,
    batch_size: int,
    block_size: int,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random windows of a byte stream with their patch ends, drawn as
    :func:`~llmbook.data.batching.random_batch` draws them (same generator, same windows).

    :param ids: the byte stream ``(N,)``.
    :param ends: its patch-end mask ``(N,)`` (see :func:`~llmbook.research.patching.patch_ends`).
    :param batch_size: windows (B).
    :param block_size: window length (T).
    :param generator: the random generator.
    :returns: ``(x, ends, y)``, each ``(B, T)``; ``ends`` belongs to ``x``.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    if len(ids) != len(ends):
        raise ValueError(f"ends: expected {len(ids)} entries, got {len(ends)}")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)  # (B,)
    index = starts[:, None] + torch.arange(block_size)  # (B, T)
    return ids[index], ends[index], ids[index + 1]


def _call(model: nn.Module, x, e, y) -> GPTOutput:
    # A byte model ignores the patches; the latent model needs them.
    return model(x, y, ends=e) if isinstance(model, LatentLM) else model(x, y)


def train_patched(
    model: nn.Module, ids: torch.Tensor, ends: torch.Tensor, config: TrainConfig
) -> History:
    """Train a :class:`LatentLM`, or a byte GPT on the same windows, with the book's recipe.

    The steps are those of :func:`~llmbook.train.loop.train`: scheduled learning rate, a batch of
    random windows (:func:`patched_batch`), AdamW with decay on matrices, clipping. With the same
    ``config.seed`` every model sees the same windows. No evaluation (see :func:`evaluate_patched`).

    :param model: a :class:`LatentLM`, or a model called as ``model(x, y)``.
    :param ids: the training bytes ``(N,)``.
    :param ends: their patch-end mask ``(N,)`` (ignored by a byte model).
    :param config: uses the schedule, optimizer, batch, ``block_size`` and ``seed`` fields.
    :returns: the :class:`~llmbook.train.loop.History` (training losses and time).

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    ids, ends = as_ids(ids), torch.as_tensor(ends, dtype=torch.bool)
    T = config.block_size or model.config.block_size
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = build_optimizer(
        model, lr=config.lr, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)
    )
    history = History()
    model.train()
    for step in range(config.max_steps):
        started = time.perf_counter()
        lr = learning_rate(
            step,
            schedule=config.schedule,
            max_lr=config.lr,
            warmup_steps=config.warmup_steps,
            total_steps=config.max_steps,
            min_lr=config.min_lr,
            decay_fraction=config.decay_fraction,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, e, y = patched_batch(ids, ends, config.batch_size, T, generator=generator)
        loss = _call(model, x, e, y).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        history.train_seconds += time.perf_counter() - started
        history.tokens_seen += config.batch_size * T
        history.steps.append(step)
        history.train_loss.append(float(loss.detach()))
        history.lr.append(lr)
        if not math.isfinite(history.train_loss[-1]):
            raise FloatingPointError(f"loss became {history.train_loss[-1]} at step {step}")
    return history


@torch.no_grad()
def evaluate_patched(
    model: nn.Module, ids: torch.Tensor, ends: torch.Tensor, *, batch_size: int = 64
) -> float:
    """Bits per byte over a whole byte stream, in the non-overlapping windows of
    :func:`~llmbook.data.batching.eval_batches`: every byte after the first is a target once.

    :param model: a :class:`LatentLM` or a byte model.
    :param ids: the bytes ``(N,)``.
    :param ends: their patch-end mask ``(N,)``.
    :param batch_size: windows per forward pass.
    :returns: the mean loss over the targets, in bits per byte.

    Introduced in {doc}`/book/part10/09-byte-patches`.
    """
    ids, ends = as_ids(ids), torch.as_tensor(ends, dtype=torch.long)
    if len(ids) != len(ends):
        raise ValueError(f"ends: expected {len(ids)} entries, got {len(ends)}")
    T = model.config.block_size
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    windows = zip(eval_batches(ids, batch_size, T), eval_batches(ends, batch_size, T))
    for (x, y), (e, _) in windows:  # the same layout: e holds the ends of x's bytes
        logits = _call(model, x, e.bool(), None).logits
        total += F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX,
            reduction="sum",
        ).item()  # fmt: skip
        count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1) / math.log(2)
