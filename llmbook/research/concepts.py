"""A concept-level model: a causal transformer over sentence vectors that regresses the next one.

The sentences of a document, each encoded to a unit vector by a frozen encoder
(:class:`~llmbook.research.sentences.SentenceEncoder`), form a sequence. :class:`ConceptModel` reads
it with the package's transformer blocks between an input projection (E -> C) and an output
projection (C -> E), and at every position predicts the vector of the next sentence, trained with
:func:`concept_loss` (mean squared error, as the Base-LCM, or cosine). There is no decoder from vectors
back to text here, so a prediction is read out by retrieval (:mod:`llmbook.research.retrieval`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.model.block import Block, build_norm
from llmbook.model.config import ModelConfig, check_field_values
from llmbook.model.positional import LearnedPositionalEmbedding
from llmbook.train.schedule import warmup_cosine

CONCEPT_LOSSES = ("mse", "cosine")


def _positive(obj, names: Sequence[str]) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"{name}: must be a positive integer, got {getattr(obj, name)!r}")


@dataclass(kw_only=True)
class ConceptConfig:
    """Shape of a :class:`ConceptModel`.

    Every field is checked in ``__post_init__`` (type, finiteness, range); a bad value raises a
    :class:`ValueError` whose message starts with the field name.

    Introduced in {doc}`/book/part10/06-concepts`.
    """

    concept_dim: int = 384
    """Width of a sentence vector (E): 384 for all-MiniLM-L6-v2."""
    block_size: int = 16
    """Most sentences the model reads at once (T at most)."""
    n_layer: int = 1
    """Transformer blocks (one is as good as two on a few thousand sentences, and half the cost)."""
    n_head: int = 4
    """Attention heads per block (H)."""
    n_embd: int = 128
    """Width of the residual stream (C); must be divisible by ``n_head``."""
    dropout: float = 0.3
    """Dropout on the input, attention weights and residual branches, in [0, 1); high, because a
    few thousand sentences are little data for a map from 384 numbers to 384 numbers."""

    def __post_init__(self) -> None:
        check_field_values(type(self), {f.name: getattr(self, f.name) for f in fields(self)})
        _positive(self, ("concept_dim", "block_size", "n_layer", "n_head", "n_embd"))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd: must be divisible by n_head ({self.n_head}), got {self.n_embd}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")

    def model_config(self) -> ModelConfig:
        """The :class:`~llmbook.model.config.ModelConfig` of the blocks (GPT-2 layout; no vocabulary:
        ``vocab_size`` is a placeholder that nothing reads).

        :returns: the config.
        """
        return ModelConfig(
            vocab_size=1,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            dropout=self.dropout,
        )

    def to_dict(self) -> dict:
        """The config as a plain dict.

        :returns: one entry per field.
        """
        return asdict(self)


@dataclass(kw_only=True)
class ConceptTrainConfig:
    """How :func:`train_concept_model` trains.

    Introduced in {doc}`/book/part10/06-concepts`.
    """

    loss: str = "mse"
    """``"mse"`` (squared distance, the Base-LCM objective) or ``"cosine"`` (1 - cosine)."""
    steps: int = 150
    """Optimizer steps (on a few thousand sentences, longer training overfits: see the chapter)."""
    batch_size: int = 32
    """Windows per step."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (cosine decay to a tenth, after a warmup of 5 % of the steps)."""
    weight_decay: float = 0.1
    """AdamW's decoupled weight decay."""
    grad_clip: float = 1.0
    """Largest global gradient norm (0: no clipping)."""
    stride: int | None = None
    """Sentences between the starts of two training windows; None: half the block size."""
    seed: int = 0
    """Seeds the order of the windows (the caller seeds the initial weights)."""

    def __post_init__(self) -> None:
        check_field_values(type(self), {f.name: getattr(self, f.name) for f in fields(self)})
        if self.loss not in CONCEPT_LOSSES:
            raise ValueError(f"loss: must be one of {CONCEPT_LOSSES}, got {self.loss!r}")
        _positive(self, ("steps", "batch_size"))
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride: must be a positive integer or None, got {self.stride!r}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be a positive number, got {self.lr!r}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        if self.seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {self.seed!r}")


