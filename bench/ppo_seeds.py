"""Does PPO beat the SFT model on held-out prompts, over seeds? The measurement behind Part 8's target.

    python bench/ppo_seeds.py                                  # the ppo recipe, seeds 0 1 2
    python bench/ppo_seeds.py --seeds 3 4                      # more seeds
    python bench/ppo_seeds.py --preset rm-only                 # the same budget, another reward
    python bench/ppo_seeds.py --preset all --out bench/results/ppo_seeds.json   # what Part 8.5 shows

Each run starts from the zoo's ``sft`` model (trained first when missing) and trains it with
:func:`llmbook.align.ppo.train_ppo` on the ``ppo`` recipe's config with the run's seed (a preset
changes the reward: see :data:`PRESETS`), against the zoo's clean reward model. It reports the
held-out verifier accuracy (greedy, the run's own held-out prompts) at every evaluation, per prompt
cell at the start and the end, the KL to the reference per iteration, the reward model's score and
the wall time. It prints one JSON line per run, then a one-line JSON summary: per preset, the mean,
smallest and largest change in held-out accuracy over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PRESETS = {
    # the recipe as registered: the verifier pays, the clean reward model is watched
    "recipe": {},
    # the same budget with the clean reward model as the whole reward
    "rm-only": {"rm_weight": 1.0, "verifier_weight": 0.0},
    # the reward model and the verifier, each with weight 1
    "rm+verifier": {"rm_weight": 1.0, "verifier_weight": 1.0},
}
"""Named changes to the ``ppo`` recipe's config (its reward)."""

KL_WINDOW = 10
"""The final KL is the mean over this many last iterations (one batch's KL is noisy)."""


def run(sft_model, reward_model, chat, config, *, progress: bool = False) -> dict:
    """Train a copy of ``sft_model`` with PPO and measure it against the SFT model.

    :param sft_model: the SFT policy (not modified: a copy is trained).
    :param reward_model: the frozen reward model.
    :param chat: the chat format both share.
    :param config: the :class:`~llmbook.align.ppo_config.PPOConfig`.
    :param progress: show the progress bar on stderr.
    :returns: a JSON-ready dict: the seed, the evaluations, the per-cell accuracies at the start and
        the end, the KL per iteration and its final mean, and the seconds.
    """
    import copy

    from llmbook.align.evaluate import default_max_new_tokens
    from llmbook.align.policy import ActorCritic, reference_model
    from llmbook.align.ppo import evaluate_policy, ppo_examples, train_ppo

    policy = copy.deepcopy(sft_model)
    actor_critic = ActorCritic(policy, critic=config.critic, reward_model=reward_model)
    reference = reference_model(sft_model)
    started = time.perf_counter()
    history = train_ppo(actor_critic, reference, reward_model, chat, config, progress=progress)
    wall = time.perf_counter() - started
    # The held-out prompts train_ppo graded, split into its cells (task, level).
    held_out = ppo_examples(config, config.eval_examples, split="val", seed=config.seed + 1)
    budget = config.max_new_tokens or default_max_new_tokens(
        chat, held_out + ppo_examples(config, 256, split="train", seed=config.seed)
    )
    cells = defaultdict(list)
    for example in held_out:
        cells[f"{example.task} {example.difficulty}"].append(example)
    by_cell = {}
    for cell, examples in sorted(cells.items()):
        start, end = (
            evaluate_policy(m, reward_model, chat, examples, max_new_tokens=budget)["accuracy"]
            for m in (reference, actor_critic.policy)
        )
        by_cell[cell] = {"n": len(examples), "start": round(start, 4), "end": round(end, 4)}
    kl = history.train["kl"]
    accuracy = history.eval["accuracy"]
    return {
        "seed": config.seed,
        "iterations": config.iterations,
        "eval_iterations": history.eval_iterations,
        "accuracy": [round(a, 4) for a in accuracy],
        "rm_score": [round(s, 4) for s in history.eval["rm_score"]],
        "gain": round(accuracy[-1] - accuracy[0], 4),
        "kl": [round(k, 4) for k in kl],
        "kl_final": round(statistics.fmean(kl[-KL_WINDOW:]), 4),
        "kl_max": round(max(kl), 4),
        "by_cell": by_cell,
        "train_seconds": round(history.seconds, 1),
        "eval_seconds": round(history.eval_seconds, 1),
        "wall_seconds": round(wall, 1),
    }


def summarise(results: list[dict]) -> dict:
    """Per preset: the seeds, and the mean, smallest and largest gain and final KL.

    :param results: the runs, each with ``"preset"``, ``"gain"`` and ``"kl_final"``.
    :returns: preset name to its summary.
    """
    out: dict = {}
    for preset in dict.fromkeys(r["preset"] for r in results):
        rows = [r for r in results if r["preset"] == preset]
        gains = [r["gain"] for r in rows]
        out[preset] = {
            "seeds": [r["seed"] for r in rows],
            "gain_mean": round(statistics.fmean(gains), 4),
            "gain_min": min(gains),
            "gain_max": max(gains),
            "kl_final_mean": round(statistics.fmean(r["kl_final"] for r in rows), 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        nargs="*",
        choices=[*PRESETS, "all"],
        default=["recipe"],
        help="reward settings (all: every preset; the recipe with every seed, the others seed 0)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default="cpu", help="the zoo profile of the recipes")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--progress", action="store_true", help="progress bars on stderr")
    parser.add_argument(
        "--out", type=Path, help="also write the runs and the machine to this JSON file"
    )
    args = parser.parse_args(argv)
    if any(seed < 0 for seed in args.seeds):
        parser.error(f"--seeds: must be >= 0, got {args.seeds}")
    if "all" in args.preset:
        plan = [("recipe", seed) for seed in args.seeds]
        plan += [(name, args.seeds[0]) for name in PRESETS if name != "recipe"]
    else:
        plan = [(name, seed) for name in args.preset for seed in args.seeds]

    from dataclasses import replace

    import torch

    from llmbook.align.chat import ChatFormat
    from llmbook.zoo import load_or_train
    from llmbook.zoo.recipes import resolve

    try:
        recipe = resolve("ppo", args.profile)
    except ValueError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    sft = load_or_train(recipe.parent.recipe.name, args.profile, progress=args.progress)
    rm = load_or_train(recipe.reward_model.recipe.name, args.profile, progress=args.progress)
    chat = ChatFormat(sft.tokenizer)
    results = []
    for name, seed in plan:
        config = replace(recipe.train_config, seed=seed, **PRESETS[name])
        result = {"preset": name, **run(sft.model, rm.model, chat, config, progress=args.progress)}
        results.append(result)
        brief = {k: result[k] for k in ("preset", "seed", "accuracy", "gain", "kl_final")}
        print(json.dumps(brief), flush=True)
    summary = {"threads": torch.get_num_threads(), "presets": summarise(results)}
    if args.out:
        from llmbook.benchmark import store_bench_results

        record = {
            "recipe": {"name": "ppo", "profile": args.profile, "key": recipe.key},
            "config": recipe.train_config.to_dict(),
            "corpus": sft.corpus_origin,
            "results": results,
            **summary,
        }
        store_bench_results(args.out, "ppo_seeds.py", argv or sys.argv[1:], record)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
