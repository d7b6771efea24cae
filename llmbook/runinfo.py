"""A record of where and how a chapter or experiment ran: device, seed, wall time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from llmbook.device import default_device, environment_report
from llmbook.seed import set_seed


@dataclass
class RunInfo:
    """Seeded start of a run and its environment; :meth:`summary` is the line every chapter ends with.

    Introduced in {doc}`/book/part0/03-environment`.
    """

    seed: int
    """The seed every generator was set to at the start."""
    device: torch.device
    """The device the run uses."""
    environment: dict = field(repr=False)
    """The :func:`~llmbook.device.environment_report` taken at the start."""
    started: float = field(default_factory=time.perf_counter, repr=False)
    """``time.perf_counter()`` at the start."""

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started

    def summary(self) -> str:
        """One line: device, threads, torch version, seed and wall time so far.

        :returns: e.g. ``"Ran on cpu (x86_64, 2 threads), torch 2.13.0, seed 0, in 12.3 s."``
        """
        env = self.environment
        threads = env["torch_threads"]
        return (
            f"Ran on {env['device']} ({env['device_name']}, {threads} thread{'s' * (threads != 1)}), "
            f"torch {env['torch']}, seed {self.seed}, in {self.elapsed:.1f} s."
        )


def start_run(seed: int = 0, device: torch.device | str | None = None) -> RunInfo:
    """Seed everything and note the environment; call once at the top of a chapter.

    :param seed: the seed for :func:`~llmbook.seed.set_seed`.
    :param device: the device to use (default: :func:`~llmbook.device.default_device`).
    :returns: the :class:`RunInfo`.

    Introduced in {doc}`/book/part0/03-environment`.
    """
    set_seed(seed)
    device = torch.device(device) if device is not None else default_device()
    return RunInfo(seed=seed, device=device, environment=environment_report(device))


def plain(value):
    """A number as a plain Python scalar, for ``myst_nb.glue``: a numpy or torch scalar would be glued
    as its repr (``np.float64(2.5)``), which a number format in the prose (``:.2f``) cannot read.

    :param value: a number, a numpy or 0-d torch scalar, or anything else (returned as it is).
    :returns: ``value.item()`` when the value has it, else ``value``.

    Introduced in {doc}`/book/part6/03-sft-loss`.
    """
    return value.item() if hasattr(value, "item") else value
