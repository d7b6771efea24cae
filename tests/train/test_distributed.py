"""DistributedDataParallel under torchrun: 2 CPU processes (gloo) follow the 1-process trajectory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmbook.train.distributed import any_rank, init_distributed, shard, world

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(args, out, accum=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(
        [*args, str(WORKER), str(out), str(accum)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(Path(out).read_text())


@pytest.mark.slow
def test_two_gloo_processes_follow_the_single_process_trajectory(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    single = _run([sys.executable], tmp_path / "single.json")
    double = _run(torchrun, tmp_path / "ddp.json")
    both = _run(torchrun, tmp_path / "ddp_accum.json", accum=2)  # 2 processes x 2 micro-batches
    assert single["world_size"] == 1 and double["world_size"] == 2
    assert len(double["train_loss"]) == 12
    for a, b in zip(single["train_loss"], both["train_loss"]):
        assert b == pytest.approx(a, abs=1e-5)
    # Same global batch, gradients averaged by all-reduce: equal up to float summation order.
    for a, b in zip(single["train_loss"], double["train_loss"]):
        assert b == pytest.approx(a, abs=1e-5)
    for a, b in zip(single["val_loss"], double["val_loss"]):
        assert b == pytest.approx(a, abs=1e-5)
    torch.testing.assert_close(
        torch.tensor(double["weights"]), torch.tensor(single["weights"]), rtol=1e-4, atol=1e-5
    )
    assert single["train_loss"][-1] < single["train_loss"][0]


def test_shard_splits_a_batch_into_equal_contiguous_slices():
    rows = [shard(8, r, 4) for r in range(4)]
    assert [(s.start, s.stop) for s in rows] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(ValueError, match="batch_size: 6 windows do not split evenly over 4"):
        shard(6, 0, 4)


def test_a_single_process_is_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size, info.is_main, info.backend) == (0, 1, True, None)
    assert world() == (0, 1)


def test_any_rank_outside_a_process_group_is_the_local_answer(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert any_rank(True) is True and any_rank(False) is False
