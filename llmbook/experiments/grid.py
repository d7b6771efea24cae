"""Ablation grids: a baseline model, the cells that change one switch of it, a budget and seeds.

An :class:`AblationGrid` is validated field by field on construction, and its
:attr:`~AblationGrid.key` changes with anything that changes its runs; :func:`equal_params_width`
finds the width that keeps a deeper or shallower model at the baseline's size; :data:`GRIDS` holds
the presets. The runner that trains a grid and records its results is
:mod:`llmbook.experiments.ablate`.

Introduced in {doc}`/book/part10/05-ablations`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import dataclass, fields

from llmbook.model.config import ModelConfig, check_field_values, config_from_dict
from llmbook.model.counting import count_parameters
from llmbook.train.loop import TrainConfig

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_SEED = 2**64 - 1


@dataclass(kw_only=True)
class AblationGrid:
    """Cells (variants of one baseline model) times seeds, trained on the same budget and data.

    Every cell's model config and the training config are built and validated on construction, so a
    bad override raises a :class:`ValueError` that names the field and the cell, e.g.
    ``cells.deep: n_embd: must be divisible by n_head (4), got 90``. All runs of a seed share the
    batches (the training seed is the run's seed), which is what makes per-seed differences between
    cells tighter than the cells' own spreads.

    Introduced in {doc}`/book/part10/05-ablations`.
    """

    name: str
    """The grid's name; letters, digits, ``.``, ``_`` and ``-`` (it names the results file)."""
    base_model: dict
    """:class:`~llmbook.model.config.ModelConfig` fields of the baseline cell."""
    train: dict
    """:class:`~llmbook.train.loop.TrainConfig` fields of every run, except ``seed`` (the run's)."""
    cells: dict
    """Cell name -> ModelConfig fields that override ``base_model``; ``"baseline": {}`` is required."""
    seeds: tuple[int, ...]
    """The seeds, distinct, each in [0, 2**64 - 1]; the book uses at least three."""
    corpus: str = "tinyshakespeare"
    """The corpus (a key of :data:`llmbook.data.corpora.CORPORA`), read as bytes."""
    train_fraction: float = 0.9
    """Share of the corpus in the training split; the rest is validation."""
    val_tokens: int | None = None
    """Evaluate on the first this many tokens of the validation split (for speed); None: all."""

    def __post_init__(self) -> None:
        from llmbook.data.corpora import CORPORA

        check_field_values(type(self), {f.name: getattr(self, f.name) for f in fields(self)})
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"name: must be letters, digits, '.', '_' or '-', got {self.name!r}")
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus: unknown corpus {self.corpus!r}; known: {sorted(CORPORA)}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction: must be in (0, 1), got {self.train_fraction!r}")
        if self.val_tokens is not None and self.val_tokens < 2:
            raise ValueError(f"val_tokens: must be at least 2 or None, got {self.val_tokens!r}")
        # Copies, so that changing the caller's dicts later cannot change a validated grid.
        for name in ("base_model", "train", "cells"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(
                    f"{name}: must be a dict, got {type(getattr(self, name)).__name__}"
                )
            setattr(self, name, copy.deepcopy(getattr(self, name)))
        if "seed" in self.train:
            raise ValueError("train: seed: is set per run from seeds; leave it out")
        try:
            train = TrainConfig.from_dict(self.train)
        except ValueError as err:
            raise ValueError(f"train: {err}") from None
        try:
            ModelConfig.from_dict(self.base_model)
        except ValueError as err:
            raise ValueError(f"base_model: {err}") from None
        if self.cells.get("baseline") != {}:
            raise ValueError("cells: must hold 'baseline': {} (the base model itself)")
        for cell, overrides in self.cells.items():
            if not isinstance(cell, str) or not _NAME.fullmatch(cell):
                raise ValueError(
                    f"cells: a cell name must be letters, digits, '.', '_' or '-', got {cell!r}"
                )
            if not isinstance(overrides, dict):
                raise ValueError(f"cells.{cell}: must be a dict of ModelConfig fields")
            try:
                config = self.model_config(cell)
            except ValueError as err:
                raise ValueError(f"cells.{cell}: {err}") from None
            # Byte ids 0-255 (and the BOS id, when windows start with one) must be in the vocabulary.
            least = max(256, (train.bos_id or 0) + 1)
            if config.vocab_size < least:
                raise ValueError(
                    f"cells.{cell}: vocab_size: must be at least {least} for byte tokens, "
                    f"got {config.vocab_size}"
                )
            if train.block_size is not None and train.block_size > config.block_size:
                raise ValueError(
                    f"train: block_size: {train.block_size} exceeds cells.{cell}'s block_size "
                    f"{config.block_size}"
                )
        if isinstance(self.seeds, list):  # as read back from JSON
            self.seeds = tuple(self.seeds)
        if not isinstance(self.seeds, tuple) or not self.seeds:
            raise ValueError(f"seeds: must be a non-empty tuple of integers, got {self.seeds!r}")
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
                raise ValueError(f"seeds: each must be an integer in [0, 2**64 - 1], got {seed!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: must be distinct, got {self.seeds}")

    def model_config(self, cell: str) -> ModelConfig:
        """The model config of one cell: ``base_model`` with the cell's overrides.

        :param cell: a cell name.
        :returns: the validated config.
        :raises KeyError: for an unknown cell.
        :raises ValueError: when the merged fields are invalid (naming the field).

        Introduced in {doc}`/book/part10/05-ablations`.
        """
        return ModelConfig.from_dict({**self.base_model, **self.cells[cell]})

    def train_config(self, seed: int) -> TrainConfig:
        """The training config of a run: ``train`` with ``seed`` as its seed.

        :param seed: the run's seed.
        :returns: the validated config.

        Introduced in {doc}`/book/part10/05-ablations`.
        """
        return TrainConfig.from_dict({**self.train, "seed": seed})

    @property
    def key(self) -> str:
        """16 hex digits of the sha256 of the grid and the torch release series, in canonical JSON.

        The resolved configs (defaults filled in) are hashed too, so a changed default in
        :class:`~llmbook.model.config.ModelConfig` or :class:`~llmbook.train.loop.TrainConfig` gives
        a new key rather than mixing old and new runs in one file.

        Introduced in {doc}`/book/part10/05-ablations`.
        """
        from llmbook.zoo.key import torch_minor

        payload = {
            "grid": self.to_dict(),
            "models": {cell: self.model_config(cell).to_dict() for cell in self.cells},
            "train": {k: v for k, v in self.train_config(0).to_dict().items() if k != "seed"},
            "torch": torch_minor(),
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        """The grid as a JSON-serialisable dict (``seeds`` as a list).

        :returns: one entry per field.

        Introduced in {doc}`/book/part10/05-ablations`.
        """
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> AblationGrid:
        """Build a grid from :meth:`to_dict`'s output, rejecting unknown keys by name.

        :param data: field names mapped to values.
        :returns: the validated grid.
        :raises ValueError: for an unknown key or an invalid value, naming the field.

        Introduced in {doc}`/book/part10/05-ablations`.
        """
        return config_from_dict(cls, data)


def equal_params_width(
    base: ModelConfig, n_layer: int, *, non_embedding: bool = True
) -> ModelConfig:
    """``base`` with ``n_layer`` blocks and the width whose parameter count is closest to ``base``'s.

    Depth against width is only a fair question at equal size. Counts are by formula
    (:func:`~llmbook.model.counting.count_parameters`). By default they leave out the token and
    position tables: those grow with width but hold no computation, and the non-embedding count is the
    one scaling laws relate loss to (Kaplan et al., 2020). Candidate widths are multiples of
    ``n_head`` (doubled when RoPE needs an even head width or sinusoidal positions an even width);
    ties go to the narrower. ``mlp_hidden``, when set, is kept, not scaled.

    :param base: the reference config.
    :param n_layer: the new depth.
    :param non_embedding: match non-embedding parameters (default) or all of them.
    :returns: the new config.
    :raises ValueError: when ``n_layer`` is not a positive integer.

    Introduced in {doc}`/book/part10/05-ablations`.
    """
    if isinstance(n_layer, bool) or not isinstance(n_layer, int) or n_layer < 1:
        raise ValueError(f"n_layer: must be a positive integer, got {n_layer!r}")
    target = count_parameters(base, non_embedding=non_embedding)
    even = base.pos_embedding == "rope" or (base.pos_embedding == "sinusoidal" and base.n_head % 2)
    step = base.n_head * (2 if even else 1)
    best, best_gap = None, math.inf
    width = step
    while True:
        config = ModelConfig.from_dict({**base.to_dict(), "n_layer": n_layer, "n_embd": width})
        gap = abs(count_parameters(config, non_embedding=non_embedding) - target)
        if gap < best_gap:
            best, best_gap = config, gap
        elif count_parameters(config, non_embedding=non_embedding) > target:
            return best  # the count grows with width: every wider model is further away
        width += step


def _book_grid() -> AblationGrid:
    base = dict(
        vocab_size=256,
        block_size=64,
        n_layer=2,
        n_head=4,
        n_embd=64,
        norm="layernorm",
        pos_embedding="learned",
        mlp="gelu",
    )
    base_config = ModelConfig(**base)
    deep, wide = equal_params_width(base_config, 4), equal_params_width(base_config, 1)
    return AblationGrid(
        name="book",
        base_model=base,
        cells={
            "baseline": {},
            "rmsnorm": {"norm": "rmsnorm"},
            "sinusoidal": {"pos_embedding": "sinusoidal"},
            "rope": {"pos_embedding": "rope"},
            # 8C/3 = 170 keeps the MLP at GELU's 8C^2 weights (the default rounds up to 192, +12 %).
            "swiglu": {"mlp": "swiglu", "mlp_hidden": 170},
            "gqa": {"n_kv_head": 2},
            "deep": {"n_layer": deep.n_layer, "n_embd": deep.n_embd},
            "wide": {"n_layer": wide.n_layer, "n_embd": wide.n_embd},
        },
        # The budget: 300 steps of 8 windows (154k tokens) and 32k validation tokens per run. The
        # whole grid (8 cells x 3 seeds, evaluation included) took 69 s with 1 torch thread on the
        # book's 2-core CPU while another training job kept both cores busy:
        # `llmbook ablate --grid book --threads 1`. On that loaded machine 2 threads took 17 min
        # (each thread waits for the other's core); 2 threads on an idle machine: not measured yet.
        # Many small steps beat fewer large ones here: after 80 steps of 32 windows the learned-
        # position baseline is still on the unigram plateau (about 4.8 bits per byte).
        train=dict(
            max_steps=300,
            batch_size=8,
            lr=3e-3,
            min_lr=3e-4,
            warmup_steps=30,
            eval_interval=0,
            eval_batch_size=64,
        ),
        val_tokens=32768,
        seeds=(0, 1, 2),
    )


def _smoke_grid() -> AblationGrid:
    return AblationGrid(
        name="smoke",
        base_model=dict(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16),
        cells={"baseline": {}, "rope": {"pos_embedding": "rope"}},
        train=dict(max_steps=4, batch_size=4, warmup_steps=1, eval_interval=0),
        seeds=(0, 1),
        val_tokens=256,
    )


GRIDS: dict[str, AblationGrid] = {"book": _book_grid(), "smoke": _smoke_grid()}
"""Preset grids: ``"book"`` (the chapter's: one cell per architectural switch, 3 seeds, about a
minute on 2 cores) and ``"smoke"`` (2 cells x 2 seeds, a few steps; for tests and the CLI example)."""
