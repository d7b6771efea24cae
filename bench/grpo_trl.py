"""GRPO steps per second: llmbook's ``train_grpo`` against TRL's ``GRPOTrainer`` on the same model.

    python bench/grpo_trl.py                 # the full comparison (about a minute on one thread)
    python bench/grpo_trl.py --quick         # a short one (about 10 s)
    python bench/grpo_trl.py --threads 1 --out bench/results/grpo_trl.json

Both sides train the same Llama-style chat model (random weights: llmbook's ``GPT``, and the
``LlamaForCausalLM`` :func:`llmbook.model.hf.to_hf` makes of it) on the same prompts, in the same
order, with the same group size, completion budget, minibatch, passes per batch (TRL's
``num_iterations``), loss, KL coefficient, optimizer settings and reward (the task verifier on the
decoded answer). TRL gets a ``PreTrainedTokenizerFast`` with llmbook's byte ids (checked: the same
prompt ids). One *GRPO step* is one rollout batch (``prompts_per_batch`` groups of ``group_size``
completions) and its ``updates_per_batch * batch / minibatch`` optimizer steps; each side runs
``warmup`` steps untimed, then ``steps`` timed ones, in the same process and thread count.

The model never samples ``<|end|>`` (:func:`never_ends`), so every completion on both sides is
exactly ``max_new_tokens`` long and the two do the same work. Each step's time is split into
generation (sampling), scoring (log-probabilities of the sampled tokens under the reference, and
for TRL also under the sampling policy, which llmbook keeps from sampling; the rewards; the
advantages) and update (the optimizer steps, and whatever else the loop does). What differs and is
left so: each library's own defaults where the two configs have no common knob (TRL's fused AdamW,
its Trainer's per-step bookkeeping, its ``logits_to_keep`` forward).
The table goes to stderr; the last line on stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL = dict(vocab_size=262, block_size=128, n_layer=4, n_head=4, n_kv_head=2, n_embd=128)
"""The ``sft`` recipe's CPU model shape (Llama-style, the chat vocabulary)."""

SETTINGS = {
    "full": dict(
        model=MODEL,
        prompts={"count": [3, 4]},
        prompts_per_batch=8,
        group_size=4,
        max_new_tokens=64,
        minibatch_size=16,
        updates_per_batch=2,
        warmup=1,
        steps=4,
        rounds=4,
    ),
    "quick": dict(
        model=dict(MODEL, n_layer=2),
        prompts={"count": [3, 4]},
        prompts_per_batch=4,
        group_size=4,
        max_new_tokens=16,
        minibatch_size=8,
        updates_per_batch=2,
        warmup=1,
        steps=4,
        rounds=1,
    ),
}
"""The two sizes of the comparison: the model, the GRPO batch shape, the steps timed per run and
the runs per side (see :func:`compare`)."""

GRPO = dict(
    lr=1e-5,
    warmup_steps=0,
    weight_decay=0.0,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,
    clip_low=0.2,
    beta=0.04,
    aggregation="grpo",
    scale_rewards="group",
    temperature=1.0,
    eval_interval=0,
    eval_examples=1,
    seed=0,
)
"""The GRPO settings both sides share (constant learning rate, no dynamic sampling)."""

PHASES = ("generate", "score", "update")
"""The parts a GRPO step's time is split into."""


def never_ends(model, end_id: int, *, channel: int = 0, scale: float = 30.0):
    """Make ``model`` (a Llama-style llmbook ``GPT``) never sample ``end_id``, in place.

    One channel of the residual stream is made constant: every token embeds to 1 there and no
    attention or MLP output writes to it, so after the final RMSNorm it is positive at every
    position; the head row of ``end_id`` reads it with weight ``-scale`` and nothing else, which puts
    that logit far below the others. Training moves these weights only a little in a few steps.

    :param model: the model.
    :param end_id: the id to make unreachable.
    :param channel: the residual channel used.
    :param scale: how far down the logit goes (per unit of the normalised channel).
    :returns: ``model``.
    """
    with torch.no_grad():
        model.tok_emb.weight[:, channel] = 1.0
        for block in model.blocks:
            block.attn.o_proj.weight[channel] = 0.0
            block.mlp.down_proj.weight[channel] = 0.0
        model.lm_head.weight[end_id] = 0.0
        model.lm_head.weight[end_id, channel] = -scale
    return model


