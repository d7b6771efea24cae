"""Seeded architecture ablations: train every (cell, seed) of a grid, record it, resume.

:func:`run_grid` trains every (cell, seed) of an :class:`~llmbook.experiments.grid.AblationGrid`
that its results file does not hold yet and appends one JSON line per finished run, so an
interrupted grid resumes where it stopped; :func:`load_results` reads the file back, and
:func:`summarize` turns the records into per-cell confidence intervals and paired differences
against the baseline (see :mod:`llmbook.experiments.stats`).

Results file: JSON Lines, one object per finished run, appended and fsynced as a whole line:

```text
{"schema": 1, "grid": "book", "grid_key": "<16 hex>", "cell": "rope", "seed": 0,
 "model": {ModelConfig fields}, "train": {TrainConfig fields, seed = the run's seed},
 "corpus": {"name", "origin", "sha256", "train_tokens", "val_tokens"},
 "metrics": {"val_loss", "val_bpb", "final_train_loss", "params", "tokens"},
 "wall_seconds": 3.1, "environment": {"torch", "threads", "device", "cpu", "cpu_count", "python"}}
```

``val_loss`` is the mean cross-entropy (nats per byte) over the whole validation split (its first
``val_tokens`` tokens when set), ``val_bpb`` the same in bits per byte, ``final_train_loss`` the last
step's batch loss, ``params`` the model's parameter count and ``tokens`` the training tokens seen.

Introduced in {doc}`/book/part10/05-ablations`.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from llmbook.experiments.grid import AblationGrid
from llmbook.experiments.stats import mean_ci, paired_differences

SCHEMA = 1
"""Version of the results-file line format (see the module docstring)."""
METRICS = ("val_loss", "val_bpb", "final_train_loss", "params", "tokens")
"""The entries of a record's ``metrics``."""


class ResultsError(ValueError):
    """A results file holds a line that is not a whole, valid record of this grid.

    Introduced in {doc}`/book/part10/05-ablations`.
    """


class TornRecordWarning(UserWarning):
    """A results file's last line was cut off by an interrupted write, and is ignored.

    Introduced in {doc}`/book/part10/05-ablations`.
    """


