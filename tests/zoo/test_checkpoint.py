import json
import pickle

import pytest
import torch

from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.zoo.checkpoint import CheckpointError, load_weights, read_meta, save_checkpoint
from llmbook.zoo.registry import load_checkpoint

CFG = ModelConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = GPT(CFG)
    save_checkpoint(tmp_path / "ckpt", model, {"model": CFG.to_dict(), "note": "hi"})
    return tmp_path / "ckpt", model


def test_round_trip_with_tied_weights(saved):
    path, model = saved
    loaded, meta = load_checkpoint(path)
    assert meta["note"] == "hi"
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    idx = torch.randint(0, 40, (2, 8))
    torch.testing.assert_close(model.eval()(idx).logits, loaded(idx).logits)


def test_truncated_weights_give_a_clear_error(saved):
    path, _ = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_corrupted_header_gives_a_clear_error(saved):
    path, _ = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[8:40] = b"\xff" * 32  # garble the JSON header
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_corrupted_metadata_gives_a_clear_error(saved):
    path, _ = saved
    (path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint metadata"):
        read_meta(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)


def test_different_config_refuses_to_load(saved):
    path, _ = saved
    other = GPT(ModelConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(CheckpointError, match="different model config"):
        load_weights(path, other)


def test_loading_never_unpickles(saved, monkeypatch):
    path, _ = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_checkpoint(path)


def test_a_pickle_posing_as_weights_is_rejected(saved):
    path, _ = saved

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    (path / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_metadata_is_plain_json(saved):
    path, _ = saved
    meta = json.loads((path / "checkpoint.json").read_text())
    assert meta["format_version"] == 1 and meta["model"]["n_embd"] == 16