def build_models(model: dict, end_id: int, *, seed: int = 0):
    """The policy of both sides: an llmbook ``GPT`` and the same weights as ``LlamaForCausalLM``.

    :param model: :class:`~llmbook.model.config.ModelConfig` fields over the Llama-style defaults.
    :param end_id: the id made unreachable (:func:`never_ends`).
    :param seed: seeds the weights.
    :returns: ``(gpt, hf_model)``.
    """
    from llmbook.benchmark import llama_style
    from llmbook.model.gpt import GPT
    from llmbook.model.hf import to_hf

    torch.manual_seed(seed)
    gpt = never_ends(GPT(llama_style(**model)), end_id)
    return gpt, to_hf(gpt)


def hf_chat_tokenizer(chat):
    """A ``transformers`` tokenizer with the ids of llmbook's byte chat tokenizer.

    Bytes 0-255 are ids 0-255 (a byte-level BPE with no merges), and the specials follow in
    llmbook's order as added tokens. ``eos`` is ``<|end|>`` and ``pad`` is ``<|pad|>``. Unlike llmbook,
    it reads special-token strings inside a text as specials; the benchmark's prompts contain none
    (:func:`trl_dataset` checks the ids).

    :param chat: llmbook's :class:`~llmbook.align.chat.ChatFormat` over a byte tokenizer.
    :returns: a ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from llmbook.tokenizer.bpe import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={byte_chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(chat.tokenizer.specials))
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>"
    )
    for name, token_id in chat.tokenizer.special_ids.items():
        assert hf.convert_tokens_to_ids(name) == token_id, name
    return hf


def prompt_text(prompt: str) -> str:
    """The text of llmbook's :meth:`~llmbook.align.chat.ChatFormat.prompt_ids` for one user turn.

    :param prompt: the user's text.
    :returns: ``<|bos|><|user|>`` prompt ``<|end|><|assistant|>``.
    """
    return f"<|bos|><|user|>{prompt}<|end|><|assistant|>"


def trl_dataset(examples, chat, tokenizer):
    """The examples as TRL's dataset: the rendered prompt and the example's index, in order.

    :param examples: the llmbook examples, in the order the steps use them.
    :param chat: llmbook's chat format.
    :param tokenizer: :func:`hf_chat_tokenizer`.
    :returns: a ``datasets.Dataset`` with the columns ``prompt`` and ``index``.
    :raises AssertionError: when a prompt's ids differ from llmbook's.
    """
    from datasets import Dataset

    texts = [prompt_text(e.prompt) for e in examples]
    for example, ids in zip(examples, tokenizer(text=texts)["input_ids"]):
        assert ids == chat.prompt_ids(example.prompt), example.prompt
    return Dataset.from_dict({"prompt": texts, "index": list(range(len(examples)))})


def llmbook_config(settings: dict, iterations: int):
    """llmbook's :class:`~llmbook.align.grpo_config.GRPOConfig` for the settings.

    :param settings: one of :data:`SETTINGS`.
    :param iterations: GRPO steps.
    :returns: the config.
    """
    from llmbook.align.grpo_config import GRPOConfig

    keys = ("prompts", "prompts_per_batch", "group_size", "max_new_tokens", "minibatch_size")
    return GRPOConfig(
        **GRPO,
        **{k: settings[k] for k in keys},
        updates_per_batch=settings["updates_per_batch"],
        iterations=iterations,
    )


def trl_config(config, output_dir: str):
    """TRL's ``GRPOConfig`` doing what llmbook's ``config`` does.

    One TRL step is one optimizer step over ``per_device_train_batch_size`` completions; a
    generation batch serves ``steps_per_generation * num_iterations`` of them.

    :param config: llmbook's GRPO config.
    :param output_dir: the trainer's (unused) output folder.
    :returns: ``trl.GRPOConfig``.
    """
    from trl import GRPOConfig

    steps_per_generation = config.batch_size // config.minibatch_size
    return GRPOConfig(
        output_dir=output_dir,
        use_cpu=True,
        seed=config.seed,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        disable_dropout=True,
        per_device_train_batch_size=config.minibatch_size,
        steps_per_generation=steps_per_generation,
        gradient_accumulation_steps=1,
        num_generations=config.group_size,
        num_iterations=config.updates_per_batch,
        max_steps=config.iterations * steps_per_generation * config.updates_per_batch,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        top_p=1.0,
        top_k=0,
        learning_rate=config.lr,
        lr_scheduler_type="constant",
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        adam_beta1=config.beta1,
        adam_beta2=config.beta2,
        max_grad_norm=config.grad_clip,
        epsilon=config.clip_low,
        epsilon_high=config.clip_high,
        beta=config.beta,
        use_bias_correction_kl=config.kl_ratio_correction,
        loss_type=config.aggregation,
        scale_rewards=config.scale_rewards,
        shuffle_dataset=False,
        use_vllm=False,
        report_to=[],
        logging_steps=10**9,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _timed(step_seconds, generate, score, optimizer_steps: int, tokens: int, completions: int):
    """One side's record of its timed steps: per step, the wall time and the generation and scoring
    seconds (the update is the rest); in all, the optimizer steps, tokens sampled and completions."""
    step_seconds, generate, score = list(step_seconds), list(generate), list(score)
    assert len(step_seconds) == len(generate) == len(score)
    return {
        "step_seconds": step_seconds,
        "generate": generate,
        "score": score,
        "update": [t - g - s for t, g, s in zip(step_seconds, generate, score)],
        "optimizer_steps": optimizer_steps,
        "sampled_tokens": tokens,
        "completions": completions,
    }


def summarise(records: list[dict]) -> dict:
    """Pool the timed steps of one side's runs.

    :param records: what :func:`run_llmbook` or :func:`run_trl` returned, one per round.
    :returns: ``steps``, ``seconds`` (all timed steps), ``steps_per_second``,
        ``median_step_seconds``, ``split_seconds_per_step`` (mean ``generate``, ``score`` and
        ``update`` seconds), ``optimizer_steps``, ``sampled_tokens`` and ``mean_completion_length``.
    """
    steps = [t for r in records for t in r["step_seconds"]]
    total = sum(steps)
    tokens = sum(r["sampled_tokens"] for r in records)
    return {
        "steps": len(steps),
        "seconds": total,
        "steps_per_second": len(steps) / total,
        "median_step_seconds": statistics.median(steps),
        "split_seconds_per_step": {
            k: sum(t for r in records for t in r[k]) / len(steps) for k in PHASES
        },
        "optimizer_steps": sum(r["optimizer_steps"] for r in records),
        "sampled_tokens": tokens,
        "mean_completion_length": tokens / sum(r["completions"] for r in records),
    }


def _instrument(trainer, group_size: int) -> dict:
    """Time a ``GRPOTrainer``'s generation and its generation-and-scoring, per call, on the instance.

    :param trainer: the trainer (its two methods are wrapped in place).
    :param group_size: completions per prompt (each prompt comes ``group_size`` times in a row).
    :returns: lists filled as the trainer runs: ``generate`` and ``generate_and_score`` seconds per
        rollout batch, ``lengths`` per completion and ``prompts`` (one per group).
    """
    spent: dict[str, list] = {
        "generate": [],
        "generate_and_score": [],
        "lengths": [],
        "prompts": [],
    }
    generate, generate_and_score = trainer._generate, trainer._generate_and_score_completions

    def timed_generate(prompts):
        t0 = time.perf_counter()
        out = generate(prompts)
        spent["generate"].append(time.perf_counter() - t0)
        spent["lengths"].extend(len(ids) for ids in out[1])  # out[1]: the completion ids
        spent["prompts"].extend(prompts[::group_size])
        return out

    def timed_generate_and_score(inputs):
        t0 = time.perf_counter()
        out = generate_and_score(inputs)
        spent["generate_and_score"].append(time.perf_counter() - t0)
        return out

    trainer._generate = timed_generate
    trainer._generate_and_score_completions = timed_generate_and_score
    return spent


def run_trl(hf_model, chat, examples, config, *, warmup: int) -> dict:
    """Train ``hf_model`` with TRL's ``GRPOTrainer`` for ``config.iterations`` steps; time the last ones.

    :param hf_model: the ``LlamaForCausalLM`` (trained in place; the reference is a copy TRL loads).
    :param chat: llmbook's chat format (the ids TRL's tokenizer must reproduce).
    :param examples: ``config.iterations * config.prompts_per_batch`` examples, in step order.
    :param config: llmbook's GRPO config (:func:`trl_config` translates it).
    :param warmup: the first steps, left out of the timings.
    :returns: the record of the timed steps (see :func:`summarise`).
    """
    from transformers import PrinterCallback, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOTrainer

    from llmbook.tasks.base import verify

    tokenizer = hf_chat_tokenizer(chat)
    dataset = trl_dataset(examples, chat, tokenizer)

    def verifier(completions, index, **kwargs):
        return [verify(examples[i], text) for i, text in zip(index, completions)]

    per_step = (config.batch_size // config.minibatch_size) * config.updates_per_batch
    ends: list[tuple[float, int]] = []  # (time, optimizer steps so far) at the end of each step

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % per_step == 0:  # the end of a GRPO step
                ends.append((time.perf_counter(), state.global_step))

    # The model's special ids are the tokenizer's (else TRL rewrites them, with a warning).
    for cfg in (hf_model.config, hf_model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with (
            tempfile.TemporaryDirectory() as folder,
            contextlib.redirect_stdout(sys.stderr),
            warnings.catch_warnings(),
        ):
            # transformers' deprecation notices about its own argument names are not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            # TRL builds its reference model by loading the policy's checkpoint by name.
            hf_model.save_pretrained(folder)
            hf_model.config._name_or_path = folder
            trainer = GRPOTrainer(
                model=hf_model,
                reward_funcs=verifier,
                args=trl_config(config, folder),
                train_dataset=dataset,
                processing_class=tokenizer,
                callbacks=[StepClock()],
            )
            trainer.remove_callback(PrinterCallback)  # the run's metrics, printed at the end
            spent = _instrument(trainer, config.group_size)
            t_start = time.perf_counter()
            trainer.train()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    assert len(ends) == config.iterations and len(spent["generate"]) == config.iterations
    assert spent["prompts"] == dataset["prompt"], "TRL sampled other prompts"
    times = [t_start] + [t for t, _ in ends]
    generate = spent["generate"][warmup:]
    both = spent["generate_and_score"][warmup:]
    timed_lengths = spent["lengths"][warmup * config.batch_size :]
    return _timed(
        [b - a for a, b in zip(times, times[1:])][warmup:],
        generate,
        [b - g for b, g in zip(both, generate)],
        ends[-1][1] - (ends[warmup - 1][1] if warmup else 0),
        sum(timed_lengths),
        len(timed_lengths),
    )


def step_examples(config) -> list:
    """The prompts llmbook's ``train_grpo`` draws, step after step (its seeding, repeated here).

    :param config: llmbook's GRPO config.
    :returns: ``config.iterations * config.prompts_per_batch`` examples.
    """
    from llmbook.align.ppo import ppo_examples

    examples = []
    for it in range(config.iterations):
        seed = config.seed * 100_003 + it
        examples += ppo_examples(config, config.prompts_per_batch, split="train", seed=seed)
    return examples


class _StepClock:
    """A ``train_grpo`` logger that notes when each iteration ends (its ``grpo/`` scalars arrive)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def log_scalars(self, step: int, scalars: dict) -> None:
        if any(key.startswith("grpo/") for key in scalars):
            self.ends.append(time.perf_counter())

    def flush(self) -> None:
        pass


