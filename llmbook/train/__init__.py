"""Training: losses, the optimizer, schedules, the loop and evaluation; accumulation, mixed precision,
checkpoints, logging and data parallelism.

Introduced in {doc}`/book/part2/06-training-loop`; Part 4 scales it up.
"""

from llmbook.train.checkpoint import (
    CheckpointMismatchError,
    TrainingState,
    list_checkpoints,
    load_latest,
    load_training_state,
    save_training_state,
)
from llmbook.train.distributed import DistInfo, init_distributed, shard
from llmbook.train.evaluate import EvalResult, evaluate
from llmbook.train.loop import (
    PRECISIONS,
    History,
    TrainConfig,
    accumulate_gradients,
    autocast,
    train,
)
from llmbook.train.loss import bits_per_byte, lm_loss, shift_labels
from llmbook.train.lr_range import LRRangeResult, lr_range_test
from llmbook.train.optim import build_optimizer, param_groups
from llmbook.train.schedule import (
    SCHEDULES,
    constant,
    learning_rate,
    warmup_cosine,
    warmup_stable_decay,
)

__all__ = [
    "PRECISIONS",
    "SCHEDULES",
    "CheckpointMismatchError",
    "DistInfo",
    "EvalResult",
    "History",
    "LRRangeResult",
    "TrainConfig",
    "TrainingState",
    "accumulate_gradients",
    "autocast",
    "bits_per_byte",
    "build_optimizer",
    "constant",
    "evaluate",
    "init_distributed",
    "learning_rate",
    "list_checkpoints",
    "lm_loss",
    "lr_range_test",
    "load_latest",
    "load_training_state",
    "param_groups",
    "save_training_state",
    "shard",
    "shift_labels",
    "train",
    "warmup_cosine",
    "warmup_stable_decay",
]
