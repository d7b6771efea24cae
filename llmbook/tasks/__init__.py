"""Verifiable tasks with gold answers: the data of supervised fine-tuning, preference pairs and RL.

Each task (``add``, ``sub``, ``mul``, ``compare``, ``reverse``, ``sort_letters``, ``sort_numbers``,
``count``, ``lookup``) draws seeded problems at a difficulty, phrases them in several natural ways,
knows the gold answer, and verifies a model's completion (a reward of 0 or 1 that never crashes on
garbage) and names the kind of a wrong one. Train, validation and test splits are disjoint by problem.
:func:`generate_examples` draws a mixture; :func:`order_examples` orders it for a curriculum;
:func:`task_examples` draws a balanced evaluation set.

    >>> from llmbook.tasks import generate_examples, verify
    >>> [ex] = generate_examples(["add"], 1, split="train", seed=0, difficulty=2)
    >>> verify(ex, ex.answer + ".")
    1.0
"""

from llmbook.tasks import arithmetic, facts, text  # noqa: F401  (importing registers the tasks)
from llmbook.tasks.base import (
    FAILURE_KINDS,
    TASKS,
    Example,
    Task,
    classify_failure,
    get_task,
    verify,
)
from llmbook.tasks.curriculum import SCHEDULES, difficulty_score, order_examples
from llmbook.tasks.splits import SPLITS, generate_examples, split_of, task_examples

__all__ = [
    "FAILURE_KINDS",
    "SCHEDULES",
    "SPLITS",
    "TASKS",
    "Example",
    "Task",
    "classify_failure",
    "difficulty_score",
    "generate_examples",
    "get_task",
    "order_examples",
    "split_of",
    "task_examples",
    "verify",
]