def run_llmbook(policy, chat, examples, config, *, warmup: int) -> dict:
    """Train ``policy`` with llmbook's ``train_grpo`` for ``config.iterations`` steps; time the last ones.

    The prompts it samples and its optimizer steps are recorded on the way (by wrapping the loop's
    ``sample_groups`` and ``_update``), so that they can be checked against TRL's.

    :param policy: the llmbook ``GPT`` (trained in place; the reference is a frozen copy).
    :param chat: the chat format.
    :param examples: the examples TRL gets, in order (checked against what llmbook samples).
    :param config: llmbook's GRPO config.
    :param warmup: the first steps, left out of the timings.
    :returns: the record of the timed steps (see :func:`summarise`).
    :raises AssertionError: when llmbook sampled other prompts than ``examples``.
    """
    import llmbook.align.grpo as grpo
    from llmbook.align.policy import reference_model

    reference = reference_model(policy)
    prompts: list[str] = []
    steps_per_iteration: list[int] = []
    sample_groups, update = grpo.sample_groups, grpo._update

    def recorded_sample_groups(policy, reference, chat, examples, **kwargs):
        prompts.extend(e.prompt for e in examples)
        return sample_groups(policy, reference, chat, examples, **kwargs)

    def recorded_update(*args):
        metrics, step = update(*args)
        steps_per_iteration.append(step - args[6])
        return metrics, step

    clock = _StepClock()
    grpo.sample_groups, grpo._update = recorded_sample_groups, recorded_update
    try:
        t_start = time.perf_counter()
        history = grpo.train_grpo(policy, reference, chat, config, logger=clock, progress=False)
    finally:
        grpo.sample_groups, grpo._update = sample_groups, update
    assert prompts == [e.prompt for e in examples], "llmbook sampled other prompts"
    assert len(clock.ends) == config.iterations
    starts = [t_start, *clock.ends[:-1]]
    train = history.train
    return _timed(
        [e - s for s, e in zip(starts, clock.ends)][warmup:],
        train["generate_seconds"][warmup:],
        train["score_seconds"][warmup:],
        sum(steps_per_iteration[warmup:]),
        int(sum(train["sampled_tokens"][warmup:])),
        (config.iterations - warmup) * config.batch_size,
    )


