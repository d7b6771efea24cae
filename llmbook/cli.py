"""The ``llmbook`` command: train, sample from and evaluate zoo models.

Every command shows progress on stderr and prints a one-line JSON summary as the last line of stdout,
so scripts and benchmarks can read results: ``llmbook train ... | tail -1 | jq .val_loss``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

EXIT_USAGE = 2


def _emit(summary: dict) -> None:
    print(json.dumps(summary, sort_keys=True), flush=True)


def _fail(message: str) -> int:
    print(f"llmbook: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``llmbook`` command.

    :returns: the parser, with sub-commands ``train``, ``sample``, ``eval`` and ``zoo``.
    """
    parser = argparse.ArgumentParser(prog="llmbook", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_args(p):
        p.add_argument("--recipe", required=True, help="zoo recipe name (see `llmbook zoo list`)")
        p.add_argument(
            "--profile",
            choices=("cpu", "gpu"),
            default=None,
            help="default: LLMBOOK_PROFILE, else gpu with CUDA, else cpu",
        )
        p.add_argument("--device", default=None, help="cpu, cuda, mps (default: from the profile)")

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
    p.add_argument("--prompt", default="\n", help="the prompt text (default: a newline)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=200)
    p.add_argument("--num-samples", type=_positive_int, default=1)
    p.add_argument("--temperature", type=_non_negative_float, default=0.8, help="0 is greedy")
    p.add_argument("--top-k", type=_positive_int, default=None)
    p.add_argument("--top-p", type=_probability, default=None)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("eval", help="validation loss, perplexity and bits per byte of a zoo model")
    recipe_args(p)
    p.add_argument(
        "--corpus",
        default=None,
        help="evaluate on another corpus (whole file) instead of the recipe's validation split",
    )

    p = sub.add_parser("zoo", help="list recipes and their checkpoint keys")
    p.add_argument(
        "action",
        choices=("list", "key"),
        help="list: recipes and cache state; key: one hash of all recipes (for CI caches)",
    )
    p.add_argument("--profile", choices=("cpu", "gpu"), default=None)
    return parser


def _cmd_train(args) -> int:
    from llmbook.train.distributed import cleanup, init_distributed
    from llmbook.zoo import load_or_train

    started = time.perf_counter()
    # Under torchrun (WORLD_SIZE > 1) join the process group: each process trains its share of every
    # batch and rank 0 writes the checkpoint and prints the summary.
    info = init_distributed()
    device = args.device if info.world_size == 1 else info.device
    zoo = load_or_train(
        args.recipe,
        args.profile,
        device=device,
        retrain=not args.if_missing,
        progress=not args.no_progress,
    )
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
            "val_loss": m["val_loss"],
            "train_seconds": m["train_seconds"],
            "tokens_per_second": m["tokens_per_second"],
            "steps": zoo.recipe.train_config.max_steps,
            "corpus_origin": zoo.meta["corpus"]["origin"],
            "wall_seconds": time.perf_counter() - started,
            "processes": info.world_size,
        }
    )
    return 0


def _cmd_sample(args) -> int:
    import torch

    from llmbook.generate import generate
    from llmbook.zoo import load_or_train

    zoo = load_or_train(args.recipe, args.profile, device=args.device, progress=True)
    tok = zoo.tokenizer
    # A model trained on BOS-prefixed windows expects its prompt to start with BOS too.
    prompt = tok.encode(args.prompt, bos=zoo.recipe.train_config.bos_id is not None)
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
            "samples": samples,
            "mean_logp": float(out.logps[out.completion_mask].mean()),
            "seed": args.seed,
        }
    )
    return 0


def _cmd_eval(args) -> int:
    import torch

    from llmbook.data import load_corpus, train_val_split
    from llmbook.train import evaluate
    from llmbook.zoo import load_or_train

    zoo = load_or_train(args.recipe, args.profile, device=args.device, progress=True)
    name = args.corpus or zoo.recipe.recipe.corpus
    corpus = load_corpus(name)
    data = corpus.text.encode("utf-8")
    ids = torch.tensor(zoo.tokenizer.encode(data), dtype=torch.long)
    if args.corpus is None:
        _, ids = train_val_split(ids, zoo.recipe.recipe.train_fraction)
    result = evaluate(zoo.model, ids, bos_id=zoo.recipe.train_config.bos_id)
    _emit(
        {
            "command": "eval",
            "recipe": args.recipe,
            "profile": zoo.recipe.profile,
            "corpus": name,
            "split": "val" if args.corpus is None else "all",
            "corpus_origin": corpus.origin,
            "val_loss": result.loss,
            "perplexity": result.perplexity,
            "bits_per_byte": result.bits_per_byte,
            "n_tokens": result.n_tokens,
        }
    )
    return 0


def _cmd_zoo(args) -> int:
    import hashlib

    from llmbook.zoo import RECIPES, checkpoint_dir, resolve

    rows = []
    for name in sorted(RECIPES):
        resolved = resolve(name, args.profile)
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
            print(
                f"{r['recipe']:24s} {r['profile']:4s} {r['key']} {'cached' if r['cached'] else '-':7s} {r['description']}"
            )
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


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    :param argv: arguments (default: ``sys.argv[1:]``).
    :returns: the exit status: 0 on success, 2 for bad arguments or an unknown recipe.
    """
    args = build_parser().parse_args(argv)
    handlers = {"train": _cmd_train, "sample": _cmd_sample, "eval": _cmd_eval, "zoo": _cmd_zoo}
    try:
        return handlers[args.command](args)
    except KeyError as err:
        return _fail(str(err.args[0]) if err.args else str(err))
    except ValueError as err:
        return _fail(str(err))


if __name__ == "__main__":
    sys.exit(main())
