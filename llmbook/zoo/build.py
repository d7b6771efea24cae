"""Training many zoo models side by side, each after the models it starts from: ``llmbook zoo build``.

``make zoo`` trains every recipe the chapters load before the book is built. One recipe at a time
leaves cores idle, as these models gain little from a second thread; :func:`build` runs up to
``jobs`` ``llmbook train`` processes at once, starting a recipe only when its parent and its reward
model are there. Each trains with a fixed thread count
(:data:`~llmbook.zoo.registry.CPU_TRAIN_THREADS`), so the checkpoints do not depend on ``jobs``.

Introduced in {doc}`/book/part2/06-training-loop`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from llmbook.zoo.recipes import RECIPES, resolve


@dataclass(frozen=True)
class BuildResult:
    """What building one recipe came to.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """

    recipe: str
    """The recipe name."""
    status: str
    """``"trained"``, ``"cached"`` (its checkpoint was there), ``"failed"``, or ``"skipped"`` (a model
    it starts from failed)."""
    seconds: float
    """Wall time of its ``llmbook train`` process (0 when cached or skipped)."""
    summary: dict = field(default_factory=dict)
    """The train command's JSON summary line; for a failure ``{"error": ...}``."""


def dependencies(name: str) -> tuple[str, ...]:
    """The recipes whose models ``name`` starts from: its parent and its reward model.

    :param name: a registered recipe name.
    :returns: zero, one or two recipe names.
    :raises ValueError: for an unknown recipe, naming it.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    if name not in RECIPES:
        raise ValueError(f"recipes: unknown recipe {name!r}; known recipes: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    return tuple(d for d in (recipe.parent, recipe.reward_model) if d is not None)


def build_plan(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The recipes to build: ``names`` and everything they start from, each with its dependencies.

    :param names: recipe names.
    :returns: recipe name -> :func:`dependencies`, in an order where every recipe follows its
        dependencies (ties by name).
    :raises ValueError: for an unknown recipe, naming it.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    plan: dict[str, tuple[str, ...]] = {}

    def visit(name: str) -> None:
        if name in plan:
            return
        deps = dependencies(name)
        for dep in sorted(deps):
            visit(dep)
        plan[name] = deps

    for name in sorted(set(names)):
        visit(name)
    return plan


def _descendants(plan: dict[str, tuple[str, ...]]) -> dict[str, int]:
    # How many planned recipes wait, directly or not, on each one: the scheduler starts the recipes
    # that most others wait for first, so that the long chains (base -> sft -> reward -> ppo) begin early.
    below: dict[str, set[str]] = {name: set() for name in plan}
    for name in reversed(list(plan)):  # children before parents
        for dep in plan[name]:
            below[dep] |= below[name] | {name}
    return {name: len(s) for name, s in below.items()}


def train_in_subprocess(recipe: str, profile: str) -> tuple[int, str, str]:
    """Run ``python -m llmbook train --recipe R --profile P --if-missing --no-progress``.

    :param recipe: the recipe name.
    :param profile: ``"cpu"`` or ``"gpu"``.
    :returns: the exit status, stdout and stderr of the process.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    cmd = [sys.executable, "-m", "llmbook", "train", "--recipe", recipe, "--profile", profile]
    done = subprocess.run([*cmd, "--if-missing", "--no-progress"], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def _last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def build(
    names: Iterable[str],
    *,
    jobs: int = 1,
    profile: str | None = None,
    runner: Callable[[str, str], tuple[int, str, str]] | None = None,
    on_done: Callable[[BuildResult], None] | None = None,
) -> list[BuildResult]:
    """Train the models of ``names`` (and of every recipe they start from) that have no checkpoint.

    Up to ``jobs`` recipes train at once, each in its own ``llmbook train`` process, and a recipe
    starts only when the models it starts from are built. A recipe whose dependency failed is
    skipped; the others go on, so one failure costs only the recipes that need it.

    :param names: recipe names.
    :param jobs: processes at once (at least 1).
    :param profile: ``"cpu"``, ``"gpu"``, or None for :func:`~llmbook.zoo.recipes.default_profile`.
    :param runner: ``runner(recipe, profile) -> (exit status, stdout, stderr)`` trains one recipe
        (default :func:`train_in_subprocess`; tests pass a stand-in).
    :param on_done: called with each :class:`BuildResult` as it is known (a progress display).
    :returns: one :class:`BuildResult` per planned recipe, in plan order.
    :raises ValueError: for an unknown recipe or profile, or ``jobs`` below 1, before anything runs.

    Introduced in {doc}`/book/part2/06-training-loop`.
    """
    from llmbook.zoo.registry import checkpoint_dir

    runner = runner or train_in_subprocess
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected an integer >= 1, got {jobs!r}")
    plan = build_plan(names)
    resolved = {name: resolve(name, profile) for name in plan}
    profile_name = next(iter(resolved.values())).profile if resolved else (profile or "cpu")
    priority = _descendants(plan)
    results: dict[str, BuildResult] = {}

    def record(result: BuildResult) -> None:
        results[result.recipe] = result
        if on_done is not None:
            on_done(result)

    def timed(name: str) -> BuildResult:
        started = time.perf_counter()
        status, out, err = runner(name, profile_name)
        seconds = time.perf_counter() - started
        summary = _last_json(out)
        if status != 0:
            tail = summary.get("error") or (err.strip().splitlines() or ["no output"])[-1]
            # The process's own last lines (a traceback) go with the failure: its output is not shown.
            stderr = "\n".join(err.strip().splitlines()[-20:])
            return BuildResult(
                name,
                "failed",
                seconds,
                {"error": f"exit status {status}: {tail}", "stderr": stderr},
            )
        return BuildResult(
            name, "trained" if summary.get("trained_now") else "cached", seconds, summary
        )

    waiting = dict(plan)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict = {}
        while waiting or running:
            ready = [n for n, deps in waiting.items() if all(d in results for d in deps)]
            for name in sorted(ready, key=lambda n: (-priority[n], n)):
                deps = waiting[name]
                failed = [d for d in deps if results[d].status in ("failed", "skipped")]
                if failed:
                    del waiting[name]
                    record(
                        BuildResult(
                            name, "skipped", 0.0, {"error": f"needs {failed[0]}, which failed"}
                        )
                    )
                elif checkpoint_dir(resolved[name]).is_dir():
                    del waiting[name]
                    record(BuildResult(name, "cached", 0.0, {"key": resolved[name].key}))
                elif len(running) < jobs:
                    del waiting[name]
                    running[pool.submit(timed, name)] = name
            if not running:
                continue  # a skip or a cached recipe may have made others ready
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                del running[future]
                record(future.result())
    return [results[name] for name in plan]