def compare(settings: dict) -> dict:
    """Run both sides on one of :data:`SETTINGS` (or a dict with the same keys).

    Each round builds the models afresh (same seed, same weights) and runs both sides, alternating
    which goes first (llmbook, TRL, then TRL, llmbook, ...), so a change in the machine's load
    during the run does not favour one side.

    :param settings: the model, the GRPO batch shape, ``warmup``, ``steps`` and ``rounds``.
    :returns: ``llmbook`` and ``trl`` (each :func:`summarise` over its rounds), ``ratio`` (llmbook's
        steps/s over TRL's, all timed steps pooled: above 1, llmbook is faster), ``ratio_by_round``,
        ``settings`` and ``grpo`` (the llmbook config).
    """
    from llmbook.align.chat import ChatFormat, chat_tokenizer
    from llmbook.tokenizer import ByteTokenizer

    chat = ChatFormat(chat_tokenizer(ByteTokenizer()))
    warmup, steps = settings["warmup"], settings["steps"]
    config = llmbook_config(settings, warmup + steps)
    examples = step_examples(config)
    records: dict[str, list[dict]] = {"llmbook": [], "trl": []}
    for round_ in range(settings["rounds"]):
        gpt, hf_model = build_models(settings["model"], chat.end_id, seed=config.seed)
        for name in ("llmbook", "trl") if round_ % 2 == 0 else ("trl", "llmbook"):
            if name == "llmbook":
                records[name].append(run_llmbook(gpt, chat, examples, config, warmup=warmup))
            else:
                records[name].append(run_trl(hf_model, chat, examples, config, warmup=warmup))
    ours, theirs = summarise(records["llmbook"]), summarise(records["trl"])
    return {
        "llmbook": ours,
        "trl": theirs,
        "ratio": ours["steps_per_second"] / theirs["steps_per_second"],
        "ratio_by_round": [
            sum(t["step_seconds"]) / sum(o["step_seconds"])
            for o, t in zip(records["llmbook"], records["trl"])
        ],
        "settings": settings,
        "grpo": config.to_dict(),
    }


