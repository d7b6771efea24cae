"""Training checkpoints: bit-exact resume, atomic writes, keep-last-N, clear refusals (Parts 4.7 and 4.8)."""

import json
import subprocess
import sys

import pytest
import torch

from llmbook.storage import CheckpointWarning, owner_tag
from llmbook.train import checkpoint as train_checkpoint
from llmbook.train.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    list_checkpoints,
    load_training_state,
)
from llmbook.train.loop import TrainConfig, train
from llmbook.train.optim import build_optimizer
from tests.conftest import TEXT
from tests.conftest import tiny_model as shared_tiny_model


def tiny_model(seed=0, dropout=0.1, **kw):
    return shared_tiny_model(seed, dropout=dropout, **kw)


def config(**kw):
    base = dict(
        max_steps=20, batch_size=4, lr=3e-3, warmup_steps=3, eval_interval=5, eval_batches=2
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_resume_is_bit_identical(tmp_path, precision):
    # Dropout consumes the global RNG, the sampler its own generator, AdamW keeps moments, fp16 keeps a
    # loss scale: all of it must come back exactly.
    cfg = config(precision=precision)
    straight_model = tiny_model()
    straight = train(straight_model, TEXT[:1500], TEXT[1500:], cfg, progress=False)

    resumed_model = tiny_model()
    first = train(
        resumed_model,
        TEXT[:1500],
        TEXT[1500:],
        cfg,
        progress=False,
        checkpoint_dir=tmp_path,
        stop_at=10,
    )
    assert len(first.train_loss) == 10 and [p.name for p in list_checkpoints(tmp_path)] == [
        "step-00000010"
    ]
    torch.manual_seed(12345)  # a new process would start from another RNG state
    fresh = tiny_model(seed=99)  # and from other weights
    second = train(fresh, TEXT[:1500], TEXT[1500:], cfg, progress=False, checkpoint_dir=tmp_path)

    for a, b in zip(straight_model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert second.train_loss == straight.train_loss
    assert second.val_loss == straight.val_loss and second.eval_steps == straight.eval_steps
    assert second.lr == straight.lr


def test_keep_last_n_and_atomic_layout(tmp_path):
    train(
        tiny_model(),
        TEXT[:1500],
        TEXT[1500:],
        config(),
        progress=False,
        checkpoint_dir=tmp_path,
        checkpoint_every=3,
        keep_last=2,
    )
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-00000018", "step-00000020"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    for path in list_checkpoints(tmp_path):
        assert {f.name for f in path.iterdir()} == {
            "model.safetensors",
            "state.safetensors",
            "checkpoint.json",
        }


def _restore(path, model, cfg):
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return load_training_state(
        path,
        model=model,
        optimizer=opt,
        model_config=model.config.to_dict(),
        train_config=cfg.to_dict(),
        generator=torch.Generator(),
    )


def test_a_checkpoint_for_another_model_refuses_to_load_by_field(tmp_path):
    cfg = config(max_steps=4)
    train(tiny_model(), TEXT[:1500], TEXT[1500:], cfg, progress=False, checkpoint_dir=tmp_path)
    (path,) = list_checkpoints(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"n_embd: checkpoint 32, now 64"):
        _restore(path, tiny_model(n_embd=64), cfg)
    with pytest.raises(CheckpointMismatchError, match=r"lr: checkpoint 0.003, now 0.001"):
        _restore(path, tiny_model(), config(max_steps=4, lr=1e-3))
    # and the training loop refuses too, instead of silently starting over
    with pytest.raises(CheckpointMismatchError, match="n_layer"):
        train(
            tiny_model(n_layer=3),
            TEXT[:1500],
            TEXT[1500:],
            cfg,
            progress=False,
            checkpoint_dir=tmp_path,
        )


def test_corrupt_newest_checkpoint_is_reported_moved_aside_and_the_previous_one_used(
    tmp_path, capsys
):
    cfg, newest = _two_checkpoints(tmp_path)
    blob = (newest / "state.safetensors").read_bytes()
    (newest / "state.safetensors").write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        _restore(newest, tiny_model(), cfg)
    model = tiny_model()
    with pytest.warns(CheckpointWarning, match="moved aside"):
        history = train(
            model, TEXT[:1500], TEXT[1500:], cfg, progress=False, checkpoint_dir=tmp_path
        )
    assert (tmp_path / "step-00000010.corrupt").is_dir()  # kept for inspection, never deleted
    straight = train(tiny_model(), TEXT[:1500], TEXT[1500:], cfg, progress=False)
    assert history.train_loss == straight.train_loss  # resumed from step 5 and still exact


def test_checkpoints_hold_no_pickles(tmp_path):
    train(
        tiny_model(),
        TEXT[:1500],
        TEXT[1500:],
        config(max_steps=2),
        progress=False,
        checkpoint_dir=tmp_path,
    )
    (path,) = list_checkpoints(tmp_path)
    meta = json.loads((path / "checkpoint.json").read_text())
    assert meta["kind"] == "training-state" and meta["step"] == 2
    for name in ("model.safetensors", "state.safetensors"):
        head = (path / name).read_bytes()[:8]
        header_len = int.from_bytes(head, "little")
        header = json.loads((path / name).read_bytes()[8 : 8 + header_len])
        assert all(
            v["dtype"] in {"F32", "U8", "I64"} for k, v in header.items() if k != "__metadata__"
        )


def test_a_zoo_model_is_not_a_training_checkpoint(tmp_path):
    from llmbook.zoo.checkpoint import save_checkpoint

    model = tiny_model()
    save_checkpoint(tmp_path / "step-00000001", model, {"model": model.config.to_dict()})
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        _restore(tmp_path / "step-00000001", model, config())


def _two_checkpoints(tmp_path):
    cfg = config()
    train(
        tiny_model(),
        TEXT[:1500],
        TEXT[1500:],
        cfg,
        progress=False,
        checkpoint_dir=tmp_path,
        checkpoint_every=5,
        keep_last=0,
        stop_at=10,
    )
    return cfg, tmp_path / "step-00000010"


def _flip_data_byte(path):
    data = bytearray(path.read_bytes())
    data[8 + int.from_bytes(data[:8], "little") + 7] ^= 0x10  # tensor data, not the header
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "state.safetensors"])
def test_a_flipped_byte_makes_load_latest_use_the_previous_checkpoint(tmp_path, name):
    cfg, newest = _two_checkpoints(tmp_path)
    _flip_data_byte(newest / name)
    with pytest.raises(CheckpointError, match="sha256"):
        _restore(newest, tiny_model(), cfg)
    model = tiny_model()
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    with pytest.warns(CheckpointWarning, match="sha256"):
        state = train_checkpoint.load_latest(
            tmp_path,
            model=model,
            optimizer=opt,
            model_config=model.config.to_dict(),
            train_config=cfg.to_dict(),
            generator=torch.Generator(),
        )
    assert state.step == 5 and (tmp_path / "step-00000010.corrupt").is_dir()


