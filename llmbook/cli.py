"""The ``llmbook`` command: train, sample from and evaluate zoo models.

Every command shows progress on stderr and prints a one-line JSON summary as the last line of stdout,
so scripts and benchmarks can read results: ``llmbook train ... | tail -1 | jq .val_loss``. On an error
that last line is ``{"error": "...", "type": "..."}``, and non-finite numbers are written as ``null``.

Exit status: 0 on success; 2 when the command line is wrong (an argument, an unknown recipe or corpus);
1 for everything else: the environment (``LLMBOOK_DATA_DIR``, ``LLMBOOK_CACHE_DIR``,
``LLMBOOK_PROFILE``), files on disk (a corrupt checkpoint or corpus), and bugs. Expected problems are
one line on stderr; an unexpected exception also prints its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

EXIT_RUNTIME = 1
EXIT_USAGE = 2
MAX_SEED = 2**64 - 1
"""The largest seed :meth:`torch.Generator.manual_seed` accepts."""


class UsageError(Exception):
    """The command line is wrong: an argument's value, a recipe or corpus name (exit status 2)."""


class SetupError(Exception):
    """The environment is wrong: an environment variable or a recipe's config (exit status 1)."""


def _finite(value):
    # JSON has no NaN or Infinity; json.dumps would write bare `NaN`, which strict parsers reject.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _emit(summary: dict) -> None:
    print(json.dumps(_finite(summary), sort_keys=True, allow_nan=False), flush=True)


def _refuse(message: str, kind: str, status: int) -> int:
    print(f"llmbook: error: {message}", file=sys.stderr, flush=True)
    _emit({"error": message, "type": kind})
    return status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse's own error path, plus the JSON line that every exit promises on stdout.
        self.print_usage(sys.stderr)
        sys.exit(_refuse(message, UsageError.__name__, EXIT_USAGE))


def _number(text: str, kind=float):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _ranged(kind, accept, what: str):
    def parse(text: str):
        value = _number(text, kind)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


_probability = _ranged(float, lambda v: 0.0 < v <= 1.0, "in (0, 1]")
_non_negative_float = _ranged(float, lambda v: v >= 0, ">= 0")
_positive_int = _ranged(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _ranged(int, lambda v: v >= 0, "a non-negative integer")
_seed = _ranged(int, lambda v: 0 <= v <= MAX_SEED, "an integer in [0, 2**64 - 1]")


def _utf8(text: str) -> str:
    # Python hands undecodable argv bytes over as lone surrogates (surrogateescape); they cannot be
    # encoded, so the tokenizer would fail on them far from here.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"is not valid UTF-8 text: {ascii(text.encode('utf-8', 'surrogateescape'))}"
        ) from None
    return text


