import json

import pytest
import torch

from llmbook.device import autocast_dtype, default_device, environment_report, supported_dtypes
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


def test_autocast_dtype_is_low_precision_or_none():
    assert autocast_dtype("cpu") in (torch.bfloat16, torch.float16, None)


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
