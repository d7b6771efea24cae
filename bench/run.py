"""The llmbook benchmark suite: llmbook against reference implementations, in one process.

    python bench/run.py            # full run (make bench)
    python bench/run.py --quick    # a short run (make bench-quick), under a minute
    python bench/run.py --only attention profile   # chosen stages

Prints a table per benchmark and ends with a one-line JSON of the ratios (llmbook / reference; above 1
means llmbook is faster). ``--out FILE`` also writes everything measured, with a description of the
machine, as JSON (the Performance appendix shows the stored full run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def book_times() -> dict[str, float]:
    """Execution seconds of every chapter, from the book build's jupyter-cache (empty before a build)."""
    sys.path.insert(0, str(ROOT / "tests" / "book"))
    try:
        from chapters import CACHE_DIR, chapters
    finally:
        sys.path.pop(0)
    if not CACHE_DIR.exists():
        return {}
    from jupyter_cache import get_cache

    cache = get_cache(str(CACHE_DIR))
    records = {}
    for record in cache.list_cache_records():
        uri = Path(record.uri)
        if "execution_seconds" in (record.data or {}):
            records[uri.resolve()] = float(record.data["execution_seconds"])
    out = {}
    for path in chapters():
        for uri, seconds in records.items():
            if (
                uri == path.resolve()
                or uri.name == path.name
                and uri.parent.name == path.parent.name
            ):
                out[str(path.relative_to(ROOT))] = seconds
    return out


STAGES = (
    "training",
    "attention",
    "profile",
    "generation",
    "tokenizer",
    "grpo",
    "compiled",
    "speedrun",
    "gpu",
    "book",
)
"""Every stage, in running order; ``--quick`` leaves out ``compiled``, ``speedrun`` and ``gpu``;
``gpu`` records why it was skipped when no CUDA device is present, and ``grpo`` (against TRL, see
``bench/grpo_trl.py``) when ``trl`` is not installed."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions; no compile, speedrun or gpu stage"
    )
    parser.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="run only these: " + " ".join(STAGES),
    )
    args = parser.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from llmbook import __version__, benchmark, profiling
    from llmbook.data.corpora import load_corpus
    from llmbook.device import environment_report

    quick = args.quick
    default = [s for s in STAGES if not (quick and s in ("compiled", "speedrun", "gpu"))]
    unknown = set(args.only or ()) - set(STAGES)
    if unknown:
        parser.error(f"--only: unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    wanted = set(args.only or default)
    results: dict = {
        "mode": "quick" if quick else "full",
        "llmbook_version": __version__,
        "machine": environment_report("cpu"),
        "torch_threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ratios: dict[str, float] = {}
    stages = [s for s in STAGES if s in wanted]
    bar = tqdm(stages, desc="bench", unit="stage", file=sys.stderr)
    for stage in bar:
        bar.set_postfix(stage=stage)
        started = time.perf_counter()
        if stage == "training":
            r = benchmark.bench_training(repeats=3 if quick else 7, steps=5 if quick else 10)
        elif stage == "attention":
            r = profiling.bench_attention(
                lengths=(64,) if quick else (64, 128, 256, 512), repeats=3 if quick else 7
            )
        elif stage == "profile":
            r = profiling.bench_profile(steps=3 if quick else 10)
        elif stage == "compiled":
            r = profiling.bench_compiled(repeats=7)
        elif stage == "generation":
            r = benchmark.bench_generation(repeats=2 if quick else 5)
        elif stage == "tokenizer":
            text = load_corpus("tinyshakespeare").text
            r = benchmark.bench_tokenizer(text, repeats=1 if quick else 3)
        elif stage == "grpo":
            import importlib.util

            if importlib.util.find_spec("trl"):
                from grpo_trl import bench_grpo  # bench/grpo_trl.py, next to this script

                r = bench_grpo(quick=quick)
            else:
                r = {"skipped": "trl is not installed (pip install -e '.[test]')"}
        elif stage == "gpu":
            if torch.cuda.is_available():
                r = benchmark.bench_gpu_mfu()
                r["ratios"] = {
                    f"gpu_mfu_124m_{key}": value
                    for key, value in r["mfu"].items()
                    if value is not None
                }
            else:
                r = {"skipped": "no CUDA device in this process"}
        elif stage == "speedrun":
            r = benchmark.bench_speedrun()
        else:
            r = {"chapter_seconds": book_times()}
            r["total_seconds"] = sum(r["chapter_seconds"].values())
        r["stage_seconds"] = time.perf_counter() - started
        results[stage] = r
        ratios.update(r.get("ratios", {}))
        print(f"\n== {stage} ({r['stage_seconds']:.0f} s)", file=sys.stderr)
        for key, value in r.items():
            if key != "ratios":
                print(f"  {key}: {json.dumps(value, indent=None, default=str)}", file=sys.stderr)
    if "training" in results:
        for key, value in results["training"]["mfu"].items():
            ratios[f"mfu_{key}"] = value
    if "compiled" in results:
        for key, value in results["compiled"]["mfu"].items():
            if key.startswith("compiled"):
                ratios[f"mfu_llama_{key}"] = value
    if "speedrun" in results:
        ratios["speedrun_seconds_to_1.886"] = results["speedrun"]["train_seconds"]
        ratios["speedrun_val_loss"] = results["speedrun"]["val_loss"]
    results["ratios"] = ratios
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    print(json.dumps({k: round(v, 4) for k, v in sorted(ratios.items())}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