def _device(text: str):
    from llmbook.device import parse_device

    try:
        return parse_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("device: ")) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``llmbook`` command.

    Bad arguments exit with status 2, a one-line message on stderr and the JSON error line on stdout.

    :returns: the parser, with sub-commands ``train``, ``sample``, ``eval``, ``chat``, ``zoo`` and
        ``ablate``.
    """
    parser = _Parser(prog="llmbook", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_args(p):
        p.add_argument("--recipe", required=True, help="zoo recipe name (see `llmbook zoo list`)")
        p.add_argument(
            "--profile",
            choices=("cpu", "gpu"),
            default=None,
            help="default: LLMBOOK_PROFILE, else gpu with CUDA, else cpu",
        )
        p.add_argument(
            "--device",
            type=_device,
            default=None,
            help="cpu, cuda, cuda:N or mps (default: from the profile); checked before any work",
        )

    p = sub.add_parser("train", help="train a zoo recipe and save its checkpoint")
    recipe_args(p)
    p.add_argument(
        "--if-missing",
        action="store_true",
        help="load the cached checkpoint if it exists instead of retraining",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("sample", help="generate text from a zoo model")
    recipe_args(p)
    p.add_argument(
        "--prompt", type=_utf8, default="\n", help="the prompt text (default: a newline)"
    )
    p.add_argument("--max-new-tokens", type=_positive_int, default=200)
    p.add_argument("--num-samples", type=_positive_int, default=1)
    p.add_argument("--temperature", type=_non_negative_float, default=0.8, help="0 is greedy")
    p.add_argument("--top-k", type=_positive_int, default=None)
    p.add_argument("--top-p", type=_probability, default=None)
    p.add_argument("--seed", type=_seed, default=0, help="0 to 2**64 - 1")

    p = sub.add_parser(
        "eval",
        help="validation loss, perplexity and bits per byte of a zoo model; with --tasks, exact "
        "match on the verifiable tasks; for a reward model, held-out pairwise accuracy",
    )
    recipe_args(p)
    p.add_argument(
        "--corpus",
        default=None,
        help="evaluate on another corpus (whole file) instead of the recipe's validation split",
    )
    p.add_argument(
        "--tasks",
        default=None,
        help="task accuracy instead of the loss: 'all' or comma-separated task names",
    )
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument(
        "--difficulties",
        choices=("trained", "ood", "all"),
        default="trained",
        help="which difficulty levels to test (ood: harder than trained)",
    )
    p.add_argument("--per-cell", type=_positive_int, default=50, help="examples per task and level")
    p.add_argument(
        "--pairs", type=_positive_int, default=1000, help="reward models: held-out pairs to rank"
    )
    p.add_argument("--seed", type=_seed, default=0, help="0 to 2**64 - 1")

    p = sub.add_parser("chat", help="ask a fine-tuned (chat) zoo model one question")
    recipe_args(p)
    p.add_argument("--prompt", type=_utf8, required=True, help="the user's message")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--num-samples", type=_positive_int, default=1)
    p.add_argument("--temperature", type=_non_negative_float, default=0.0, help="0 is greedy")
    p.add_argument("--top-k", type=_positive_int, default=None)
    p.add_argument("--top-p", type=_probability, default=None)
    p.add_argument("--seed", type=_seed, default=0, help="0 to 2**64 - 1")

    p = sub.add_parser(
        "zoo",
        help="list recipes and their checkpoint keys, build the missing ones, or fetch and publish "
        "checkpoints from and for the checkpoint store",
    )
    p.add_argument(
        "action",
        choices=("list", "key", "build", "fetch", "publish"),
        help="list: recipes and cache state; key: one hash of all recipes (for CI caches); build: "
        "train the missing models, several at once; fetch: download the published checkpoints the "
        "chapters load (LLMBOOK_ZOO_URL or --url), reporting whether every one exists; publish: pack "
        "local checkpoints as store archives with their sha256 (--out)",
    )
    p.add_argument(
        "--url",
        default=None,
        help="fetch: the checkpoint store's base URL (default: LLMBOOK_ZOO_URL)",
    )
    p.add_argument("--out", default=None, help="publish: the folder for the archives")
    p.add_argument(
        "--check",
        action="store_true",
        help="fetch: only report which checkpoints the store has (nothing is downloaded)",
    )
    p.add_argument("--profile", choices=("cpu", "gpu"), default=None)
    p.add_argument(
        "--recipes",
        default=None,
        help="build, fetch, publish: comma-separated recipe names (default: every recipe a chapter "
        "loads); the recipes they start from are included",
    )
    p.add_argument(
        "--jobs",
        type=_non_negative_int,
        default=1,
        help="build: training processes at once (0: one per CPU core on the cpu profile, 1 on the gpu "
        "profile)",
    )
    p.add_argument("--no-progress", action="store_true", help="build: no progress bar")

    p = sub.add_parser(
        "ablate",
        help="train a grid of architecture variants x seeds (resuming its results file) and print "
        "each cell's mean validation bits per byte with a 95%% confidence interval",
    )
    p.add_argument("--grid", default="book", help="preset grid: book (default) or smoke")
    p.add_argument(
        "--out",
        default=None,
        help="JSON Lines results file to append to and resume from (default: "
        "LLMBOOK_CACHE_DIR/ablate/GRID-KEY.jsonl)",
    )
    p.add_argument("--cells", default=None, help="comma-separated cell names (default: all)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds of the grid (default: all)")
    p.add_argument(
        "--threads", type=_positive_int, default=None, help="torch threads (default: unchanged)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _resolve(name: str, profile: str | None):
    from llmbook.zoo import RECIPES, resolve

    if name not in RECIPES:
        raise UsageError(f"--recipe: unknown recipe {name!r}; known recipes: {sorted(RECIPES)}")
    try:
        return resolve(name, profile)
    except ValueError as err:  # LLMBOOK_PROFILE or a field of the recipe's config, by name
        raise SetupError(f"recipe {name!r}: {err}") from None


def _check_environment(recipe, *, will_train: bool) -> None:
    """Fail on a bad data mirror or an unwritable cache now, not after minutes of training."""
    from llmbook.paths import cache_dir, data_mirror, ensure_writable_dir
    from llmbook.zoo import checkpoint_dir

    try:
        data_mirror()
    except FileNotFoundError as err:
        raise SetupError(str(err)) from None
    if will_train or not checkpoint_dir(recipe).is_dir():
        ensure_writable_dir(cache_dir() / "zoo")


def _provenance(zoo) -> dict:
    """Which corpus the model was trained on, and whether it was the offline fallback."""
    return {"corpus_origin": zoo.corpus_origin, "fallback": zoo.fallback}


def _cmd_train(args) -> int:
    from llmbook.train.distributed import cleanup, init_distributed
    from llmbook.zoo import load_or_train

    started = time.perf_counter()
    recipe = _resolve(args.recipe, args.profile)
    _check_environment(recipe, will_train=not args.if_missing)
    # Under torchrun (WORLD_SIZE > 1) join the process group: each process trains its share of every
    # batch and rank 0 writes the checkpoint and prints the summary.
    info = init_distributed()
    try:
        device = args.device if info.world_size == 1 else info.device
        zoo = load_or_train(
            args.recipe,
            args.profile,
            device=device,
            retrain=not args.if_missing,
            progress=not args.no_progress,
        )
    finally:
        cleanup()
    if not info.is_main:
        return 0
    m = zoo.meta["metrics"]
    _emit(
        {
            "command": "train",
            "recipe": args.recipe,
            "profile": zoo.recipe.profile,
            "key": zoo.recipe.key,
            "checkpoint": str(zoo.path),
            "trained_now": zoo.trained_now,
            "val_loss": m.get("val_loss"),  # a reward model has none: its number is val_accuracy
            "train_seconds": m["train_seconds"],
            "tokens_per_second": m.get("tokens_per_second"),
            **({"val_accuracy": m["val_accuracy"]} if "val_accuracy" in m else {}),
            # PPO and GRPO count rollout iterations; every other kind optimizer steps.
            "steps": getattr(zoo.recipe.train_config, "max_steps", None)
            or zoo.recipe.train_config.iterations,
            **_provenance(zoo),
            "wall_seconds": time.perf_counter() - started,
            "processes": info.world_size,
        }
    )
    return 0


def _cmd_sample(args) -> int:
    import torch

    from llmbook.generate import generate
    from llmbook.zoo import load_or_train
    from llmbook.zoo.recipes import CHAT_KINDS

    recipe = _resolve(args.recipe, args.profile)
    _check_environment(recipe, will_train=False)
    if recipe.recipe.kind in CHAT_KINDS:
        raise UsageError(f"--recipe: {args.recipe!r} is a chat model; use `llmbook chat`")
    if recipe.recipe.kind == "reward":
        raise UsageError(f"--recipe: {args.recipe!r} is a reward model; use `llmbook eval`")
    zoo = load_or_train(args.recipe, args.profile, device=args.device, progress=True)
    tok = zoo.tokenizer
    # A model trained on BOS-prefixed windows expects its prompt to start with BOS too.
    prompt = tok.encode(args.prompt, bos=zoo.recipe.train_config.bos_id is not None)
    if not prompt:
        raise UsageError("--prompt: is empty, and this model (trained without BOS) needs a token")
    generator = torch.Generator().manual_seed(args.seed)
    out = generate(
        zoo.model,
        [prompt] * args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        generator=generator,
    )
    samples = [tok.decode(c) for c in out.completions]
    for i, text in enumerate(samples):
        print(f"--- sample {i} ---\n{args.prompt}{text}")
    _emit(
        {
            "command": "sample",
            "recipe": args.recipe,
            "profile": zoo.recipe.profile,
            **_provenance(zoo),
            "samples": samples,
            "mean_logp": float(out.logps[out.completion_mask].mean()),
            "seed": args.seed,
        }
    )
    return 0


def _cmd_eval(args) -> int:
    import torch

    from llmbook.data import load_corpus, train_val_split
    from llmbook.data.corpora import CORPORA
    from llmbook.train import evaluate
    from llmbook.zoo import load_or_train

    recipe = _resolve(args.recipe, args.profile)
    if recipe.recipe.kind == "reward":
        from llmbook.cli_align import eval_reward

        if args.corpus is not None or args.tasks not in (None, "all"):
            raise UsageError(
                "--recipe: a reward model is evaluated on preference pairs of its own tasks; "
                "drop --corpus and --tasks"
            )
        _check_environment(recipe, will_train=False)
        _emit(eval_reward(args, recipe))
        return 0
    if args.tasks is not None:
        from llmbook.cli_align import eval_tasks

        if args.corpus is not None:
            raise UsageError("--tasks: evaluates on tasks, not a corpus; drop --corpus")
        _check_environment(recipe, will_train=False)
        _emit(eval_tasks(args, recipe, UsageError))
        return 0
    if args.corpus is not None and args.corpus not in CORPORA:
        raise UsageError(f"--corpus: unknown corpus {args.corpus!r}; known: {sorted(CORPORA)}")
    _check_environment(recipe, will_train=False)
    zoo = load_or_train(args.recipe, args.profile, device=args.device, progress=True)
    name = args.corpus or zoo.recipe.recipe.corpus
    corpus = load_corpus(name)
    tok = zoo.tokenizer
    # Tokenized exactly as training tokenized it, so the validation split is the same tokens.
    ids = torch.tensor(tok.encode(corpus.text), dtype=torch.long)
    if args.corpus is None:
        _, ids = train_val_split(ids, zoo.recipe.recipe.train_fraction)
    n_bytes = len(tok.decode_bytes(ids))  # what bits per byte divide by, for any tokenizer
    result = evaluate(zoo.model, ids, bos_id=_bos_id(zoo.recipe), n_bytes=n_bytes or None)
    model_origin = _provenance(zoo)
    _emit(
        {
            "command": "eval",
            "recipe": args.recipe,
            "profile": zoo.recipe.profile,
            "corpus": name,
            "split": "val" if args.corpus is None else "all",
            "corpus_origin": corpus.origin,
            "train_corpus_origin": model_origin["corpus_origin"],
            "fallback": model_origin["fallback"],
            "val_loss": result.loss,
            "perplexity": result.perplexity,
            "bits_per_byte": result.bits_per_byte,
            "n_tokens": result.n_tokens,
            "n_bytes": n_bytes,
        }
    )
    return 0


def _bos_id(recipe):
    # The BOS convention of the pretraining run (a fine-tuned model keeps its parent's).
    while recipe.parent is not None:
        recipe = recipe.parent
    return recipe.train_config.bos_id


def _cmd_chat(args) -> int:
    from llmbook.cli_align import chat
    from llmbook.zoo.recipes import CHAT_KINDS

    recipe = _resolve(args.recipe, args.profile)
    if recipe.recipe.kind not in CHAT_KINDS:
        raise UsageError(f"--recipe: {args.recipe!r} has no chat format; use `llmbook sample`")
    _check_environment(recipe, will_train=False)
    _emit(chat(args))
    return 0


def _cmd_zoo(args) -> int:
    import hashlib

    from llmbook.zoo import RECIPES, checkpoint_dir

    if args.action == "build":
        return _zoo_build(args)
    if args.action in ("fetch", "publish"):
        return _zoo_store(args)

    rows = []
    for name in sorted(RECIPES):
        resolved = _resolve(name, args.profile)
        rows.append(
            {
                "recipe": name,
                "profile": resolved.profile,
                "key": resolved.key,
                "cached": checkpoint_dir(resolved).exists(),
                "description": RECIPES[name].description,
            }
        )
    if args.action == "list":
        for r in rows:
            cached = "cached" if r["cached"] else "-"
            print(f"{r['recipe']:24s} {r['profile']:4s} {r['key']} {cached:7s} {r['description']}")
        _emit({"command": "zoo list", "recipes": rows})
    else:
        key = hashlib.sha256("".join(r["key"] for r in rows).encode()).hexdigest()[:16]
        _emit(
            {
                "command": "zoo key",
                "key": key,
                "profile": rows[0]["profile"] if rows else args.profile,
            }
        )
    return 0


def _zoo_names(args) -> list[str]:
    from llmbook.zoo.recipes import book_recipes

    if args.recipes is None:
        return book_recipes()
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    if not names:
        raise UsageError("--recipes: expected one or more recipe names")
    return names


def _zoo_store(args) -> int:
    from llmbook.zoo.build import build_plan
    from llmbook.zoo.checkpoint import CheckpointError
    from llmbook.zoo.registry import checkpoint_dir
    from llmbook.zoo.store import fetch, is_published, publish, store_url

    names = _zoo_names(args)
    try:
        plan = list(build_plan(names))  # a model and every model it starts from, as make zoo builds
        recipes = {name: _resolve(name, args.profile) for name in plan}
    except ValueError as err:
        raise UsageError(f"--recipes: {str(err).removeprefix('recipes: ')}") from None
    profile = next(iter(recipes.values())).profile if recipes else args.profile
    if args.action == "publish":
        if args.out is None:
            raise UsageError("--out: publish needs a folder for the archives")
        try:
            published, missing = publish(plan, profile, args.out)
        except CheckpointError as err:
            raise SetupError(str(err)) from None
        for name in missing:
            print(f"llmbook: {name}: no local {profile} checkpoint to publish", file=sys.stderr)
        _emit(
            {
                "command": "zoo publish",
                "profile": profile,
                "published": [
                    {
                        "recipe": p.recipe,
                        "archive": str(p.archive),
                        "sha256": p.sha256,
                        "size": p.size,
                    }
                    for p in published
                ],
                "missing": missing,
            }
        )
        return 1 if missing else 0
    try:
        url = store_url(args.url)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if url is None:
        raise UsageError("--url: no checkpoint store is set (give --url or LLMBOOK_ZOO_URL)")
    found = {"cached": [], "published" if args.check else "fetched": [], "missing": []}
    for name, recipe in recipes.items():
        try:
            if checkpoint_dir(recipe).is_dir():
                state = "cached"
            elif args.check:
                state = "published" if is_published(recipe, url=url) else "missing"
            else:
                state = "fetched" if fetch(recipe, url=url) is not None else "missing"
        except CheckpointError as err:
            raise SetupError(str(err)) from None
        except OSError as err:
            raise SetupError(f"{url}: the checkpoint store cannot be reached ({err})") from None
        found[state].append(name)
        print(f"llmbook: {name}: {state}", file=sys.stderr)
    _emit(
        {
            "command": "zoo fetch --check" if args.check else "zoo fetch",
            "profile": profile,
            "url": url,
            "complete": not found["missing"],
            **found,
        }
    )
    return 0


def _zoo_build(args) -> int:
    from llmbook.zoo.build import build, build_plan

    started = time.perf_counter()
    names = _zoo_names(args)
    try:
        plan = build_plan(names)
        for name in plan:  # a bad profile or recipe field, before anything trains
            recipe = _resolve(name, args.profile)
    except ValueError as err:
        raise UsageError(f"--recipes: {str(err).removeprefix('recipes: ')}") from None
    if plan:
        _check_environment(recipe, will_train=True)
    profile = recipe.profile if plan else args.profile
    # 0: a process per core on the cpu profile (each trains with one thread); one GPU, one process.
    jobs = args.jobs or ((os.cpu_count() or 1) if profile == "cpu" else 1)
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="zoo build", unit="model", file=sys.stderr)

    def show(result) -> None:
        line = f"{result.recipe}: {result.status}"
        if result.status in ("trained", "failed"):
            line += f" in {result.seconds:.0f} s"
        if "error" in result.summary:
            line += f" ({result.summary['error']})"
        if result.summary.get("stderr"):
            line += "\n" + result.summary["stderr"]
        if bar is None:
            print(f"llmbook: {line}", file=sys.stderr, flush=True)
        else:
            bar.write(f"llmbook: {line}", file=sys.stderr)
            bar.update(1)

    try:
        results = build(names, jobs=jobs, profile=profile, on_done=show)
    finally:
        if bar is not None:
            bar.close()
    counts = {
        s: sum(r.status == s for r in results) for s in ("trained", "cached", "failed", "skipped")
    }
    summary = {
        "command": "zoo build",
        "profile": profile,
        "jobs": jobs,
        **counts,
        "recipes": [
            {"recipe": r.recipe, "status": r.status, "seconds": r.seconds, **r.summary}
            for r in results
        ],
        "wall_seconds": time.perf_counter() - started,
    }
    if counts["failed"] or counts["skipped"]:
        bad = next(r for r in results if r.status in ("failed", "skipped"))
        message = f"zoo build: {bad.recipe} {bad.status}: {bad.summary.get('error')}"
        print(f"llmbook: error: {message}", file=sys.stderr, flush=True)
        _emit({**summary, "error": message, "type": "BuildError"})
        return EXIT_RUNTIME
    _emit(summary)
    return 0


def _names(option: str, text: str | None, known, kind=str) -> list | None:
    """A comma-separated list of ``known`` items, or None for all of them."""
    if text is None:
        return None
    items = []
    for piece in (p.strip() for p in text.split(",")):
        try:
            item = kind(piece)
        except ValueError:
            raise UsageError(f"{option}: {piece!r} is not an integer") from None
        if item not in known:
            raise UsageError(f"{option}: {item!r} is not in the grid; known: {list(known)}")
        items.append(item)
    return items


def _cmd_ablate(args) -> int:
    from llmbook.experiments.ablate import ResultsError, run_grid, summarize
    from llmbook.experiments.grid import GRIDS
    from llmbook.paths import cache_dir, data_mirror, ensure_writable_dir

    started = time.perf_counter()
    if args.grid not in GRIDS:
        raise UsageError(f"--grid: unknown grid {args.grid!r}; known grids: {sorted(GRIDS)}")
    grid = GRIDS[args.grid]
    cells = _names("--cells", args.cells, tuple(grid.cells))
    seeds = _names("--seeds", args.seeds, grid.seeds, int)
    try:
        data_mirror()
    except FileNotFoundError as err:
        raise SetupError(str(err)) from None
    if args.out is None:
        out = ensure_writable_dir(cache_dir() / "ablate") / f"{grid.name}-{grid.key}.jsonl"
    else:
        out = Path(args.out).expanduser()
    new = []
    try:
        records = run_grid(
            grid,
            out,
            cells=cells,
            seeds=seeds,
            progress=not args.no_progress,
            threads=args.threads,
            on_result=new.append,
        )
    except ResultsError as err:
        return _refuse(str(err), type(err).__name__, EXIT_RUNTIME)
    except OSError as err:  # the results file: a folder, unwritable, a full disk
        return _refuse(str(err), type(err).__name__, EXIT_RUNTIME)
    baseline = "baseline" if any(r["cell"] == "baseline" for r in records) else None
    rows = summarize(records, "val_bpb", baseline=baseline)
    print(f"{grid.name}: validation bits per byte, mean ± 95% half-width over seeds")
    for row in rows:
        line = f"{row['cell']:12s} {row['mean']:.4f} ± {row['half_width']:.4f}  (n={row['n']})"
        if row["diff_mean"] is not None:
            verdict = "distinguishable" if row["distinguishable"] else "not distinguishable"
            line += (
                f"  vs baseline {row['diff_mean']:+.4f} ± {row['diff_half_width']:.4f} {verdict}"
            )
        print(line, flush=True)
    _emit(
        {
            "command": "ablate",
            "grid": grid.name,
            "key": grid.key,
            "out": str(out),
            "ran": len(new),
            "reused": len(records) - len(new),
            "runs": len(records),
            "metric": "val_bpb",
            "cells": {r["cell"]: {k: r[k] for k in ("mean", "low", "high", "n")} for r in rows},
            "differences": {
                r["cell"]: {
                    "mean": r["diff_mean"],
                    "low": r["diff_low"],
                    "high": r["diff_high"],
                    "distinguishable": r["distinguishable"],
                }
                for r in rows
                if r["diff_mean"] is not None
            },
            "seconds": time.perf_counter() - started,
        }
    )
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # The package warns (a corpus fallback, a checkpoint moved aside); a command shows each as one
    # line, without the source location that Python's default format adds.
    text = str(message).removeprefix("llmbook: ")
    print(f"llmbook: warning: {text}", file=sys.stderr, flush=True)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from llmbook.data.corpora import ChecksumError
    from llmbook.paths import CacheDirError
    from llmbook.zoo import CheckpointError

    return (SetupError, CacheDirError, CheckpointError, ChecksumError)


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    :param argv: arguments (default: ``sys.argv[1:]``).
    :returns: the exit status: 0 on success, 2 when the command line is wrong, 1 for any other error.
    :raises SystemExit: with status 2 for arguments the parser rejects (after printing the error
        line), and with status 0 for ``--help``.
    """
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(args)


def _run(args) -> int:
    handlers = {
        "train": _cmd_train,
        "sample": _cmd_sample,
        "eval": _cmd_eval,
        "chat": _cmd_chat,
        "zoo": _cmd_zoo,
        "ablate": _cmd_ablate,
    }
    try:
        return handlers[args.command](args)
    except UsageError as err:
        return _refuse(str(err), type(err).__name__, EXIT_USAGE)
    except Exception as err:
        kind = type(err).__name__
        if isinstance(err, _expected_errors()):
            return _refuse(str(err), kind, EXIT_RUNTIME)
        # A bug, not bad input: keep the traceback for the report.
        traceback.print_exc()
        return _refuse(f"internal error: {kind}: {err}", kind, EXIT_RUNTIME)


if __name__ == "__main__":
    sys.exit(main())
