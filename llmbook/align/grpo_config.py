"""The settings of a GRPO run (Part 9), validated field by field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from llmbook.align.advantages import GROUP_SCALINGS
from llmbook.align.grpo_loss import AGGREGATIONS
from llmbook.align.ppo_config import PPO_PROMPTS, check_choices, check_rollout_fields
from llmbook.model.config import config_from_dict

MAX_SAMPLING_ROUNDS = 16
"""The most sampling rounds per batch: round ``r`` of iteration ``i`` draws its prompts from a seed
``16 * s(i) + r``, so 16 rounds keep every (iteration, round) pair's prompts apart."""


@dataclass(kw_only=True)
class GRPOConfig:
    """How to run GRPO: the prompts and groups, the reward, the loss variant, the updates, the evaluation.

    Every field is checked on construction; a bad value raises a :class:`ValueError` whose message
    starts with the field name (NaN and infinity included).

    Introduced in {doc}`/book/part9/05-the-loop`.
    """

    prompts: dict = field(default_factory=lambda: {k: list(v) for k, v in PPO_PROMPTS.items()})
    """Task name to the difficulty levels its prompts are drawn at (every cell equally often)."""
    iterations: int = 100
    """Rollout batches: sample groups, score, then update."""
    prompts_per_batch: int = 16
    """Prompts (groups) per rollout batch."""
    group_size: int = 4
    """Completions sampled per prompt, $k \\ge 2$."""
    updates_per_batch: int = 2
    """Passes over each rollout batch ($\\mu$, TRL's ``num_iterations``): the ratio is 1 on the
    first pass's first step and moves away from 1 after it."""
    minibatch_size: int = 32
    """Completions per optimizer step (divides ``prompts_per_batch * group_size``)."""
    lr: float = 1e-4
    """Learning rate (constant after warmup)."""
    warmup_steps: int = 5
    """Optimizer steps of linear warmup."""
    min_lr: float = 0.0
    """Unused by the constant schedule; kept so the shared optimizer checks apply."""
    weight_decay: float = 0.0
    """Decoupled weight decay on matrices."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.95
    """Adam's second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    clip_low: float = 0.2
    """$\\epsilon_\\text{low}$: the ratio's lower clip is $1 - \\epsilon_\\text{low}$ (< 1)."""
    clip_high: float | None = None
    """$\\epsilon_\\text{high}$: the upper clip is $1 + \\epsilon_\\text{high}$ (None: ``clip_low``)."""
    beta: float = 0.04
    """The KL coefficient of the loss's $\\beta\\,k_3$ term (0: no KL term)."""
    kl_ratio_correction: bool = False
    """Multiply the $k_3$ term by the ratio (TRL's ``use_bias_correction_kl``)."""
    aggregation: str = "grpo"
    """How per-token losses are averaged: one of :data:`~llmbook.align.grpo_loss.AGGREGATIONS`."""
    scale_rewards: str = "group"
    """How centred rewards are scaled: one of :data:`~llmbook.align.advantages.GROUP_SCALINGS`."""
    rm_weight: float = 0.0
    """Weight of the reward model's score (needs a reward model)."""
    verifier_weight: float = 1.0
    """Weight of the task verifier's 0/1 reward."""
    missing_end_penalty: float = 0.0
    """Subtracted from the reward of a completion that did not finish."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and sample more prompts to refill the batch (DAPO)."""
    max_sampling_rounds: int = 3
    """With ``dynamic_sampling``, at most this many rounds of sampling per batch (the batch may come
    out smaller when the rounds run out); at most :data:`MAX_SAMPLING_ROUNDS`."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    max_new_tokens: int | None = None
    """Generation budget per completion (None: the longest gold answer, its end and 4 more)."""
    eval_interval: int = 10
    """Evaluate on held-out prompts every this many iterations (0: at the start and end only)."""
    eval_examples: int = 200
    """Held-out prompts (validation split) per evaluation, spread evenly over the cells."""
    checkpoint_interval: int = 0
    """Save a resumable checkpoint every this many iterations (0: never)."""
    seed: int = 0
    """Seed of the prompts, the sampling and the minibatch order."""

    def __post_init__(self) -> None:
        check_rollout_fields(
            self,
            positive=(
                "iterations",
                "prompts_per_batch",
                "updates_per_batch",
                "minibatch_size",
                "eval_examples",
                "max_sampling_rounds",
            ),
        )
        if self.max_sampling_rounds > MAX_SAMPLING_ROUNDS:
            raise ValueError(
                f"max_sampling_rounds: at most {MAX_SAMPLING_ROUNDS} (each round's prompts come "
                f"from a seed of its own), got {self.max_sampling_rounds}"
            )
        if self.group_size < 2:
            raise ValueError(
                f"group_size: must be >= 2 (a group of one has no baseline), got {self.group_size}"
            )
        if (self.prompts_per_batch * self.group_size) % self.minibatch_size:
            raise ValueError(
                f"minibatch_size: must divide prompts_per_batch * group_size "
                f"({self.prompts_per_batch * self.group_size}), got {self.minibatch_size}"
            )
        if not 0.0 < self.clip_low < 1.0:
            raise ValueError(f"clip_low: must be in (0, 1), got {self.clip_low!r}")
        if self.clip_high is not None and not self.clip_high > 0:
            raise ValueError(f"clip_high: must be > 0 or None, got {self.clip_high!r}")
        if self.beta < 0:
            raise ValueError(f"beta: must be >= 0, got {self.beta!r}")
        check_choices(self, {"aggregation": AGGREGATIONS, "scale_rewards": GROUP_SCALINGS})

    @property
    def batch_size(self) -> int:
        """Completions per rollout batch: ``prompts_per_batch * group_size``."""
        return self.prompts_per_batch * self.group_size

    def to_dict(self) -> dict:
        """The config as a JSON-serialisable dict.

        :returns: field name to value.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GRPOConfig:
        """Build a config from a dict; unknown keys and wrong types raise naming the field.

        :param data: field name to value.
        :returns: the config.
        """
        return config_from_dict(cls, data)