def _read(path: Path) -> tuple[list[tuple[int, dict]], int | None]:
    """(line number, record) for each whole line, and the byte offset of a torn last line, if any."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn_at = None
    if lines[-1]:  # no newline at the end: the last write was cut off
        torn_at = len(data) - len(lines[-1])
        warnings.warn(
            f"llmbook: {path}:{len(lines)}: the last line is cut off (an interrupted write); "
            "ignoring it (run_grid runs that run again)",
            TornRecordWarning,
            stacklevel=3,
        )
    records, seen = [], {}
    for number, raw in enumerate(lines[:-1], start=1):
        where = f"{path}:{number}"
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ResultsError(f"{where}: not a JSON line ({err})") from None
        _check_record(record, where)
        if records and record["grid_key"] != records[0][1]["grid_key"]:
            raise ResultsError(
                f"{where}: grid key {record['grid_key']} differs from line 1's "
                f"{records[0][1]['grid_key']}; a results file holds one grid"
            )
        run = (record["cell"], record["seed"])
        if run in seen:
            raise ResultsError(
                f"{where}: cell {run[0]!r} seed {run[1]} already on line {seen[run]}"
            )
        seen[run] = number
        records.append((number, record))
    return records, torn_at


def _check_record(record, where: str) -> None:
    if not isinstance(record, dict):
        raise ResultsError(f"{where}: not a JSON object")
    if record.get("schema") != SCHEMA:
        raise ResultsError(f"{where}: schema: expected {SCHEMA}, got {record.get('schema')!r}")
    for key, kind in (
        ("grid", str),
        ("grid_key", str),
        ("cell", str),
        ("seed", int),
        ("metrics", dict),
        ("model", dict),
        ("train", dict),
        ("corpus", dict),
        ("environment", dict),
        ("wall_seconds", (int, float)),
    ):
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise ResultsError(
                f"{where}: {key}: missing or not a {getattr(kind, '__name__', 'number')}"
            )
    for key in METRICS:
        value = record["metrics"].get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ResultsError(f"{where}: metrics.{key}: missing or not a finite number")


def load_results(path: str | os.PathLike) -> list[dict]:
    """The records of a results file written by :func:`run_grid`, in file order.

    :param path: the JSON Lines file.
    :returns: one dict per finished run (see the module docstring for the schema). A torn last line
        (an interrupted write) is left out with a :class:`TornRecordWarning`; the file is not changed.
    :raises FileNotFoundError: when the file does not exist.
    :raises ResultsError: naming the file and line, for a line that is not valid JSON, lacks a field
        of the schema, repeats a (cell, seed), or comes from another grid than the first line.

    Introduced in {doc}`/book/part10/05-ablations`.
    """
    return [record for _, record in _read(Path(path))[0]]


def _environment(threads: int) -> dict:
    import platform

    from llmbook.device import environment_report

    report = environment_report("cpu")
    return {
        "torch": torch.__version__,
        "threads": threads,
        "device": "cpu",
        "cpu": report["device_name"],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def _checked_subset(name: str, asked: Iterable | None, known: tuple) -> list:
    if asked is None:
        return list(known)
    asked = list(asked)
    for item in asked:
        if item not in known:
            raise ValueError(f"{name}: {item!r} is not in the grid; known: {list(known)}")
    return [k for k in known if k in asked]  # grid order


def run_grid(
    grid: AblationGrid,
    out_path: str | os.PathLike,
    *,
    cells: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    progress: bool = True,
    threads: int | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train every requested (cell, seed) of ``grid`` that ``out_path`` does not hold yet, on the CPU.

    Each run seeds every generator with its seed (:func:`~llmbook.seed.set_seed`), builds
    :class:`~llmbook.model.gpt.GPT`, trains it with :func:`~llmbook.train.loop.train` on byte-level
    tokens of the grid's corpus, evaluates it on the validation split, and appends its record (see the
    module docstring) to ``out_path`` as one line, flushed and fsynced, so a killed process leaves
    whole lines only. With a fixed thread count a grid run twice gives identical records except
    ``wall_seconds``.

    Resuming: runs already in the file are not run again. A last line cut off by a kill (no newline at
    its end) is dropped from the file with a :class:`TornRecordWarning` and its run trained again;
    anything wrong before the last line is an error, never skipped.

    :param grid: the grid.
    :param out_path: the JSON Lines results file (created with its folder when missing).
    :param cells: the cells to run (default: all), returned in grid order.
    :param seeds: the seeds to run (default: all the grid's).
    :param progress: show a progress bar over the runs on stderr.
    :param threads: torch threads while training (default: leave the setting); restored afterwards.
    :param on_result: called with each new record after its line is written.
    :returns: the records of the requested cells and seeds (reused and new), in grid order: by cell,
        then by seed.
    :raises ValueError: for a cell or seed not in the grid, ``threads`` not a positive integer, or a
        run whose loss is not finite (named by cell and seed; the runs before it stay in the file).
    :raises ResultsError: naming the file and line, for a corrupt line, a line of another grid
        (another key) or one written on another corpus text.

    Introduced in {doc}`/book/part10/05-ablations`.
    """
    from llmbook.data.batching import train_val_split
    from llmbook.data.corpora import load_corpus, sha256_of
    from llmbook.model.gpt import GPT
    from llmbook.seed import set_seed
    from llmbook.tokenizer.byte import ByteTokenizer
    from llmbook.train.loop import train
    from llmbook.train.loss import bits_per_byte

    cells = _checked_subset("cells", cells, tuple(grid.cells))
    seeds = _checked_subset("seeds", seeds, grid.seeds)
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads: must be a positive integer or None, got {threads!r}")
    out_path = Path(out_path)
    key = grid.key
    corpus = load_corpus(grid.corpus)
    corpus_sha = sha256_of(corpus.text.encode("utf-8"))
    done: dict[tuple[str, int], dict] = {}
    if out_path.exists():
        lines, torn_at = _read(out_path)
        for number, record in lines:
            where = f"{out_path}:{number}"
            if record["grid_key"] != key:
                raise ResultsError(
                    f"{where}: written by grid {record['grid']!r} with key {record['grid_key']}, not "
                    f"{grid.name!r} with key {key}; use another output file or move this one"
                )
            if record["corpus"].get("sha256") != corpus_sha:
                raise ResultsError(
                    f"{where}: trained on other text than {grid.corpus!r} now "
                    f"({corpus.origin}, sha256 {corpus_sha[:12]}...); use another output file"
                )
            done[record["cell"], record["seed"]] = record
        if torn_at is not None:
            os.truncate(out_path, torn_at)
    todo = [(c, s) for c in cells for s in seeds if (c, s) not in done]
    if todo:  # an unwritable place fails now, not after the first run has trained
        out_path.parent.mkdir(parents=True, exist_ok=True)
        open(out_path, "a").close()

    ids = torch.tensor(ByteTokenizer().encode(corpus.text), dtype=torch.long)
    train_ids, val_ids = train_val_split(ids, grid.train_fraction)
    if grid.val_tokens is not None:
        val_ids = val_ids[: grid.val_tokens]
    before = torch.get_num_threads()
    bar = None
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        environment = _environment(torch.get_num_threads()) if todo else {}
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"ablate {grid.name}", unit="run")
        for cell, seed in todo:
            if bar is not None:
                bar.set_postfix(cell=cell, seed=seed)
            started = time.perf_counter()
            set_seed(seed)
            model_config, train_config = grid.model_config(cell), grid.train_config(seed)
            model = GPT(model_config)
            history = train(model, train_ids, val_ids, train_config, progress=False)
            record = {
                "schema": SCHEMA,
                "grid": grid.name,
                "grid_key": key,
                "cell": cell,
                "seed": seed,
                "model": model_config.to_dict(),
                "train": train_config.to_dict(),
                "corpus": {
                    "name": grid.corpus,
                    "origin": corpus.origin,
                    "sha256": corpus_sha,
                    "train_tokens": len(train_ids),
                    "val_tokens": len(val_ids),
                },
                "metrics": {
                    "val_loss": history.final_val_loss,
                    "val_bpb": bits_per_byte(history.final_val_loss),  # a byte is a token
                    "final_train_loss": history.train_loss[-1],
                    "params": model.num_params(),
                    "tokens": history.tokens_seen,
                },
                "wall_seconds": time.perf_counter() - started,
                "environment": environment,
            }
            diverged = {k: v for k, v in record["metrics"].items() if not math.isfinite(v)}
            if (
                diverged
            ):  # JSON has no NaN; and a grid should say which run broke, not fail to write
                raise ValueError(
                    f"cells.{cell}: seed {seed}: training diverged ({diverged}); the runs before it "
                    f"are kept in {out_path}"
                )
            line = json.dumps(record, sort_keys=True, allow_nan=False)
            with open(out_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
            # What the caller gets is exactly what a resumed call reads back from the file.
            done[cell, seed] = json.loads(line)
            if bar is not None:
                bar.update(1)
            if on_result is not None:
                on_result(done[cell, seed])
    finally:
        if bar is not None:
            bar.close()
        torch.set_num_threads(before)
    return [done[c, s] for c in cells for s in seeds]


def metric_table(records: Iterable[dict], metric: str = "val_bpb") -> dict[str, dict[int, float]]:
    """One metric of the records as cell -> (seed -> value), cells in order of first appearance.

    :param records: records from :func:`run_grid` or :func:`load_results`, all of one grid.
    :param metric: one of :data:`METRICS`.
    :returns: the nested dict, e.g. for :func:`~llmbook.experiments.stats.rank_flips`.
    :raises ValueError: for an unknown metric, records of several grids, or a repeated (cell, seed).

    Introduced in {doc}`/book/part10/05-ablations`.
    """
    if metric not in METRICS:
        raise ValueError(f"metric: must be one of {METRICS}, got {metric!r}")
    table: dict[str, dict[int, float]] = {}
    keys = set()
    for record in records:
        keys.add(record["grid_key"])
        if len(keys) > 1:
            raise ValueError(f"records: come from more than one grid (keys {sorted(keys)})")
        by_seed = table.setdefault(record["cell"], {})
        if record["seed"] in by_seed:
            raise ValueError(f"records: cell {record['cell']!r} seed {record['seed']} twice")
        by_seed[record["seed"]] = record["metrics"][metric]
    return table


def summarize(
    records: Iterable[dict],
    metric: str = "val_bpb",
    baseline: str | None = "baseline",
    level: float = 0.95,
) -> list[dict]:
    """Per-cell confidence intervals of a metric and paired differences against the baseline.

    One row per cell, ready for ``pandas.DataFrame(rows).set_index("cell")``: ``cell``, ``n`` (seeds),
    ``params``, ``mean``, ``sd``, ``half_width``, ``low``, ``high`` (see
    :func:`~llmbook.experiments.stats.mean_ci`), and ``diff_mean``, ``diff_half_width``, ``diff_low``,
    ``diff_high``, ``distinguishable`` for ``cell - baseline`` over the seeds both have (see
    :func:`~llmbook.experiments.stats.paired_differences`); None in the baseline's own row. A cell with
    one seed has an infinite interval.

    :param records: records of one grid.
    :param metric: one of :data:`METRICS`.
    :param baseline: the cell the differences are against; None for no differences.
    :param level: the confidence level, in (0, 1).
    :returns: the rows, cells in order of first appearance.
    :raises ValueError: for an unknown metric, a baseline absent from the records, or a baseline
        sharing no seed with a cell.

    Introduced in {doc}`/book/part10/05-ablations`.
    """
    records = list(records)
    table = metric_table(records, metric)
    if baseline is not None and baseline not in table:
        raise ValueError(f"baseline: no records of cell {baseline!r}; cells: {list(table)}")
    params = {r["cell"]: r["metrics"]["params"] for r in records}
    rows = []
    for cell, by_seed in table.items():
        ci = mean_ci(by_seed.values(), level)
        row = {
            "cell": cell,
            "n": ci.n,
            "params": params[cell],
            "mean": ci.mean,
            "sd": ci.sd,
            "half_width": ci.half_width,
            "low": ci.low,
            "high": ci.high,
        }
        row.update(dict.fromkeys(("diff_mean", "diff_half_width", "diff_low", "diff_high")))
        row["distinguishable"] = None
        if baseline is not None and cell != baseline:
            diff = paired_differences(table[baseline], by_seed, level)
            row.update(
                diff_mean=diff.mean,
                diff_half_width=diff.half_width,
                diff_low=diff.low,
                diff_high=diff.high,
                distinguishable=diff.distinguishable,
            )
        rows.append(row)
    return rows
