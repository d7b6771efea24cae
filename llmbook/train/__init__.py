"""Training: losses, the optimizer, schedules, the loop and evaluation.

Introduced in {doc}`/book/part2/04-training-loop`.
"""

from llmbook.train.evaluate import EvalResult, evaluate
from llmbook.train.loop import History, TrainConfig, train
from llmbook.train.loss import bits_per_byte, lm_loss, shift_labels
from llmbook.train.optim import build_optimizer, param_groups
from llmbook.train.schedule import warmup_cosine

__all__ = [
    "EvalResult",
    "History",
    "TrainConfig",
    "bits_per_byte",
    "build_optimizer",
    "evaluate",
    "lm_loss",
    "param_groups",
    "shift_labels",
    "train",
    "warmup_cosine",
]