def bench_grpo(*, quick: bool = False, threads: int | None = None) -> dict:
    """GRPO steps/s of llmbook and TRL on CPU, with each step's time split (see the module).

    :param quick: the small setting of :data:`SETTINGS` (under a minute on two cores).
    :param threads: torch threads for both sides (None: as set); restored afterwards.
    :returns: :func:`compare`'s result, plus ``threads`` and ``ratios`` (``grpo_vs_trl``).
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = compare(SETTINGS["quick" if quick else "full"])
        result["threads"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    result["ratios"] = {"grpo_vs_trl": result["ratio"]}
    return result


def table(result: dict) -> str:
    """The comparison as a small text table.

    :param result: what :func:`bench_grpo` returned.
    :returns: the table, one line per side.
    """
    s = result["settings"]
    lines = [
        f"GRPO, {s['prompts_per_batch']} prompts x {s['group_size']} completions of "
        f"{s['max_new_tokens']} tokens, {s['updates_per_batch']} passes in minibatches of "
        f"{s['minibatch_size']}; {s['rounds']} run(s) per side of {s['steps']} steps timed after "
        f"{s['warmup']}, {result['threads']} thread(s)",
        f"{'':8} {'steps/s':>8} {'generate':>9} {'score':>7} {'update':>7} {'opt':>4} "
        f"{'tokens':>7} {'len':>5}   (seconds per step)",
    ]
    for name in ("llmbook", "trl"):
        r = result[name]
        split = r["split_seconds_per_step"]
        lines.append(
            f"{name:8} {r['steps_per_second']:8.3f} {split['generate']:9.3f} "
            f"{split['score']:7.3f} {split['update']:7.3f} {r['optimizer_steps']:4d} "
            f"{r['sampled_tokens']:7d} {r['mean_completion_length']:5.1f}"
        )
    by_round = ", ".join(f"{r:.2f}" for r in result["ratio_by_round"])
    lines.append(f"llmbook / TRL: {result['ratio']:.2f}x (by run: {by_round})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small setting (under a minute)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--out", type=Path, help="also write the results and the machine to this JSON file"
    )
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: must be >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)  # for the whole run, so the stored machine shows it
    result = bench_grpo(quick=args.quick)
    print(table(result), file=sys.stderr)
    summary = {
        "mode": "quick" if args.quick else "full",
        "threads": result["threads"],
        "steps_per_second": {
            k: round(result[k]["steps_per_second"], 4) for k in ("llmbook", "trl")
        },
        "grpo_vs_trl": round(result["ratio"], 4),
    }
    if args.out:
        from llmbook.benchmark import store_bench_results

        store_bench_results(args.out, "grpo_trl.py", argv or sys.argv[1:], result)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