def test_only_rank_0_moves_a_corrupt_checkpoint_aside(tmp_path, monkeypatch):
    # Under torchrun every rank resumes; a rename on every rank at once fails on all but one.
    cfg, newest = _two_checkpoints(tmp_path)
    _flip_data_byte(newest / "model.safetensors")
    monkeypatch.setattr(train_checkpoint, "world", lambda: (1, 2))
    monkeypatch.setattr(train_checkpoint, "any_rank", lambda flag: flag)
    waited = []
    monkeypatch.setattr(train_checkpoint, "barrier", lambda: waited.append(True))
    model = tiny_model()
    state = _load_latest(tmp_path, model, cfg)
    assert state.step == 5 and waited == [True]
    assert newest.is_dir() and not (tmp_path / "step-00000010.corrupt").exists()
    monkeypatch.setattr(train_checkpoint, "world", lambda: (0, 2))
    with pytest.warns(CheckpointWarning):
        assert _load_latest(tmp_path, tiny_model(), cfg).step == 5
    assert (tmp_path / "step-00000010.corrupt").is_dir()


def _load_latest(root, model, cfg):
    return train_checkpoint.load_latest(
        root,
        model=model,
        optimizer=build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay),
        model_config=model.config.to_dict(),
        train_config=cfg.to_dict(),
        generator=torch.Generator(),
    )


def test_a_save_deletes_only_temporaries_whose_owner_is_gone(tmp_path):
    host = owner_tag().split("@", 1)[1]
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        tmp_path.mkdir(exist_ok=True)
        live_run = tmp_path / f".step-00000004.pid{alive.pid}@{host}.a1.tmp"
        gone_run = tmp_path / f".step-00000004.pid{int(dead.stdout)}@{host}.b2.tmp"
        legacy = tmp_path / ".step-00000004.c3.tmp"
        for path in (live_run, gone_run, legacy):
            path.mkdir()
            (path / "state.safetensors").write_bytes(b"partial")
        train(
            tiny_model(),
            TEXT[:1500],
            TEXT[1500:],
            config(max_steps=2),
            progress=False,
            checkpoint_dir=tmp_path,
        )
        assert live_run.is_dir() and not gone_run.exists() and not legacy.exists()
    finally:
        alive.kill()
        alive.wait()
