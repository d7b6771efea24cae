"""The exercises that :func:`~llmbook.exercises.check.check` knows, at least one per Part.

Each entry is an exercise a chapter already asks for; its solution in the chapter's hidden dropdown
starts with the line ``# exercise: <name>`` (``tests/book/test_exercise_solutions.py`` runs every
such block through the checker).
"""

from __future__ import annotations

from llmbook.exercises.catalog_align import (
    DPO_LOSS,
    GRPO_LOSS,
    LOO_ADVANTAGES,
    MEAN_POOL_REWARD,
    PACK,
    PPO_POLICY_LOSS,
)
from llmbook.exercises.catalog_model import (
    BPE_ENCODE,
    BRADLEY_TERRY,
    ONLINE_ATTENTION,
    ROLLING_CACHE,
    ROUTER,
    TOP_K,
)
from llmbook.exercises.check import Exercise

EXERCISES: dict[str, Exercise] = {
    spec.name: spec
    for spec in (
        BRADLEY_TERRY,  # Part 0
        ONLINE_ATTENTION,  # Part 1
        TOP_K,  # Part 2
        ROLLING_CACHE,  # Part 3
        BPE_ENCODE,  # Part 4
        ROUTER,  # Part 5
        PACK,  # Part 6
        MEAN_POOL_REWARD,  # Part 7
        PPO_POLICY_LOSS,  # Part 8
        LOO_ADVANTAGES,  # Part 9
        GRPO_LOSS,  # Part 9
        DPO_LOSS,  # Part 10
    )
}
"""Every exercise by name, in the order of the book."""
