"""Timing on a noisy machine: interleaved rounds, medians, and a matmul peak timed among the contenders.

Timings on shared machines swing by tens of percent from one run to the next. The helpers here run
contenders in alternation (round ``r`` runs each once, in a rotated order) and report medians, so a slow
minute slows every contender alike; :mod:`llmbook.benchmark` builds its comparisons on them.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time several functions in alternation: ``repeats`` rounds, each running every function once.

    The order rotates from round to round so that no contender always runs first (or right after the
    same neighbour).

    :param fns: name to a function of no arguments.
    :param repeats: rounds.
    :returns: name to the list of wall-clock seconds, one per round.

    Introduced in {doc}`/book/appendix/performance`.
    """
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    """The median (a named helper so reports read the same everywhere).

    :param values: samples.
    :returns: their median.
    """
    return float(statistics.median(values))


def matmul_workload(
    dtype: torch.dtype = torch.float32,
    *,
    n: int = 1024,
    device: str = "cpu",
    work: float | None = None,
    seconds: float | None = None,
) -> tuple[Callable[[], None], float]:
    """A unit of pure matmul work to time: ``n x n`` by ``n x n`` products, repeated.

    Timed among other contenders by :func:`interleaved`, it measures the matmul peak under the same
    conditions as they run, so a slow minute lowers the peak and the contenders alike.

    :param dtype: the element type.
    :param n: the matrix size.
    :param device: where to multiply (on CUDA, pass a larger ``n``, e.g. 8192, to fill the GPU).
    :param work: FLOPs per call (default: about 10 ms of work, 2e9 on a CPU, 2e13 on a GPU).
    :param seconds: instead of ``work``, about how long one call should take on this machine. One
        product is timed first; while it alone takes more than half of that (a dtype the hardware
        only emulates, such as bfloat16 on a CPU without bf16 instructions, runs about 100 times
        slower than float32), ``n`` is halved, down to 128. Takes precedence over ``work``.
    :returns: ``(run, flops)``: a function of no arguments (it waits for the device) and the FLOPs
        one call performs (2 n^3 per product).

    Introduced in {doc}`/book/appendix/performance`.
    """
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a positive finite number, got {seconds!r}")
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up
        synchronize(device)
        if seconds is None:
            break
        start = time.perf_counter()
        a @ b
        synchronize(device)
        one = time.perf_counter() - start
        if one <= seconds / 2 or n <= 128:
            break
        n //= 2
    if seconds is not None:
        inner = max(1, int(seconds / max(one, 1e-9)))
    else:
        if work is None:
            work = 2e9 if torch.device(device).type == "cpu" else 2e13
        inner = max(1, int(work // (2 * n**3)))

    def run() -> None:
        for _ in range(inner):
            a @ b
        synchronize(device)

    return run, 2.0 * n**3 * inner


def matmul_flops(
    dtype: torch.dtype = torch.float32, *, n: int = 1024, repeats: int = 5, device: str = "cpu"
) -> float:
    """The matmul throughput this process reaches: median FLOP/s of an ``n x n`` by ``n x n`` product.

    This is the practical peak that training throughput is measured against (a share of it is this
    machine's "MFU"); it is measured, not taken from a data sheet. Benchmarks that compare against it
    time a :func:`matmul_workload` among their contenders instead, in the same rounds.

    :param dtype: the element type.
    :param n: the matrix size.
    :param repeats: timed repetitions (after one warm-up).
    :param device: where to multiply (on CUDA, pass a larger ``n``, e.g. 8192, to fill the GPU).
    :returns: FLOP/s.

    Introduced in {doc}`/book/appendix/performance`.
    """
    run, flops = matmul_workload(dtype, n=n, device=device)
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return flops / median(times)


def synchronize(device: str) -> None:
    """Wait for queued work on ``device`` to finish (a no-op on the CPU), so that a timer sees it.

    :param device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_steps_and_peak(
    fns: dict[str, Callable[[], object]], *, tokens_per_step: int, repeats: int, steps: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Time training steps and the matmul peak in the same interleaved rounds.

    Each round runs every step function ``steps`` times, and an fp32 and a bf16
    :func:`matmul_workload`; their medians give tokens/s and the peak FLOP/s under the same conditions.

    :param fns: contender name to a function that runs one training step.
    :param tokens_per_step: tokens one step processes.
    :param repeats: interleaved rounds.
    :param steps: steps per timing.
    :returns: ``(tokens/s per contender, peak FLOP/s per dtype name "fp32"/"bf16")``.

    Introduced in {doc}`/book/appendix/performance`.
    """
    timed: dict[str, Callable[[], object]] = {
        name: partial(_repeat, fn, steps) for name, fn in fns.items()
    }
    peak_flops = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        timed[f"matmul_{name}"], peak_flops[name] = matmul_workload(dtype, seconds=0.1)
    times = interleaved(timed, repeats)
    peak = {name: flops / median(times.pop(f"matmul_{name}")) for name, flops in peak_flops.items()}
    tps = {name: steps * tokens_per_step / median(t) for name, t in times.items()}
    return tps, peak


def _repeat(fn: Callable[[], object], times: int) -> None:
    for _ in range(times):
        fn()
