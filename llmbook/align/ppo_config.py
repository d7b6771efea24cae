"""The settings of a PPO run (Part 8), validated field by field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

from llmbook.align.kl import KL_ESTIMATORS
from llmbook.align.policy import CRITICS
from llmbook.align.reward_signal import SCORE_NORMS
from llmbook.model.config import check_field_values, config_from_dict
from llmbook.tasks import TASKS
from llmbook.train.optim import check_optimizer_fields

PPO_PROMPTS = {"add": [1], "sub": [1], "compare": [1], "count": [3, 4, 5, 6], "reverse": [3]}
"""The default prompt cells: task to difficulty levels where the SFT model is right sometimes but
not reliably (greedy 15-60 %; among 8 samples one is right 70-97 % of the time), so reinforcement
has something to reinforce (Part 8.4 measures it). The level-1 arithmetic cells have few distinct
problems, so the training and held-out splits of them are small and a gain on one need not carry over
to the other. The ``ppo`` recipe trains on letter counts instead (Part 8.5 measures the gap)."""


def check_rollout_fields(config, *, positive: Sequence[str]) -> None:
    """The checks a PPO and a GRPO config share; each failure is a ``ValueError`` naming the field.

    Every field's type and finiteness (:func:`~llmbook.model.config.check_field_values`); the prompt
    cells (known tasks, non-empty lists of valid levels); ``positive`` counts at least 1; the
    interval and seed fields at least 0; the optimizer fields
    (:func:`~llmbook.train.optim.check_optimizer_fields`); a positive temperature; the reward
    weights and the missing-end penalty at least 0, not both weights 0; ``max_new_tokens`` None or
    at least 1.

    :param config: a :class:`PPOConfig` or :class:`~llmbook.align.grpo_config.GRPOConfig`.
    :param positive: the names of the count fields that must be at least 1.
    :raises ValueError: for the first field that fails.
    """
    check_field_values(type(config), {f.name: getattr(config, f.name) for f in fields(config)})
    prompts = config.prompts
    if not isinstance(prompts, dict) or not prompts:
        raise ValueError(f"prompts: must be a non-empty dict of task levels, got {prompts!r}")
    for name, levels in prompts.items():
        if name not in TASKS:
            raise ValueError(f"prompts: unknown task {name!r}; known: {sorted(TASKS)}")
        if not isinstance(levels, list) or not levels:
            raise ValueError(f"prompts: the levels of {name!r} must be a non-empty list")
        for level in levels:
            try:
                TASKS[name].check_difficulty(level)
            except ValueError as err:
                raise ValueError(f"prompts: {err}") from None
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"{name}: must be a positive integer, got {getattr(config, name)}")
    for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "seed"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name}: must be >= 0, got {getattr(config, name)}")
    check_optimizer_fields(config)
    if not config.temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {config.temperature!r}")
    for name in ("rm_weight", "verifier_weight", "missing_end_penalty"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name}: must be >= 0, got {getattr(config, name)!r}")
    if config.rm_weight == 0 and config.verifier_weight == 0:
        raise ValueError(
            "rm_weight, verifier_weight: both are 0, so there is no reward; set one > 0"
        )
    if config.max_new_tokens is not None and config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1 or None, got {config.max_new_tokens}")


def check_choices(config, allowed: dict[str, Sequence[str]]) -> None:
    """Check that each named field holds one of its allowed values.

    :param config: any config object.
    :param allowed: field name to its allowed values.
    :raises ValueError: naming the first field whose value is not allowed.
    """
    for name, values in allowed.items():
        if getattr(config, name) not in values:
            raise ValueError(f"{name}: must be one of {values}, got {getattr(config, name)!r}")


@dataclass(kw_only=True)
class PPOConfig:
    """How to run PPO: the prompts, the reward, the KL control, the updates, the evaluation.

    Every field is checked on construction; a bad value raises a :class:`ValueError` whose message
    starts with the field name (NaN and infinity included).

    Introduced in {doc}`/book/part8/04-the-loop`.
    """

    prompts: dict = field(default_factory=lambda: {k: list(v) for k, v in PPO_PROMPTS.items()})
    """Task name to the difficulty levels its prompts are drawn at (every cell equally often)."""
    iterations: int = 100
    """Rollout batches: sample, score, then update."""
    batch_size: int = 64
    """Prompts (one completion each) per rollout batch."""
    ppo_epochs: int = 2
    """Passes over each rollout batch."""
    minibatch_size: int = 32
    """Completions per optimizer step (divides ``batch_size``)."""
    lr: float = 2e-5
    """Learning rate of the policy (constant after warmup)."""
    value_lr: float = 1e-3
    """Learning rate of the value head (and of a separate critic's trunk)."""
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
    clip: float = 0.2
    """PPO's ratio clip $\\epsilon$."""
    value_clip: float = 0.2
    """The value-clipping range (around the rollout's values)."""
    value_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    gamma: float = 1.0
    """Discount; 1 for episodes this short."""
    lam: float = 0.95
    """GAE's $\\lambda$."""
    beta: float = 0.05
    """The KL coefficient (the start value when ``kl_target`` is set)."""
    kl_target: float | None = None
    """Target KL per sequence for the adaptive controller; None keeps ``beta`` fixed."""
    kl_horizon: float = 10000.0
    """The adaptive controller's horizon, in sequences."""
    kl_estimator: str = "k1"
    """The per-token KL estimator folded into the rewards (see :mod:`llmbook.align.kl`)."""
    stop_kl: float | None = None
    """Stop a batch's epochs early once the minibatch approx-KL exceeds this (None: never)."""
    rm_weight: float = 1.0
    """Weight of the reward model's score."""
    verifier_weight: float = 0.0
    """Weight of the task verifier's 0/1 reward (mixed in when > 0)."""
    missing_end_penalty: float = 1.0
    """Subtracted from the score of a completion that did not finish."""
    score_norm: str = "running"
    """How scores are normalised: one of :data:`~llmbook.align.reward_signal.SCORE_NORMS`."""
    whiten_advantages: bool = True
    """Whiten the advantages over each rollout batch."""
    critic: str = "shared"
    """Where the value function lives: one of :data:`~llmbook.align.policy.CRITICS`."""
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
            positive=("iterations", "batch_size", "ppo_epochs", "minibatch_size", "eval_examples"),
        )
        if self.batch_size % self.minibatch_size:
            raise ValueError(
                f"minibatch_size: must divide batch_size ({self.batch_size}), got "
                f"{self.minibatch_size}"
            )
        if not self.value_lr > 0:
            raise ValueError(f"value_lr: must be positive, got {self.value_lr!r}")
        for name in ("clip", "value_clip", "kl_horizon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        for name in ("value_coef", "entropy_coef", "beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("kl_target", "stop_kl"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}: must be > 0 or None, got {value!r}")
        if self.kl_target is not None and self.beta == 0:
            raise ValueError("beta: the adaptive controller scales beta; it must start > 0")
        check_choices(
            self, {"kl_estimator": KL_ESTIMATORS, "score_norm": SCORE_NORMS, "critic": CRITICS}
        )

    def to_dict(self) -> dict:
        """The config as a JSON-serialisable dict.

        :returns: field name to value.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PPOConfig:
        """Build a config from a dict; unknown keys and wrong types raise naming the field.

        :param data: field name to value.
        :returns: the config.
        """
        return config_from_dict(cls, data)
