import ast
import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llmbook
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.zoo import registry
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


def test_metadata_is_plain_json_with_the_weights_sha256(saved):
    path, _ = saved
    meta = json.loads((path / "checkpoint.json").read_text())
    assert meta["format_version"] == 2 and meta["model"]["n_embd"] == 16
    expected = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert meta["sha256"] == {"model.safetensors": expected}


def _flip_a_data_byte(weights):
    # A byte in the tensor data, past the 8-byte length and the JSON header: safetensors alone
    # would load it without complaint.
    data = bytearray(weights.read_bytes())
    offset = 8 + int.from_bytes(data[:8], "little") + 5
    data[offset] ^= 0x40
    weights.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_weights_is_refused(saved):
    path, _ = saved
    _flip_a_data_byte(path / "model.safetensors")
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)


def test_a_checkpoint_json_that_is_a_list_is_a_one_line_checkpoint_error(saved):
    path, _ = saved
    (path / "checkpoint.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON list, not an object") as err:
        read_meta(path)
    assert "\n" not in str(err.value)
    (path / "checkpoint.json").write_text('{"format_version": 1}')
    with pytest.raises(CheckpointError, match="format 1"):
        read_meta(path)


def test_a_json_claiming_a_huge_model_fails_before_allocating(saved, monkeypatch):
    # The header's shapes are checked against the claimed config on the meta device; a real GPT is
    # never built for it (this config would need about 200 GB).
    path, _ = saved
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["model"].update(n_embd=16384, n_head=16, n_layer=16)
    (path / "checkpoint.json").write_text(json.dumps(meta))
    real_builds = []

    def spy(config):
        real_builds.append(config.n_embd)
        if config.n_embd > 1024:
            raise AssertionError("allocated the claimed model")
        return GPT(config)

    monkeypatch.setattr(registry, "GPT", spy)
    with pytest.raises(CheckpointError, match="does not fit|shape"):
        load_checkpoint(path)
    assert real_builds == []


def test_train_checkpoint_imports_alone_and_train_never_imports_the_zoo():
    # The generic file layer lives in llmbook.storage: the training package must not reach into the
    # zoo (which imports the training loop), neither at the top nor inside a function.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import llmbook.train.checkpoint, sys; print('llmbook.zoo' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    train_dir = Path(llmbook.__file__).parent / "train"
    offenders = []
    for source in sorted(train_dir.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{source.name}: {n}" for n in names if n.startswith("llmbook.zoo")]
    assert offenders == []


def test_old_names_stay_importable_from_the_zoo():
    import llmbook.storage as storage
    import llmbook.zoo.checkpoint as zoo_checkpoint

    for name in ("save_checkpoint", "load_weights", "read_meta", "CheckpointError"):
        assert getattr(zoo_checkpoint, name) is getattr(storage, name)
