"""A tiny GRPO config shared by the Part 9 tests."""

from llmbook.align.grpo_config import GRPOConfig

__all__ = ["tiny_grpo"]


def tiny_grpo(**overrides) -> GRPOConfig:
    """A GRPO config small enough for a unit test (a few seconds on a CPU)."""
    settings = dict(
        prompts={"add": [1], "reverse": [3]},
        iterations=3,
        prompts_per_batch=4,
        group_size=4,
        minibatch_size=8,
        updates_per_batch=2,
        eval_examples=4,
        eval_interval=0,
        max_new_tokens=4,
        lr=1e-3,
    )
    return GRPOConfig(**{**settings, **overrides})