class ConceptModel(nn.Module):
    r"""A causal transformer over sentence vectors (the Base-LCM shape, tiny).

    $$\hat e_{t+1} = W_\text{out}\,\operatorname{Norm}\big(\operatorname{Blocks}(W_\text{in}\,\sqrt{E}\,e_{\le t} + p_{\le t})\big)$$

    The unit vectors are scaled by $\sqrt E$ so that their coordinates are of order one (the LCM
    normalises its SONAR vectors for the same reason), projected to the stream width C, given learned
    positions, and passed through the package's pre-norm :class:`~llmbook.model.block.Block`\s, which
    are causal: position ``t`` sees sentences ``0..t`` only. The output projection maps back to E.

    :param config: the shape.

    Introduced in {doc}`/book/part10/06-concepts`.
    """

    def __init__(self, config: ConceptConfig) -> None:
        super().__init__()
        self.config = config
        mc = config.model_config()
        self.in_proj = nn.Linear(config.concept_dim, config.n_embd)
        self.pos_emb = LearnedPositionalEmbedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(mc, i) for i in range(config.n_layer))
        self.norm_f = build_norm(mc)
        self.out_proj = nn.Linear(config.n_embd, config.concept_dim)
        # A near-zero first prediction: the squared error starts at about 1 (a unit target) instead
        # of the hundreds a default-initialised map from C to E dimensions would give.
        nn.init.normal_(self.out_proj.weight, std=1e-3)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict, at every position, the vector of the next sentence.

        :param x: sentence vectors ``(B, T, E)``, T at most ``block_size``. Padding belongs at the
            end (right): causal attention keeps it out of every real position.
        :returns: predictions ``(B, T, E)``; position ``t`` predicts sentence ``t + 1``.
        :raises ValueError: for a wrong width or a sequence longer than ``block_size``.
        """
        B, T, E = x.shape
        if E != self.config.concept_dim:
            raise ValueError(f"x: expected width {self.config.concept_dim}, got {E}")
        if T > self.config.block_size:
            raise ValueError(f"x: {T} sentences exceed block_size ({self.config.block_size})")
        h = self.in_proj(x * math.sqrt(E)) + self.pos_emb(torch.arange(T, device=x.device))
        h = self.drop(h)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            h = block(h, layer=i)
        return self.out_proj(self.norm_f(h))  # (B, T, E)


def concept_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, kind: str = "mse"
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""The regression loss between predicted and true next-sentence vectors.

    $$\mathcal L_\text{mse} = \frac1{|M|}\sum_{t\in M}\lVert \hat e_t - e_t\rVert^2,\qquad
    \mathcal L_\text{cos} = \frac1{|M|}\sum_{t\in M}\Big(1 - \frac{\hat e_t\cdot e_t}{\lVert\hat e_t\rVert\,\lVert e_t\rVert}\Big)$$

    over the positions $M$ where ``mask`` is True. For unit targets the minimiser of the squared
    error is the conditional mean $\mathbb E[e \mid \text{context}]$, a vector shorter than one that
    lies between the plausible continuations (the Base-LCM's weakness); the cosine loss ignores length.

    :param pred: predictions ``(..., E)``.
    :param target: true vectors ``(..., E)``.
    :param mask: bool ``(...)``, True where a position counts; None: all.
    :param kind: ``"mse"`` or ``"cosine"``.
    :returns: ``(loss, metrics)``: the scalar loss and the detached means of both quantities
        (``"mse"``, ``"cosine"``: the mean cosine similarity) and the mean prediction norm.
    :raises ValueError: for an unknown ``kind``, mismatched shapes, or a mask that selects nothing.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    if kind not in CONCEPT_LOSSES:
        raise ValueError(f"kind: must be one of {CONCEPT_LOSSES}, got {kind!r}")
    if pred.shape != target.shape:
        raise ValueError(
            f"target: shape {tuple(target.shape)} differs from pred {tuple(pred.shape)}"
        )
    if mask is None:
        mask = torch.ones(pred.shape[:-1], dtype=torch.bool, device=pred.device)
    if tuple(mask.shape) != tuple(pred.shape[:-1]):
        raise ValueError(f"mask: expected shape {tuple(pred.shape[:-1])}, got {tuple(mask.shape)}")
    if not bool(mask.any()):
        raise ValueError("mask: selects no position")
    m = mask.to(pred.dtype)
    sq = (pred - target).pow(2).sum(-1)  # (...)
    cos = F.cosine_similarity(pred, target, dim=-1)  # (...)
    per_position = sq if kind == "mse" else 1.0 - cos
    loss = (per_position * m).sum() / m.sum()
    with torch.no_grad():
        metrics = {
            "mse": float((sq * m).sum() / m.sum()),
            "cosine": float((cos * m).sum() / m.sum()),
            "pred_norm": float((pred.norm(dim=-1) * m).sum() / m.sum()),
        }
    return loss, metrics


def make_windows(
    documents: Sequence[torch.Tensor], block_size: int, stride: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut documents of sentence vectors into training windows that never cross a document.

    A window of ``block_size + 1`` consecutive sentences gives ``block_size`` inputs and, shifted by
    one, their targets. Windows start every ``stride`` sentences, plus one that ends at the document's
    last sentence; a document shorter than a window gives one window, right-padded with zeros and
    masked. Documents of one sentence have nothing to predict and are skipped.

    :param documents: one ``(S, E)`` tensor per document.
    :param block_size: the model's context (T).
    :param stride: sentences between window starts; None: ``max(1, block_size // 2)``.
    :returns: ``(inputs, targets, mask)``: ``(W, T, E)``, ``(W, T, E)`` and bool ``(W, T)``.
    :raises ValueError: when no document has two sentences, or for a non-positive size.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    if block_size < 1:
        raise ValueError(f"block_size: must be a positive integer, got {block_size!r}")
    if stride is not None and stride < 1:
        raise ValueError(f"stride: must be a positive integer or None, got {stride!r}")
    stride = stride or max(1, block_size // 2)
    xs, ys, ms = [], [], []
    for doc in documents:
        S, E = doc.shape
        if S < 2:
            continue
        last = max(S - block_size - 1, 0)
        starts = sorted(set(range(0, last + 1, stride)) | {last})
        for s in starts:
            w = doc[s : s + block_size + 1]  # (L + 1, E)
            L = w.size(0) - 1
            x, y = doc.new_zeros(block_size, E), doc.new_zeros(block_size, E)
            x[:L], y[:L] = w[:-1], w[1:]
            m = torch.zeros(block_size, dtype=torch.bool)
            m[:L] = True
            xs.append(x)
            ys.append(y)
            ms.append(m)
    if not xs:
        raise ValueError("documents: none has two sentences, so there is nothing to predict")
    return torch.stack(xs), torch.stack(ys), torch.stack(ms)


def train_concept_model(
    model: ConceptModel, documents: Sequence[torch.Tensor], config: ConceptTrainConfig
) -> list[dict[str, float]]:
    """Train a :class:`ConceptModel` to predict each next sentence vector.

    AdamW on random minibatches of :func:`make_windows`, drawn with ``config.seed``; the learning
    rate warms up linearly over the first 5 % of the steps and then follows a cosine to a tenth.

    :param model: the model (trained in place; seed its initial weights before building it).
    :param documents: one ``(S, E)`` tensor of unit sentence vectors per training document.
    :param config: the training settings.
    :returns: one dict per step: ``"loss"`` and the metrics of :func:`concept_loss`.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    inputs, targets, mask = make_windows(documents, model.config.block_size, config.stride)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)
    history = []
    model.train()
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(
                step,
                max_lr=config.lr,
                warmup_steps=warmup,
                total_steps=config.steps,
                min_lr=0.1 * config.lr,
            )
        idx = torch.randint(len(inputs), (config.batch_size,), generator=gen)
        pred = model(inputs[idx])  # (B, T, E)
        loss, metrics = concept_loss(pred, targets[idx], mask[idx], config.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        history.append({"loss": float(loss.detach()), **metrics})
    model.eval()
    return history
