"""Training checkpoints: bit-exact resume, atomic writes, keep-last-N, clear refusals (Part 4.4)."""

import json

import pytest
import torch

from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.train.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    list_checkpoints,
    load_training_state,
)
from llmbook.train.loop import TrainConfig, train
from llmbook.train.optim import build_optimizer

TEXT = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 40))


def tiny_model(seed=0, dropout=0.1, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=dropout)
    return GPT(ModelConfig(**{**cfg, **kw}))


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
    newest = tmp_path / "step-00000010"
    blob = (newest / "state.safetensors").read_bytes()
    (newest / "state.safetensors").write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        _restore(newest, tiny_model(), cfg)
    model = tiny_model()
    history = train(model, TEXT[:1500], TEXT[1500:], cfg, progress=False, checkpoint_dir=tmp_path)
    assert "moved aside" in capsys.readouterr().err
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
