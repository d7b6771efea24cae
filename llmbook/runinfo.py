"""A record of where and how a chapter or experiment ran: device, seed, wall time, zoo checkpoints.

Every chapter calls :func:`start_run` at the top and :meth:`RunInfo.finish` at the end. In a notebook
``finish`` leaves the run's :meth:`~RunInfo.record` in the cell's outputs (a hidden output beside the
printed summary line), so the record travels with the executed notebook through the build's execution
cache, and the book's execution-record page is built from it.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmbook.device import default_device, environment_report
from llmbook.seed import set_seed

RECORD_MIME = "application/vnd.llmbook.run+json"
"""The mime type of the run record :meth:`RunInfo.finish` leaves in a notebook."""
RECORD_KEY = "llmbook-run-record"
"""The glue key under which :meth:`RunInfo.finish` leaves the run record in a notebook."""
# MyST-NB's glue format (as myst_nb.glue(..., display=False) writes it, papermill's record type):
# hidden from the page and the notebook, collected by the build for executed and cached notebooks.
_GLUE_PREFIX = "application/papermill.record/"

_current: RunInfo | None = None


@dataclass
class RunInfo:
    """Seeded start of a run and its environment; :meth:`finish` ends every chapter.

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
    checkpoints: list[dict] = field(default_factory=list, repr=False)
    """The zoo checkpoints used since the start, one dict each (see :func:`note_checkpoint`)."""

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

    def record(self) -> dict:
        """What produced this run's numbers, as JSON-friendly values.

        :returns: ``seconds`` (wall time since the start), ``device``, ``device_name``, ``threads``,
            ``torch``, ``python``, ``llmbook`` (version), ``commit`` (see :func:`source_commit`;
            None when unknown), ``seed``, ``profile`` (the zoo profile in effect, see
            :func:`~llmbook.zoo.recipes.default_profile`) and ``checkpoints`` (the zoo models used).
        """
        from llmbook import __version__
        from llmbook.zoo.recipes import default_profile

        env = self.environment
        return {
            "seconds": round(self.elapsed, 2),
            "device": env["device"],
            "device_name": env["device_name"],
            "threads": env["torch_threads"],
            "torch": env["torch"],
            "python": env["python"],
            "llmbook": __version__,
            "commit": source_commit(),
            "seed": self.seed,
            "profile": default_profile(),
            "checkpoints": [dict(c) for c in self.checkpoints],
        }

    def finish(self) -> None:
        """End the run: print the :meth:`summary` line and leave the :meth:`record`.

        In a Jupyter kernel the record also goes out as a hidden output in the format of MyST-NB's
        ``glue`` (key :data:`RECORD_KEY`, mime type :data:`RECORD_MIME`): the book's build reads it
        from there, for a chapter it executes and for one it takes from the execution cache alike,
        and a reader sees only the summary line.

        Introduced in {doc}`/book/part0/03-environment`.
        """
        print(self.summary())
        if _in_kernel():
            from IPython.display import display

            display(
                {_GLUE_PREFIX + RECORD_MIME: self.record()},
                metadata={"scrapbook": {"name": RECORD_KEY, "mime_prefix": _GLUE_PREFIX}},
                raw=True,
            )


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def note_checkpoint(entry: dict) -> None:
    """Add a zoo checkpoint to the record of the run in progress (no-op without one, and for a
    checkpoint already noted: the first use, and where it came from, is what the record keeps).

    :param entry: JSON-friendly facts about it: recipe, profile, key, source (``"cache"``,
        ``"fetched"`` or ``"trained"``), metrics; see :func:`llmbook.zoo.store.load_or_train`.
    """
    if _current is not None:
        json.dumps(entry)  # a record must stay JSON: fail here, not when the page is built
        same = ("recipe", "profile", "key")
        if not any(all(c.get(k) == entry.get(k) for k in same) for c in _current.checkpoints):
            _current.checkpoints.append(dict(entry))  # a model loaded twice is listed once


def source_commit() -> str | None:
    """The git commit of the ``llmbook`` code that is running, when it can be known.

    From a git checkout (``pip install -e``): ``git rev-parse HEAD``, with ``+dirty`` appended when
    tracked files under ``llmbook/`` differ from it. From a package installed from a git URL: the
    commit pip recorded (``direct_url.json``). Otherwise None.

    :returns: the commit's hex digits (and ``+dirty``), or None.
    """
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        try:
            head = subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                [
                    "git",
                    "-C",
                    str(repo),
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                    "--",
                    "llmbook",
                ],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        return head + ("+dirty" if dirty else "") if head else None
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        text = distribution("llmbook").read_text("direct_url.json")
    except (PackageNotFoundError, OSError):
        return None
    try:
        return json.loads(text or "{}").get("vcs_info", {}).get("commit_id")
    except (json.JSONDecodeError, AttributeError):
        return None


def start_run(seed: int = 0, device: torch.device | str | None = None) -> RunInfo:
    """Seed everything and note the environment; call once at the top of a chapter.

    The run becomes the current one: zoo checkpoints loaded from now on are added to its record.

    :param seed: the seed for :func:`~llmbook.seed.set_seed`.
    :param device: the device to use (default: :func:`~llmbook.device.default_device`).
    :returns: the :class:`RunInfo`.

    Introduced in {doc}`/book/part0/03-environment`.
    """
    global _current
    set_seed(seed)
    device = torch.device(device) if device is not None else default_device()
    _current = RunInfo(seed=seed, device=device, environment=environment_report(device))
    return _current


def plain(value):
    """A number as a plain Python scalar, for ``myst_nb.glue``: a numpy or torch scalar would be glued
    as its repr (``np.float64(2.5)``), which a number format in the prose (``:.2f``) cannot read.

    :param value: a number, a numpy or 0-d torch scalar, or anything else (returned as it is).
    :returns: ``value.item()`` when the value has it, else ``value``.

    Introduced in {doc}`/book/part6/03-sft-loss`.
    """
    return value.item() if hasattr(value, "item") else value
