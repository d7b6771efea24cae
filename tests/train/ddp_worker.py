"""Run under torchrun (or alone): train a tiny GPT and write the loss trajectory and final weights.

Used by tests/train/test_distributed.py; not collected by pytest (no ``test_`` prefix).
"""

import json
import sys

import torch

from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.train.distributed import cleanup, init_distributed
from llmbook.train.loop import TrainConfig, train

out = sys.argv[1]
accum = int(sys.argv[2]) if len(sys.argv) > 2 else 1
info = init_distributed()
torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
model = GPT(ModelConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=32))
text = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 40))
config = TrainConfig(
    max_steps=12,
    batch_size=8,
    lr=3e-3,
    warmup_steps=2,
    eval_interval=4,
    eval_batches=2,
    grad_accum_steps=accum,
)
history = train(model, text[:1500], text[1500:], config, progress=False)
if info.is_main:
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    with open(out, "w") as f:
        json.dump(
            {
                "world_size": info.world_size,
                "train_loss": history.train_loss,
                "val_loss": history.val_loss,
                "weights": weights.tolist(),
            },
            f,
        )
cleanup()
