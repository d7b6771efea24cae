import sys
import types

import numpy as np
import pytest
import torch

from llmbook.train.logger import (
    MultiLogger,
    TensorBoardLogger,
    TrainLogger,
    WandbLogger,
    read_histograms,
    read_scalars,
    read_text,
)
from llmbook.train.loop import TrainConfig, train
from tests.conftest import tiny_model


def f32(x):
    return float(np.float32(x))


def test_scalars_read_back_exactly(tmp_path):
    losses = [5.5, 4.25, 3.1, float(np.float32(2.7182817))]
    with TensorBoardLogger(tmp_path) as logger:
        for step, loss in enumerate(losses):
            logger.log_scalars(step, {"train/loss": loss, "train/lr": 1e-3 * (step + 1)})
        logger.log_scalars(4, {"val/loss": 3.3})
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {"train/loss", "train/lr", "val/loss"}
    assert scalars["train/loss"] == ([0, 1, 2, 3], [f32(v) for v in losses])
    assert scalars["train/lr"] == ([0, 1, 2, 3], [f32(1e-3 * (s + 1)) for s in range(4)])
    assert scalars["val/loss"] == ([4], [f32(3.3)])


def test_flush_makes_events_readable_while_the_writer_is_open(tmp_path):
    logger = TensorBoardLogger(tmp_path, flush_secs=3600)
    logger.log_scalars(7, {"a": 1.0})
    logger.flush()
    assert read_scalars(tmp_path)["a"] == ([7], [1.0])
    logger.log_scalars(8, {"a": 2.0})
    logger.close()
    assert read_scalars(tmp_path)["a"] == ([7, 8], [1.0, 2.0])


def test_histograms_read_back_and_grads_only_when_present(tmp_path):
    model = tiny_model()
    names = [n for n, _ in model.named_parameters()]
    with TensorBoardLogger(tmp_path, bins=16) as logger:
        logger.log_histograms(0, model)  # no backward yet: weights only
        x = torch.randint(0, 256, (2, 16))
        model(x, x).loss.backward()
        logger.log_histograms(5, model)
    name = "blocks.0.mlp.up_proj.weight"
    assert name in names
    weights = read_histograms(tmp_path, f"weights/{name}")
    assert [h.step for h in weights] == [0, 5]
    grads = read_histograms(tmp_path, f"grads/{name}")
    assert [h.step for h in grads] == [5]
    for tag in names:
        assert len(read_histograms(tmp_path, f"grads/{tag}")) == 1
    with pytest.raises(KeyError):
        read_histograms(tmp_path, "weights/nope")

    values = dict(model.named_parameters())[name].detach().reshape(-1).numpy()
    h = weights[1]
    counts, edges = np.histogram(values, bins=16)
    assert h.num == values.size
    assert h.min == float(values.min()) and h.max == float(values.max())
    assert h.sum == pytest.approx(float(values.astype(np.float64).sum()), abs=1e-3)
    assert h.std == pytest.approx(float(values.std()), rel=1e-4)
    assert h.bucket_counts[1:] == counts.tolist()  # bucket 0 is the empty left marker
    assert h.bucket_limits == pytest.approx(edges.tolist())
    # Re-binning onto the stored edges gives the counts back; a wider grid keeps every value.
    assert h.rebin(edges) == pytest.approx(counts, abs=1e-3)
    assert h.rebin(np.linspace(-10, 10, 7)).sum() == pytest.approx(values.size)

    grad = dict(model.named_parameters())[name].grad.reshape(-1).numpy()
    assert grads[0].num == grad.size and grads[0].max == float(grad.max())


def test_text_reads_back_verbatim(tmp_path):
    texts = ["ROMEO:\nO, she doth teach", "naïve <b>tags</b> & `code`"]
    with TensorBoardLogger(tmp_path) as logger:
        for step, text in zip((10, 20), texts):
            logger.log_text(step, "sample", text)
    assert read_text(tmp_path, "sample") == ([10, 20], texts)
    with pytest.raises(KeyError):
        read_text(tmp_path, "other")


def test_base_logger_changes_nothing_in_training():
    # The base logger is a no-op: training with it is bit-identical to training with no logger.
    text = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 30))
    config = TrainConfig(
        max_steps=6, batch_size=2, lr=3e-3, warmup_steps=1, eval_interval=3, eval_batches=1
    )
    runs = []
    for logger in (None, TrainLogger()):
        model = tiny_model()
        torch.manual_seed(1)
        history = train(model, text[:1000], text[1000:], config, progress=False, logger=logger)
        runs.append((model.state_dict(), history.train_loss, history.val_loss))
    (weights_a, train_a, val_a), (weights_b, train_b, val_b) = runs
    assert train_a == train_b and val_a == val_b
    for name, tensor in weights_a.items():
        assert torch.equal(tensor, weights_b[name]), name


