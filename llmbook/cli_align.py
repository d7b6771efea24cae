"""The ``llmbook`` commands for fine-tuned models: ``chat`` and ``eval --tasks`` (Part 6), and ``eval``
of a reward model (Part 7)."""

from __future__ import annotations

import torch

from llmbook.align.chat import ChatFormat
from llmbook.zoo.recipes import CHAT_KINDS


def _task_names(text: str, usage_error: type[Exception]) -> list[str]:
    from llmbook.tasks import TASKS

    if text.strip() == "all":
        return sorted(TASKS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if not names or unknown:
        raise usage_error(
            f"--tasks: unknown task {unknown[0] if unknown else text!r}; known: {sorted(TASKS)}"
        )
    return names


def eval_tasks(args, recipe, usage_error: type[Exception]) -> dict:
    """``llmbook eval --tasks``: greedy exact match per task and difficulty on one split.

    :param args: the parsed command line (``recipe``, ``profile``, ``device``, ``tasks``, ``split``,
        ``difficulties``, ``per_cell``, ``seed``).
    :param recipe: the resolved recipe.
    :param usage_error: the exception class for a bad command line.
    :returns: the JSON summary: overall accuracy and, per task, accuracy, count and accuracy by
        difficulty.
    :raises Exception: ``usage_error`` for unknown tasks or a model without the chat format.
    """
    from llmbook.align.evaluate import evaluate_tasks, task_examples
    from llmbook.zoo import load_or_train

    names = _task_names(args.tasks, usage_error)
    if recipe.recipe.kind not in CHAT_KINDS:
        raise usage_error(f"--tasks: {args.recipe!r} is not a fine-tuned (chat) model")
    zoo = load_or_train(args.recipe, args.profile, device=args.device, progress=True)
    examples = task_examples(
        names, args.per_cell, split=args.split, seed=args.seed, difficulties=args.difficulties
    )
    report = evaluate_tasks(zoo.model, ChatFormat(zoo.tokenizer), examples)
    return {
        "command": "eval",
        "recipe": args.recipe,
        "profile": zoo.recipe.profile,
        "split": args.split,
        "difficulties": args.difficulties,
        "accuracy": report.overall(),
        "n": len(examples),
        "tasks": report.to_json(),
        "corpus_origin": zoo.corpus_origin,
        "fallback": zoo.fallback,
    }


def eval_reward(args, recipe) -> dict:
    """``llmbook eval`` for a reward model: held-out pairwise accuracy, overall and per kind and task.

    The pairs are drawn as the recipe's training pairs were (tasks, rejection kinds, length bias),
    from ``--split`` (test by default; disjoint from training by prompt), with the SFT model's own
    wrong samples for the ``"sample"`` kind.

    :param args: the parsed command line (``recipe``, ``profile``, ``device``, ``split``, ``pairs``,
        ``seed``).
    :param recipe: the resolved recipe.
    :returns: the JSON summary.
    """
    from collections import defaultdict

    from llmbook.align.reward import pair_rewards, reward_data, sft_samples
    from llmbook.zoo import load_or_train

    zoo = load_or_train(args.recipe, args.profile, device=args.device, progress=True)
    parent = load_or_train(
        recipe.parent.recipe.name, args.profile, device=args.device, progress=True
    )
    fmt = ChatFormat(zoo.tokenizer)
    cfg = zoo.recipe.train_config
    # Model samples for the same share of examples as in training, so the mix of kinds matches.
    share = cfg.sample_examples / (cfg.max_steps * cfg.batch_size)
    sampler = sft_samples(
        parent.model,
        fmt,
        temperature=cfg.sample_temperature,
        seed=args.seed,
        limit=min(cfg.sample_examples, round(args.pairs * share)),
    )
    pairs = reward_data(cfg, args.pairs, split=args.split, seed=args.seed, samples_for=sampler)
    chosen, rejected = pair_rewards(zoo.model, fmt, pairs)
    right = (chosen > rejected).tolist()
    groups: dict[str, dict[str, list[bool]]] = {
        "kinds": defaultdict(list),
        "tasks": defaultdict(list),
    }
    for pair, ok in zip(pairs, right):
        groups["kinds"][pair.kind].append(ok)
        groups["tasks"][pair.example.task].append(ok)
    return {
        "command": "eval",
        "recipe": args.recipe,
        "profile": zoo.recipe.profile,
        "split": args.split,
        "n": len(pairs),
        "pairwise_accuracy": sum(right) / len(right),
        **{
            name: {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(g.items())}
            for name, g in groups.items()
        },
        "corpus_origin": zoo.corpus_origin,
        "fallback": zoo.fallback,
    }


def chat(args) -> dict:
    """``llmbook chat``: one user message in the chat format, the model's answer(s) out.

    :param args: the parsed command line (``recipe``, ``profile``, ``device``, ``prompt``,
        ``max_new_tokens``, ``num_samples``, ``temperature``, ``top_k``, ``top_p``, ``seed``).
    :returns: the JSON summary with the answers and whether each ended its turn.
    """
    from llmbook.align.evaluate import complete
    from llmbook.zoo import load_or_train

    zoo = load_or_train(args.recipe, args.profile, device=args.device, progress=True)
    fmt = ChatFormat(zoo.tokenizer)
    generator = torch.Generator().manual_seed(args.seed)
    [answers] = complete(
        zoo.model,
        fmt,
        [args.prompt],
        n_samples=args.num_samples,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        generator=generator,
    )
    for i, a in enumerate(answers):
        print(f"--- answer {i} ---\n{a.text}{'' if a.finished else ' [no end of turn]'}")
    return {
        "command": "chat",
        "recipe": args.recipe,
        "profile": zoo.recipe.profile,
        "prompt": args.prompt,
        "answers": [a.text for a in answers],
        "finished": [a.finished for a in answers],
        "seed": args.seed,
    }
