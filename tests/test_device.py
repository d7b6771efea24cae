import json

import pytest
import torch

from llmbook.device import (
    autocast_dtype,
    available_devices,
    default_device,
    environment_report,
    parse_device,
    supported_dtypes,
)
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT
from llmbook.profiling import profile_step
from llmbook.runinfo import start_run
from llmbook.seed import set_seed


def test_default_device_is_usable():
    d = default_device()
    assert torch.ones(2, device=d).sum().item() == 2.0


def test_cpu_supports_float32_and_float64():
    s = supported_dtypes("cpu")
    assert s["float32"] and s["float64"]
    assert set(s) == {"float32", "float64", "bfloat16", "float16"}


@pytest.mark.parametrize(
    "device, bf16, fp16, expected",
    [
        ("cpu", True, True, torch.bfloat16),  # bf16 preferred: no loss scaling needed
        ("cuda", True, True, torch.bfloat16),
        ("cuda", False, True, torch.float16),  # older GPUs: fp16 with a gradient scaler
        ("cpu", False, True, None),  # fp16 autocast is for CUDA only
        ("mps", False, True, None),
        ("cuda", False, False, None),
    ],
)
def test_autocast_dtype_decision_table(device, bf16, fp16, expected, monkeypatch):
    probes = {"float32": True, "float64": True, "bfloat16": bf16, "float16": fp16}
    monkeypatch.setattr("llmbook.device.supported_dtypes", lambda d=None: probes)
    assert autocast_dtype(device) == expected


def test_cpu_autocasts_to_bfloat16():
    # PyTorch's CPU backend implements bf16 matmul on every platform it ships for.
    assert supported_dtypes("cpu")["bfloat16"]
    assert autocast_dtype("cpu") == torch.bfloat16


def _fake_machine(monkeypatch, n_cuda, mps):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n_cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_available_devices_lists_each_gpu(monkeypatch):
    _fake_machine(monkeypatch, 0, False)
    assert available_devices() == ["cpu"]
    _fake_machine(monkeypatch, 2, False)
    assert available_devices() == ["cpu", "cuda:0", "cuda:1"]
    _fake_machine(monkeypatch, 0, True)
    assert available_devices() == ["cpu", "mps"]


def test_parse_device_accepts_what_is_there(monkeypatch):
    _fake_machine(monkeypatch, 2, False)
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("cuda") == torch.device("cuda")
    assert parse_device("cuda:1") == torch.device("cuda", 1)
    assert parse_device(torch.device("cuda", 0)) == torch.device("cuda", 0)


@pytest.mark.parametrize(
    "name, n_cuda, mps, why",
    [
        ("cuda", 0, False, "not available"),
        ("cuda:2", 2, False, "not available"),
        ("mps", 1, False, "not available"),
        ("meta", 0, False, "not available"),
        ("bogus", 0, True, "not a device name"),
        ("", 0, False, "not a device name"),
    ],
)
def test_parse_device_refuses_in_one_line_naming_what_is_available(
    name, n_cuda, mps, why, monkeypatch
):
    _fake_machine(monkeypatch, n_cuda, mps)
    with pytest.raises(ValueError) as exc:
        parse_device(name)
    message = str(exc.value)
    assert message.startswith(f"device: {name!r}") and why in message and "\n" not in message
    assert "available here: " + ", ".join(available_devices()) in message


def test_environment_report_is_json():
    report = environment_report("cpu")
    assert report["device"] == "cpu" and report["torch"] == torch.__version__
    json.dumps(report)


def test_set_seed_reproduces_and_validates():
    set_seed(3)
    a = torch.randn(4)
    g = set_seed(3)
    torch.testing.assert_close(torch.randn(4), a)
    assert torch.equal(
        torch.randn(2, generator=g), torch.randn(2, generator=torch.Generator().manual_seed(3))
    )
    with pytest.raises(ValueError, match="seed"):
        set_seed(-1)


def test_profile_step_records_matmuls():
    model = GPT(ModelConfig(n_layer=1, n_embd=32, n_head=2))
    idx = torch.randint(0, 256, (2, 16))
    prof = profile_step(model, idx, idx)
    names = {e.key for e in prof.key_averages()}
    assert any("mm" in n or "linear" in n for n in names)
    assert all(p.grad is None for p in model.parameters())  # leaves the model clean


def test_run_summary_names_seed_and_device():
    run = start_run(seed=7)
    line = run.summary()
    assert "seed 7" in line and str(run.device) in line and line.endswith(" s.")