def test_base_logger_methods_return_none_and_leave_the_model_alone():
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logger = TrainLogger()
    assert logger.log_scalars(0, {"x": 1.0}) is None
    assert logger.log_histograms(0, model) is None
    assert logger.log_text(0, "t", "x") is None
    assert logger.flush() is None
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_leaving_the_with_block_closes_once_and_lets_errors_through():
    with Recorder() as rec:
        rec.log_text(1, "t", "x")
    assert rec.calls == [("text", 1, "t", "x"), ("close",)]
    rec = Recorder()
    with pytest.raises(RuntimeError, match="diverged"):
        with rec as entered:
            assert entered is rec
            raise RuntimeError("diverged")
    assert rec.calls == [("close",)]


class Recorder(TrainLogger):
    def __init__(self):
        self.calls = []

    def log_scalars(self, step, values):
        self.calls.append(("scalars", step, dict(values)))

    def log_histograms(self, step, model):
        self.calls.append(("histograms", step))

    def log_text(self, step, tag, text):
        self.calls.append(("text", step, tag, text))

    def flush(self):
        self.calls.append(("flush",))

    def close(self):
        self.calls.append(("close",))


def test_multi_logger_fans_out_in_order():
    a, b = Recorder(), Recorder()
    with MultiLogger(a, b) as multi:
        multi.log_scalars(1, {"x": 2.0})
        multi.log_histograms(2, tiny_model())
        multi.log_text(3, "t", "hi")
        multi.flush()
    expected = [
        ("scalars", 1, {"x": 2.0}),
        ("histograms", 2),
        ("text", 3, "t", "hi"),
        ("flush",),
        ("close",),
    ]
    assert a.calls == expected and b.calls == expected


def test_wandb_missing_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        WandbLogger("llmbook")


def fake_wandb():
    """A stand-in wandb module that records what it is given."""
    mod = types.ModuleType("wandb")
    mod.init_kwargs = None

    class Run:
        def __init__(self):
            self.logged = []
            self.finished = False

        def log(self, data, step=None):
            self.logged.append((step, data))

        def finish(self):
            self.finished = True

    class Histogram:
        def __init__(self, values):
            self.values = np.asarray(values)

    class Html:
        def __init__(self, data):
            self.data = data

    def init(**kwargs):
        mod.init_kwargs = kwargs
        mod.run = Run()
        return mod.run

    mod.init, mod.Histogram, mod.Html = init, Histogram, Html
    return mod


def test_wandb_logger_forwards_offline(monkeypatch, tmp_path):
    wandb = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    model = tiny_model()
    x = torch.randint(0, 256, (2, 16))
    model(x, x).loss.backward()
    model.norm_f.bias.grad = None  # a parameter without a gradient gets no grads/ histogram
    with WandbLogger("llmbook", dir=tmp_path, config={"lr": 1e-3}, run_name="r") as logger:
        logger.log_scalars(3, {"train/loss": 2.5})
        logger.log_histograms(4, model)
        logger.log_text(4, "sample", "a < b\nc")
        logger.flush()
    assert wandb.init_kwargs == {
        "project": "llmbook",
        "mode": "offline",
        "dir": str(tmp_path),
        "config": {"lr": 1e-3},
        "name": "r",
    }
    run = wandb.run
    assert run.finished
    assert run.logged[0] == (3, {"train/loss": 2.5})
    step, hists = run.logged[1]
    assert step == 4
    params = dict(model.named_parameters())
    assert set(hists) == {f"weights/{n}" for n in params} | {
        f"grads/{n}" for n in params if n != "norm_f.bias"
    }
    name = "blocks.0.mlp.up_proj.weight"
    np.testing.assert_array_equal(
        hists[f"weights/{name}"].values, params[name].detach().reshape(-1)
    )
    np.testing.assert_array_equal(hists[f"grads/{name}"].values, params[name].grad.reshape(-1))
    step, text = run.logged[2]
    assert step == 4 and text["sample"].data == "<pre>a &lt; b\nc</pre>"


def test_train_writes_every_step_and_every_evaluation(tmp_path):
    text = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 60))
    config = TrainConfig(
        max_steps=12, batch_size=4, lr=3e-3, warmup_steps=2, eval_interval=5, eval_batches=2
    )
    samples = []

    def sample(model):
        samples.append(model.training)
        return f"sample {len(samples)}"

    with TensorBoardLogger(tmp_path) as logger:
        history = train(
            tiny_model(),
            text[:2000],
            text[2000:],
            config,
            progress=False,
            logger=logger,
            sample=sample,
        )
        scalars = read_scalars(tmp_path)  # readable before close: train() flushed
    assert history.eval_steps == [5, 10, 12]
    steps, losses = scalars["train/loss"]
    assert steps == history.steps == list(range(12))
    assert losses == history.train_loss  # float32 losses survive the float32 event record exactly
    assert scalars["train/lr"] == (steps, [f32(v) for v in history.lr])
    assert scalars["val/loss"] == (history.eval_steps, [f32(v) for v in history.val_loss])
    assert len(scalars["train/grad_norm"][1]) == 12 and all(
        v > 0 for v in scalars["train/grad_norm"][1]
    )
    assert all(v > 0 for v in scalars["train/tokens_per_second"][1])
    assert [h.step for h in read_histograms(tmp_path, "grads/tok_emb.weight")] == [5, 10, 12]
    assert read_text(tmp_path, "sample") == ([5, 10, 12], ["sample 1", "sample 2", "sample 3"])
