"""Training logs: a small logger interface, TensorBoard and (optional) Weights & Biases back ends, and
helpers that read TensorBoard event files back into Python.

The training loop (:func:`~llmbook.train.loop.train`) talks to a :class:`TrainLogger` only: scalars
every step, histograms and a text sample at each validation estimate, a flush at the end. The caller
owns the logger and closes it, best with ``with TensorBoardLogger(...) as logger:``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

_KEEP_ALL = {"scalars": 0, "histograms": 0, "tensors": 0, "compressedHistograms": 0}


class TrainLogger:
    """The interface the training loop logs through; every method is a no-op here.

    Subclasses override what their back end supports. A logger is a context manager: leaving the
    ``with`` block calls :meth:`close`.

    Introduced in {doc}`/book/part4/09-logging`.
    """

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Record scalar values at a step.

        :param step: the optimizer step (x axis of every curve).
        :param values: tag -> value, e.g. ``{"train/loss": 2.31, "train/lr": 3e-4}``.
        """

    def log_histograms(self, step: int, model: nn.Module) -> None:
        """Record the distribution of every parameter, and of its gradient where one exists.

        :param step: the optimizer step.
        :param model: the model whose ``named_parameters()`` are recorded.
        """

    def log_text(self, step: int, tag: str, text: str) -> None:
        """Record a piece of text, e.g. a sample from the model.

        :param step: the optimizer step.
        :param tag: the name it is filed under.
        :param text: the text.
        """

    def flush(self) -> None:
        """Write anything buffered to storage (the loop calls this at the end of training)."""

    def close(self) -> None:
        """Flush and release the back end; the logger cannot be used afterwards."""

    def __enter__(self) -> TrainLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorBoardLogger(TrainLogger):
    """Log to TensorBoard event files through ``torch.utils.tensorboard.SummaryWriter``.

    Scalars go under their own tags; histograms of parameter ``name`` under ``weights/<name>`` and,
    when ``.grad`` is set, ``grads/<name>``; text under its tag (TensorBoard renders it as Markdown).
    Read the files back with :func:`read_scalars`, :func:`read_histograms` and :func:`read_text`, or
    watch them live with ``tensorboard --logdir <log_dir>``.

    :param log_dir: the directory of this run's event files (created if missing).
    :param bins: histogram bins: ``"tensorflow"`` (TensorBoard's exponential buckets), a NumPy rule
        such as ``"auto"``, or a number of equal-width bins between each tensor's min and max.
    :param flush_secs: write buffered events to disk at least this often (seconds).

    Introduced in {doc}`/book/part4/09-logging`.
    """

    def __init__(
        self, log_dir: str | Path, *, bins: str | int = "tensorflow", flush_secs: int = 30
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        """Where the event files are written."""
        self.bins = bins
        """The histogram binning passed to ``add_histogram``."""
        self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs)
        """The underlying ``SummaryWriter``."""

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Record scalar values at a step (stored as float32).

        :param step: the optimizer step.
        :param values: tag -> value.
        """
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), global_step=step)

    def log_histograms(self, step: int, model: nn.Module) -> None:
        """Histograms of every parameter (``weights/<name>``) and its gradient (``grads/<name>``).

        :param step: the optimizer step.
        :param model: the model; tied parameters are recorded once, under their first name.
        """
        for name, p in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", _flat(p), global_step=step, bins=self.bins)
            if p.grad is not None:
                self.writer.add_histogram(
                    f"grads/{name}", _flat(p.grad), global_step=step, bins=self.bins
                )

    def log_text(self, step: int, tag: str, text: str) -> None:
        """Record text under ``tag``, stored verbatim.

        :param step: the optimizer step.
        :param tag: the name it is filed under.
        :param text: the text (TensorBoard displays it as Markdown).
        """
        self.writer.add_text(tag, text, global_step=step)

    def flush(self) -> None:
        """Write buffered events to the event file."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class WandbLogger(TrainLogger):
    """Log to Weights & Biases, offline by default so that it never needs the network.

    ``wandb`` is imported only here and is not a dependency of ``llmbook``. An offline run is written
    under ``dir`` and can be uploaded later with ``wandb sync <run directory>``.

    :param project: the W&B project name.
    :param mode: ``"offline"`` (default), ``"online"`` or ``"disabled"``, as for ``wandb.init``.
    :param dir: where W&B writes its files (default: W&B's own choice, ``./wandb``).
    :param config: hyperparameters to attach to the run (e.g. ``TrainConfig.to_dict()``).
    :param run_name: a display name for the run.
    :raises ImportError: when ``wandb`` is not installed, with the command that installs it.

    Introduced in {doc}`/book/part4/09-logging`.
    """

    def __init__(
        self,
        project: str,
        *,
        mode: str = "offline",
        dir: str | Path | None = None,
        config: dict | None = None,
        run_name: str | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ImportError(
                "WandbLogger needs the optional package wandb: pip install wandb"
            ) from err
        self.wandb = wandb
        """The imported ``wandb`` module."""
        self.run = wandb.init(
            project=project,
            mode=mode,
            dir=None if dir is None else str(dir),
            config=config,
            name=run_name,
        )
        """The ``wandb`` run object."""

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Record scalar values at a step.

        :param step: the optimizer step (W&B needs it non-decreasing).
        :param values: tag -> value.
        """
        self.run.log({tag: float(value) for tag, value in values.items()}, step=step)

    def log_histograms(self, step: int, model: nn.Module) -> None:
        """``wandb.Histogram`` of every parameter and of its gradient where one exists.

        :param step: the optimizer step.
        :param model: the model.
        """
        data = {}
        for name, p in model.named_parameters():
            data[f"weights/{name}"] = self.wandb.Histogram(_flat(p))
            if p.grad is not None:
                data[f"grads/{name}"] = self.wandb.Histogram(_flat(p.grad))
        self.run.log(data, step=step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        """Record text as preformatted HTML (line breaks kept).

        :param step: the optimizer step.
        :param tag: the name it is filed under.
        :param text: the text.
        """
        self.run.log({tag: self.wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def close(self) -> None:
        """Finish the run (writes its files; an offline run is then ready for ``wandb sync``)."""
        self.run.finish()


class MultiLogger(TrainLogger):
    """Send every call to several loggers, e.g. TensorBoard and W&B at once.

    :param loggers: the loggers, called in order.

    Introduced in {doc}`/book/part4/09-logging`.
    """

    def __init__(self, *loggers: TrainLogger) -> None:
        self.loggers = list(loggers)
        """The loggers fanned out to."""

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Record scalars in every logger.

        :param step: the optimizer step.
        :param values: tag -> value.
        """
        for logger in self.loggers:
            logger.log_scalars(step, values)

    def log_histograms(self, step: int, model: nn.Module) -> None:
        """Record histograms in every logger.

        :param step: the optimizer step.
        :param model: the model.
        """
        for logger in self.loggers:
            logger.log_histograms(step, model)

    def log_text(self, step: int, tag: str, text: str) -> None:
        """Record text in every logger.

        :param step: the optimizer step.
        :param tag: the name it is filed under.
        :param text: the text.
        """
        for logger in self.loggers:
            logger.log_text(step, tag, text)

    def flush(self) -> None:
        """Flush every logger."""
        for logger in self.loggers:
            logger.flush()

    def close(self) -> None:
        """Close every logger."""
        for logger in self.loggers:
            logger.close()


def _flat(t: torch.Tensor) -> np.ndarray:
    # float32 on the CPU: bfloat16 has no NumPy dtype, and histograms need host memory anyway.
    return t.detach().float().cpu().reshape(-1).numpy()


# ---------------------------------------------------------------------------------------------
# Reading event files back


@dataclass(frozen=True)
class HistogramRecord:
    """One logged histogram, as stored in the event file.

    TensorBoard stores only right bucket edges: bucket ``i`` counts the values in
    ``(bucket_limits[i-1], bucket_limits[i]]``; the first bucket is empty and marks the left edge.

    Introduced in {doc}`/book/part4/09-logging`.
    """

    step: int
    """The step it was logged at."""
    min: float
    """Smallest value."""
    max: float
    """Largest value."""
    num: int
    """How many values."""
    sum: float
    """Sum of the values."""
    sum_squares: float
    """Sum of their squares."""
    bucket_limits: list[float]
    """Right edge of each bucket."""
    bucket_counts: list[float]
    """Values in each bucket."""

    @property
    def mean(self) -> float:
        """Mean of the values."""
        return self.sum / self.num

    @property
    def std(self) -> float:
        """Standard deviation of the values (population), from the stored sums."""
        return float(np.sqrt(max(self.sum_squares / self.num - self.mean**2, 0.0)))

    def rebin(self, edges) -> np.ndarray:
        """Counts on a common grid, assuming values spread evenly inside each stored bucket.

        Histograms logged at different steps have different buckets; re-binning them onto one grid
        lets them be stacked into an image (step x value).

        :param edges: increasing bin edges, ``len(edges) - 1`` bins.
        :returns: the counts per bin (floats; values outside the grid are dropped).
        """
        edges = np.asarray(edges, dtype=np.float64)
        limits = np.asarray(self.bucket_limits, dtype=np.float64)
        cdf = np.cumsum(np.asarray(self.bucket_counts, dtype=np.float64))
        return np.diff(np.interp(edges, limits, cdf, left=0.0, right=cdf[-1]))


def _accumulator(log_dir: str | Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance=_KEEP_ALL)
    acc.Reload()
    return acc


def read_scalars(log_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar series in a run's event files.

    :param log_dir: the directory a :class:`TensorBoardLogger` wrote to.
    :returns: tag -> ``(steps, values)``, in the order logged; values are float32 rounded.

    Introduced in {doc}`/book/part4/09-logging`.
    """
    acc = _accumulator(log_dir)
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        out[tag] = ([e.step for e in events], [e.value for e in events])
    return out


def read_histograms(log_dir: str | Path, tag: str) -> list[HistogramRecord]:
    """The histograms logged under one tag, e.g. ``"weights/blocks.0.mlp.up_proj.weight"``.

    :param log_dir: the directory a :class:`TensorBoardLogger` wrote to.
    :param tag: the histogram's tag.
    :returns: one :class:`HistogramRecord` per logged step, in order.
    :raises KeyError: when no histogram has that tag.

    Introduced in {doc}`/book/part4/10-reading-logs`.
    """
    acc = _accumulator(log_dir)
    if tag not in acc.Tags()["histograms"]:
        raise KeyError(f"no histogram {tag!r} in {log_dir} (have {acc.Tags()['histograms']})")
    return [
        HistogramRecord(
            step=e.step,
            min=h.min,
            max=h.max,
            num=int(h.num),
            sum=h.sum,
            sum_squares=h.sum_squares,
            bucket_limits=list(h.bucket_limit),
            bucket_counts=list(h.bucket),
        )
        for e in acc.Histograms(tag)
        for h in (e.histogram_value,)
    ]


def read_text(log_dir: str | Path, tag: str) -> tuple[list[int], list[str]]:
    """The texts logged under one tag.

    :param log_dir: the directory a :class:`TensorBoardLogger` wrote to.
    :param tag: the tag given to :meth:`TensorBoardLogger.log_text`.
    :returns: ``(steps, texts)``, in the order logged.
    :raises KeyError: when no text has that tag.

    Introduced in {doc}`/book/part4/09-logging`.
    """
    acc = _accumulator(log_dir)
    key = f"{tag}/text_summary"  # the tag SummaryWriter.add_text files text under
    if key not in acc.Tags()["tensors"]:
        raise KeyError(f"no text {tag!r} in {log_dir}")
    events = acc.Tensors(key)
    return [e.step for e in events], [e.tensor_proto.string_val[0].decode("utf-8") for e in events]
