"""How many examples does supervised fine-tuning need per task? The measurement behind Part 6's targets.

    python bench/sft_budget.py                       # the presets below, one after the other
    python bench/sft_budget.py --preset add2-only    # one preset
    python bench/sft_budget.py --tasks '{"add": 1}' --difficulty '{"add": [2]}' --steps 1000
    python bench/sft_budget.py --out bench/results/sft_budget.json   # the stored run Part 6.6 shows

Each run fine-tunes the ``shakespeare-modern`` base from the zoo (trained first when missing) with
:func:`llmbook.align.sft.train_sft`, packed rows of 128 tokens, then measures greedy exact match on
200 validation examples of 2-digit addition and of reversing words of 3-6 letters (and per task for
any other task in the mixture). It prints one JSON line per run, then a one-line JSON summary. The
examples seen and the training seconds are reported with the accuracies, so that what a time budget
buys on this machine can be read off.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PRESETS = {
    # the whole budget on one target: how many examples 2-digit addition needs
    "add2-only": dict(tasks={"add": 1}, difficulty={"add": [2]}, steps=1000, batch_size=64),
    # the same number of examples in batches of 16: do more updates help? (they did not)
    "add2-small-batches": dict(
        tasks={"add": 1}, difficulty={"add": [2]}, steps=2000, batch_size=16
    ),
    # the two targets sharing the budget
    "targets": dict(
        tasks={"add": 1, "reverse": 1}, difficulty={"add": [2]}, steps=1000, batch_size=64
    ),
}
"""Named runs: the mixture, its difficulty levels, steps and examples per step."""

PROBES = (("add", (2,)), ("reverse", (3, 4, 5, 6)))
"""The Part 6 targets: 2-digit addition and reversing words of at most 6 letters."""


def run(
    model, chat, *, tasks, difficulty=None, steps, batch_size, lr=3e-3, n_eval=200, progress=False
) -> dict:
    """Fine-tune ``model`` in place and measure the targets on the validation split.

    :param model: a model prepared by :func:`llmbook.align.sft.prepare_model`.
    :param chat: its chat format.
    :param tasks: task name to mixture weight.
    :param difficulty: task name to levels (None: each task's trained range).
    :param steps: optimizer steps.
    :param batch_size: examples per step.
    :param lr: peak learning rate (cosine decay to a tenth of it).
    :param n_eval: validation examples per probe.
    :param progress: show the training progress bar on stderr.
    :returns: a JSON-ready dict: the setting, examples seen, training seconds and accuracies.
    """
    from llmbook.align.evaluate import evaluate_tasks
    from llmbook.align.sft import SFTConfig, train_sft
    from llmbook.tasks.splits import generate_examples

    config = SFTConfig(
        tasks=tasks,
        difficulty=difficulty,
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=min(50, steps),
        packing="pack",
        eval_examples=64,
    )
    history = train_sft(model, chat, config, progress=progress)
    result = {
        "tasks": tasks,
        "difficulty": difficulty,
        "steps": steps,
        "batch_size": batch_size,
        "examples": steps * batch_size,
        "train_seconds": round(history.train_seconds, 1),
        "accuracy": {},
    }
    for name, levels in PROBES:
        if name in tasks:
            examples = generate_examples([name], n_eval, split="val", seed=7, difficulty=levels)
            label = f"{name} {'-'.join(map(str, (levels[0], levels[-1]))) if len(levels) > 1 else levels[0]}"
            result["accuracy"][label] = round(evaluate_tasks(model, chat, examples).overall(), 3)
    others = [t for t in tasks if t not in dict(PROBES)]
    if others:
        evaluation = evaluate_tasks(
            model, chat, generate_examples(others, n_eval * len(others), split="val", seed=7)
        )
        for row in evaluation.accuracy():
            result["accuracy"][row["task"]] = round(row["accuracy"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="*", choices=sorted(PRESETS), help="named runs")
    parser.add_argument("--tasks", help="a JSON object: task name to weight")
    parser.add_argument("--difficulty", help="a JSON object: task name to a list of levels")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--out", type=Path, help="also write the runs and the machine to this JSON file"
    )
    args = parser.parse_args(argv)
    if args.tasks:
        try:
            tasks = json.loads(args.tasks)
            difficulty = json.loads(args.difficulty) if args.difficulty else None
        except json.JSONDecodeError as error:
            parser.error(f"--tasks/--difficulty: not JSON ({error})")
        from llmbook.align.sft import SFTConfig

        try:  # a bad task, weight or level is refused before the base model is loaded
            SFTConfig(
                tasks=tasks, difficulty=difficulty, max_steps=args.steps, batch_size=args.batch_size
            )
        except (ValueError, TypeError) as error:
            parser.error(str(error))
        plan = {
            "custom": dict(
                tasks=tasks, difficulty=difficulty, steps=args.steps, batch_size=args.batch_size
            )
        }
    else:
        plan = {name: PRESETS[name] for name in (args.preset or sorted(PRESETS))}

    import torch

    from llmbook.align.sft import prepare_model
    from llmbook.zoo import load_or_train

    if args.threads:
        torch.set_num_threads(args.threads)
    summary = {"threads": torch.get_num_threads(), "runs": {}}
    results = []
    for name, setting in plan.items():
        base = load_or_train("shakespeare-modern", progress=False)
        model, chat = prepare_model(base.model, base.tokenizer, block_size=128)
        started = time.perf_counter()
        result = run(model, chat, lr=args.lr, progress=True, **setting)
        result["base_corpus"] = base.corpus_origin  # "fallback": not the book's base model
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        results.append({"run": name, **result})
        print(json.dumps(results[-1]), flush=True)
        summary["runs"][name] = {"examples": result["examples"], **result["accuracy"]}
    if args.out:
        from llmbook.benchmark import store_bench_results

        record = {
            "results": results,
            **summary,
        }
        store_bench_results(args.out, "sft_budget.py", argv or sys.argv[1:], record)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
