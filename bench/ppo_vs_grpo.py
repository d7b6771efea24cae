"""PPO against GRPO from the same SFT model, at equal numbers of sampled completions, over seeds.

    python bench/ppo_vs_grpo.py                                   # seeds 0 1 2, both recipes
    python bench/ppo_vs_grpo.py --seeds 0 --algorithms grpo       # one run
    python bench/ppo_vs_grpo.py --extra grpo-16 --out bench/results/ppo_vs_grpo.json  # Part 9.5
    python bench/ppo_vs_grpo.py --jobs 2 --threads 1              # two runs at once, a core each

Each run trains a copy of the zoo's ``sft`` model with the zoo recipe of its algorithm (``ppo``:
250 iterations of 64 prompts, one completion each, a critic, the clean reward model scored;
``grpo``: 200 iterations of 50 prompts x 4 completions, one pass per batch, no critic), with the run's seed, in a
**child process** of its own, so that its peak resident memory is its own. Both sample 16,000
completions by GRPO's iteration 80: the comparison reads GRPO's held-out evaluation, KL and time
there (``--budget``), and also reports the whole GRPO recipe (its 200 iterations) for the recipe's
target. Time is the sum of each iteration's sampling, scoring and update seconds (evaluations
excluded, for both). Per run the script prints one JSON line; at the end a one-line JSON summary:
per algorithm the mean, smallest and largest held-out gain, KL, time, sampled tokens and memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ALGORITHMS = {
    "ppo": ("ppo", {}),
    "grpo": ("grpo", {}),
    # the first version of the grpo recipe: as many completions per iteration as PPO's, 16 prompts
    "grpo-16": (
        "grpo",
        {
            "prompts_per_batch": 16,
            "minibatch_size": 32,
            "updates_per_batch": 2,
            "iterations": 250,
            "eval_interval": 25,
        },
    ),
    # the variants the recipe was chosen from (Part 9.5), each over seeds 0, 1, 2: the second
    # version (two passes per batch for 120 iterations), and that version with a higher learning
    # rate, with std scaling, or with 8 completions for each of 25 prompts
    "grpo-2pass": ("grpo", {"updates_per_batch": 2, "iterations": 120}),
    "grpo-2pass-lr5": ("grpo", {"updates_per_batch": 2, "iterations": 120, "lr": 5e-4}),
    "grpo-2pass-std": (
        "grpo",
        {"updates_per_batch": 2, "iterations": 120, "scale_rewards": "group"},
    ),
    "grpo-2pass-k8": (
        "grpo",
        {"updates_per_batch": 2, "iterations": 120, "prompts_per_batch": 25, "group_size": 8},
    ),
}
"""The runs compared: name to (zoo recipe, changes to its config)."""

KL_WINDOW = 10
"""The final KL is the mean over this many iterations before the budget (one batch's is noisy)."""


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _state_mb(*modules, trained=()) -> float:
    """Parameters of every module held, plus gradients and AdamW's two moments of the trained ones."""
    seen, total = set(), 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
    for m in trained:
        total += 3 * sum(p.numel() * p.element_size() for p in m.parameters())
    return total / 2**20


def _budget_index(history: dict, completions: int, per_iteration: int) -> int:
    # The evaluation at the iteration where the run has sampled `completions` completions.
    it = completions // per_iteration
    if it not in history["eval_iterations"]:
        raise ValueError(
            f"--budget: no evaluation at iteration {it}; evaluations at {history['eval_iterations']}"
        )
    return history["eval_iterations"].index(it)


def run(
    algorithm: str,
    config,
    sft_model,
    chat,
    *,
    reward_model=None,
    budget: int,
    progress: bool = False,
) -> dict:
    """Train a copy of ``sft_model`` with one algorithm and measure it.

    :param algorithm: a name of :data:`ALGORITHMS` (``"ppo"`` runs PPO, the others GRPO).
    :param config: its :class:`~llmbook.align.ppo_config.PPOConfig` or
        :class:`~llmbook.align.grpo_config.GRPOConfig` (the seed included).
    :param sft_model: the SFT policy (not modified: a copy is trained).
    :param chat: the chat format.
    :param reward_model: the reward model PPO scores with (PPO only).
    :param budget: completions to compare at (an evaluation must fall there).
    :param progress: progress bars on stderr.
    :returns: a JSON-ready dict (see the module).
    """
    import copy

    from llmbook.align.policy import ActorCritic, reference_model

    policy = copy.deepcopy(sft_model)
    reference = reference_model(sft_model)
    seed = config.seed
    baseline_mb = _peak_rss_mb()
    started = time.perf_counter()
    if algorithm == "ppo":
        from llmbook.align.ppo import train_ppo

        rm = reward_model
        actor_critic = ActorCritic(policy, critic=config.critic, reward_model=rm)
        history = train_ppo(actor_critic, reference, rm, chat, config, progress=progress).to_dict()
        state = _state_mb(actor_critic, reference, rm, trained=(actor_critic,))
        per_iteration = config.batch_size
        phases = ("rollout_seconds", "update_seconds")
    else:
        from llmbook.align.grpo import train_grpo

        history = train_grpo(policy, reference, chat, config, progress=progress).to_dict()
        state = _state_mb(policy, reference, trained=(policy,))
        per_iteration = config.batch_size
        phases = ("generate_seconds", "score_seconds", "update_seconds")
    wall = time.perf_counter() - started
    train = history["train"]
    accuracy = history["eval"]["accuracy"]
    at = _budget_index(history, budget, per_iteration)
    n = history["eval_iterations"][at]  # iterations within the budget
    tokens = [int(round(length * per_iteration)) for length in train["length"]]
    if algorithm != "ppo":
        tokens = train["sampled_tokens"]
    kl = train["kl"][:n]
    return {
        "algorithm": algorithm,
        "seed": seed,
        "iterations": config.iterations,
        "completions_per_iteration": per_iteration,
        "eval_iterations": history["eval_iterations"],
        "accuracy": [round(a, 4) for a in accuracy],
        "sampled_tokens": [int(sum(tokens[:i])) for i in history["eval_iterations"]],
        "budget": {
            "iteration": n,
            "completions": n * per_iteration,
            "sampled_tokens": int(sum(tokens[:n])),
            "accuracy": round(accuracy[at], 4),
            "gain": round(accuracy[at] - accuracy[0], 4),
            "kl_final": round(statistics.fmean(kl[-KL_WINDOW:]), 4),
            "kl_max": round(max(kl), 4),
            "seconds": round(sum(sum(train[p][:n]) for p in phases), 1),
        },
        "end": {
            "accuracy": round(accuracy[-1], 4),
            "gain": round(accuracy[-1] - accuracy[0], 4),
            "kl_final": round(statistics.fmean(train["kl"][-KL_WINDOW:]), 4),
        },
        "kl": [round(k, 4) for k in train["kl"]],
        "phase_seconds": {p: round(sum(train[p]), 1) for p in phases},
        "train_seconds": round(history["seconds"], 1),
        "eval_seconds": round(history["eval_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_growth_mb": round(_peak_rss_mb() - baseline_mb, 1),
        "state_mb": round(state, 2),
    }


def _child(algorithm: str, seed: int, profile: str, budget: int | None, progress: bool) -> dict:
    # One run of a zoo recipe with another seed (main() starts one child process per run).
    from dataclasses import replace

    from llmbook.align.chat import ChatFormat
    from llmbook.zoo import load_or_train
    from llmbook.zoo.recipes import resolve

    name, changes = ALGORITHMS[algorithm]
    recipe = resolve(name, profile)
    ppo = resolve("ppo", profile).train_config
    sft = load_or_train("sft", profile, progress=progress)
    rm = None
    if algorithm == "ppo":
        rm = load_or_train(recipe.reward_model.recipe.name, profile, progress=progress).model
    return run(
        algorithm,
        replace(recipe.train_config, seed=seed, **changes),
        sft.model,
        ChatFormat(sft.tokenizer),
        reward_model=rm,
        budget=budget or ppo.iterations * ppo.batch_size,
        progress=progress,
    )


def summarise(results: list[dict]) -> dict:
    """Per algorithm: the seeds, and mean, smallest and largest of the measures at the budget.

    :param results: the runs.
    :returns: algorithm to its summary.
    """
    out: dict = {}
    for algorithm in dict.fromkeys(r["algorithm"] for r in results):
        rows = [r for r in results if r["algorithm"] == algorithm]

        def stats(values):
            values = list(values)
            return {
                "mean": round(statistics.fmean(values), 4),
                "min": min(values),
                "max": max(values),
            }

        out[algorithm] = {
            "seeds": [r["seed"] for r in rows],
            "gain": stats(r["budget"]["gain"] for r in rows),
            "end_gain": stats(r["end"]["gain"] for r in rows),
            "kl_final": stats(r["budget"]["kl_final"] for r in rows),
            "seconds": stats(r["budget"]["seconds"] for r in rows),
            "sampled_tokens": stats(r["budget"]["sampled_tokens"] for r in rows),
            "peak_rss_mb": stats(r["peak_rss_mb"] for r in rows),
            "rss_growth_mb": stats(r["rss_growth_mb"] for r in rows),
            "state_mb": stats(r["state_mb"] for r in rows),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--algorithms", nargs="+", choices=list(ALGORITHMS), default=["ppo", "grpo"]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--extra",
        nargs="*",
        choices=list(ALGORITHMS),
        default=[],
        help="runs for the first seed only (e.g. grpo-16)",
    )
    parser.add_argument("--profile", default="cpu", help="the zoo profile of the recipes")
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="completions to compare at (default: the ppo recipe's)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at once, each in its own process (default 1)"
    )
    parser.add_argument("--progress", action="store_true", help="progress bars on stderr")
    parser.add_argument("--out", type=Path, help="also write the runs and the machine to JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one run, in this process
    args = parser.parse_args(argv)
    if any(seed < 0 for seed in args.seeds):
        parser.error(f"--seeds: must be >= 0, got {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs: must be >= 1, got {args.jobs}")
    if args.budget is not None and args.budget < 1:
        parser.error(f"--budget: must be >= 1, got {args.budget}")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(_child(**job, progress=args.progress)))
        return 0
    from llmbook.zoo.recipes import resolve

    try:
        keys = {
            a: resolve(ALGORITHMS[a][0], args.profile).key for a in args.algorithms + args.extra
        }
    except ValueError as error:
        parser.error(str(error))
    plan = [(a, seed) for seed in args.seeds for a in args.algorithms]
    plan += [(a, args.seeds[0]) for a in args.extra]
    # With --out, every finished run is appended to <out>.partial.jsonl with the recipe key it ran:
    # an interrupted benchmark resumes, and a run of other code (another key) is not reused.
    partial = args.out.with_name(args.out.name + ".partial.jsonl") if args.out else None
    done_runs = {}
    if partial is not None and partial.exists():
        for line in partial.read_text().splitlines():
            row = json.loads(line)
            if row["key"] == keys.get(row["result"]["algorithm"]):
                done_runs[row["result"]["algorithm"], row["result"]["seed"]] = row["result"]

    def run_child(algorithm: str, seed: int) -> dict:
        job = {"algorithm": algorithm, "seed": seed, "profile": args.profile, "budget": args.budget}
        command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if args.progress:
            command.append("--progress")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"the {algorithm} run with seed {seed} failed")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        with lock:  # one line per run in the partial file and on stdout, whichever job ends first
            if partial is not None:
                partial.parent.mkdir(parents=True, exist_ok=True)
                with partial.open("a") as f:
                    f.write(json.dumps({"key": keys[algorithm], "result": result}) + "\n")
            print(
                json.dumps({"algorithm": algorithm, "seed": seed, **result["budget"]}), flush=True
            )
        return result

    lock = threading.Lock()
    todo = [run for run in plan if run not in done_runs]
    for algorithm, seed in plan:
        if (algorithm, seed) in done_runs:
            print(json.dumps({"algorithm": algorithm, "seed": seed, "resumed": True}), flush=True)
    # Each run is a child process of its own; with --jobs N, N of them run at once (give each its
    # cores with --threads, e.g. --jobs 2 --threads 1 on two cores).
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        fresh = dict(zip(todo, pool.map(lambda run: run_child(*run), todo)))
    results = [done_runs[run] if run in done_runs else fresh[run] for run in plan]
    summary = {"threads": args.threads or torch.get_num_threads(), "algorithms": summarise(results)}
    if args.out:
        from llmbook.benchmark import store_bench_results

        record = {
            "recipes": {a: {"profile": args.profile, "key": k} for a, k in keys.items()},
            "results": results,
            **summary,
        }
        store_bench_results(args.out, "ppo_vs_grpo.py", argv or sys.argv[1:], record)
        partial.unlink(missing_ok=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
