"""Alignment, Part 6 on: the chat format, supervised fine-tuning on verifiable tasks, evaluation
against gold (and, in Parts 7-9, rewards and reinforcement learning).

One concept per module: :mod:`~llmbook.align.chat` (special tokens, render with a loss mask, parse),
:mod:`~llmbook.align.vocab` (growing the embedding for new tokens), :mod:`~llmbook.align.sft_loss`
(the masked loss), :mod:`~llmbook.align.batching` (padding and packing), :mod:`~llmbook.align.sft`
(the fine-tuning loop), :mod:`~llmbook.align.evaluate` and :mod:`~llmbook.align.passk` (exact
match and pass@k).
"""

from llmbook.align.batching import SFTBatch, iterate_batches, pack_batch, pad_batch, to_dataset
from llmbook.align.chat import (
    CHAT_SPECIALS,
    ChatFormat,
    Message,
    ParsedCompletion,
    chat_tokenizer,
)
from llmbook.align.evaluate import TaskEval, complete, evaluate_tasks
from llmbook.align.passk import pass_at_k
from llmbook.align.sft import SFTConfig, SFTHistory, prepare_model, train_sft
from llmbook.align.sft_loss import sft_labels, sft_loss
from llmbook.align.vocab import grow_vocab, new_token_mass

__all__ = [
    "CHAT_SPECIALS",
    "ChatFormat",
    "Message",
    "ParsedCompletion",
    "SFTBatch",
    "SFTConfig",
    "SFTHistory",
    "TaskEval",
    "chat_tokenizer",
    "complete",
    "evaluate_tasks",
    "grow_vocab",
    "iterate_batches",
    "new_token_mass",
    "pack_batch",
    "pad_batch",
    "pass_at_k",
    "prepare_model",
    "sft_labels",
    "sft_loss",
    "to_dataset",
    "train_sft",
]
