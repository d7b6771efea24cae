"""Benchmarks against reference implementations, measured in one process with interleaved repetitions.

Every comparison here runs its contenders in alternation (:mod:`llmbook.timing`), reports medians, and
states results as ratios measured in the same run. Nothing is compared across processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from llmbook.model.config import ModelConfig
from llmbook.model.counting import flops_per_token
from llmbook.timing import interleaved, matmul_flops, median, synchronize, time_steps_and_peak

NANOGPT_CPU = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
"""nanoGPT's CPU Shakespeare configuration (``config/train_shakespeare_char.py`` CPU notes)."""
NANOGPT_CPU_BATCH = 12
"""Its batch size."""


def gpt2_style(**overrides) -> ModelConfig:
    """nanoGPT's CPU configuration with GPT-2's blocks (LayerNorm, learned positions, GELU, biases, as
    ``GPT2LMHeadModel`` has them).

    :param overrides: fields to change.
    :returns: the config.
    """
    return ModelConfig(**{**NANOGPT_CPU, "bias": True, **overrides})


def llama_style(**overrides) -> ModelConfig:
    """The same shape with Llama's blocks (RMSNorm, RoPE, SwiGLU, untied head, no biases).

    :param overrides: fields to change.
    :returns: the config.
    """
    base = dict(
        NANOGPT_CPU,
        bias=False,
        norm="rmsnorm",
        pos_embedding="rope",
        mlp="swiglu",
        tie_weights=False,
    )
    return ModelConfig(**{**base, **overrides})


def llmbook_train_step(
    config: ModelConfig,
    batch_size: int,
    *,
    precision: str = "float32",
    seed: int = 0,
    compile: bool = False,
) -> Callable[[], float]:
    """One training step of an llmbook model (forward, backward, AdamW), as a closure for timing.

    :param config: the model config.
    :param batch_size: windows per step.
    :param precision: ``"float32"`` or ``"bfloat16"`` (autocast).
    :param seed: seeds weights and the fixed batch.
    :param compile: run the model through :func:`torch.compile` (the first step compiles).
    :returns: a function that runs one step and returns its loss; its ``model`` attribute is the model.
    """
    from llmbook.model.gpt import GPT
    from llmbook.train.loop import autocast
    from llmbook.train.optim import build_optimizer

    torch.manual_seed(seed)
    model = GPT(config)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.1)
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size))
    y = torch.randint(0, config.vocab_size, (batch_size, config.block_size))
    forward = torch.compile(model) if compile else model

    def loss() -> torch.Tensor:
        with autocast(precision, "cpu"):
            return forward(x, y).loss

    return _training_step(model, optimizer, loss)


def hf_train_step(config: ModelConfig, batch_size: int, *, seed: int = 0) -> Callable[[], float]:
    """The same step for the Hugging Face model of the same configuration (built from a config object).

    :param config: the llmbook config; :func:`llmbook.model.hf.hf_config_from` gives the HF one.
    :param batch_size: windows per step.
    :param seed: seeds weights and the fixed batch.
    :returns: a function that runs one step and returns its loss; its ``model`` attribute is the model.
    """
    from llmbook.model.gpt import GPT
    from llmbook.model.hf import to_hf

    torch.manual_seed(seed)
    model = to_hf(GPT(config)).train()
    # the same fused AdamW as llmbook, so that the comparison is of the models
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size))
    return _training_step(model, optimizer, lambda: model(input_ids=x, labels=x).loss)


def _training_step(model, optimizer, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], float]:
    """One step as a closure: the loss, its backward pass, and the optimizer; ``.model`` is kept."""

    def step() -> float:
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step.model = model  # type: ignore[attr-defined]
    return step


def bench_training(
    *, repeats: int = 5, steps: int = 10, batch_size: int = NANOGPT_CPU_BATCH
) -> dict:
    """Training tokens/s of llmbook vs ``transformers`` at nanoGPT's CPU configuration, plus MFU.

    Contenders, each timed for ``steps`` steps per round: llmbook GPT-2-style and Llama-style in fp32,
    the same in bf16 autocast, and HF ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` in fp32. Achieved FLOP/s
    uses :func:`llmbook.model.counting.flops_per_token` and is reported as a share of the matmul peak,
    timed as a :func:`matmul_workload` in the same interleaved rounds.

    :param repeats: interleaved rounds.
    :param steps: training steps per timing.
    :param batch_size: windows per step.
    :returns: tokens/s medians, ratios and MFU shares.

    Introduced in {doc}`/book/appendix/performance`.
    """
    configs = {"gpt2": gpt2_style(), "llama": llama_style()}
    fns = {}
    for style, cfg in configs.items():
        fns[f"llmbook_{style}_fp32"] = llmbook_train_step(cfg, batch_size)
        fns[f"llmbook_{style}_bf16"] = llmbook_train_step(cfg, batch_size, precision="bfloat16")
        fns[f"hf_{style}_fp32"] = hf_train_step(cfg, batch_size)
    for fn in fns.values():  # warm-up: allocator, kernel selection
        fn()
    tokens = batch_size * NANOGPT_CPU["block_size"]
    tps, peak = time_steps_and_peak(fns, tokens_per_step=tokens, repeats=repeats, steps=steps)
    result: dict = {"tokens_per_second": tps, "matmul_peak_flops": peak, "ratios": {}, "mfu": {}}
    for style, cfg in configs.items():
        fpt = flops_per_token(cfg)
        result["ratios"][f"train_{style}_vs_hf"] = (
            tps[f"llmbook_{style}_fp32"] / tps[f"hf_{style}_fp32"]
        )
        result["ratios"][f"train_{style}_bf16_vs_fp32"] = (
            tps[f"llmbook_{style}_bf16"] / tps[f"llmbook_{style}_fp32"]
        )
        result["mfu"][f"{style}_fp32"] = fpt * tps[f"llmbook_{style}_fp32"] / peak["fp32"]
        result["mfu"][f"{style}_bf16"] = fpt * tps[f"llmbook_{style}_bf16"] / peak["bf16"]
    return result


GPT2_124M = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0)
"""GPT-2 small (124M parameters; the vocabulary padded to a multiple of 64 as nanoGPT does)."""

DATASHEET_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
"""Dense bf16 tensor-core peaks from NVIDIA's data sheets (SXM parts), keyed by a name fragment."""


def bench_gpu_mfu(
    *,
    device: str = "cuda",
    config: ModelConfig | None = None,
    batch_size: int = 16,
    steps: int = 20,
    warmup: int = 3,
    compile: bool = True,
) -> dict:
    """Training MFU of a 124M-parameter GPT-2 in bf16 autocast, with :func:`torch.compile` and the
    fused (flash) attention kernel: the GPU target of the Performance appendix.

    MFU is reported twice: against the data-sheet bf16 peak of the device (the usual definition, when
    the device is in :data:`DATASHEET_BF16_FLOPS`) and against a bf16 matmul measured in the same run.
    On a CPU it runs too (with a small ``config``), which is how the tests exercise it.

    :param device: ``"cuda"`` or ``"cpu"``.
    :param config: the model (default: GPT-2 style at :data:`GPT2_124M`, fused attention).
    :param batch_size: sequences per step.
    :param steps: timed steps (after ``warmup`` steps, which include compilation).
    :param warmup: untimed steps first.
    :param compile: compile the model.
    :returns: tokens/s, FLOPs per token, peaks, MFU shares and the device name.

    Introduced in {doc}`/book/appendix/performance`.
    """
    from llmbook.model.counting import count_parameters
    from llmbook.model.gpt import GPT
    from llmbook.train.loop import autocast
    from llmbook.train.optim import build_optimizer

    cfg = config or gpt2_style(**GPT2_124M, attn_impl="fused")
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.1)
    forward = torch.compile(model) if compile else model
    x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size + 1), device=device)

    def step() -> None:
        with autocast("bfloat16", torch.device(device).type):
            _, loss = forward(x[:, :-1], x[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_seconds = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    T = cfg.block_size
    tokens_per_second = batch_size * T / median(times)
    fpt = flops_per_token(cfg, seq_len=T)
    on_cuda = torch.device(device).type == "cuda"
    name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    measured = matmul_flops(torch.bfloat16, n=8192 if on_cuda else 1024, device=device)
    sheet = next((v for k, v in DATASHEET_BF16_FLOPS.items() if k in name), None)
    return {
        "device_name": name,
        "parameters": count_parameters(cfg),
        "batch_size": batch_size,
        "seq_len": T,
        "compiled": compile,
        "warmup_seconds": warmup_seconds,
        "tokens_per_second": tokens_per_second,
        "flops_per_token": fpt,
        "bf16_peak_flops": {"measured_matmul": measured, "datasheet": sheet},
        "mfu": {
            "vs_measured_matmul": fpt * tokens_per_second / measured,
            "vs_datasheet": None if sheet is None else fpt * tokens_per_second / sheet,
        },
    }


def bench_generation(*, repeats: int = 3, new_tokens: int = 256) -> dict:
    """Greedy generation, batch 1, with the KV cache: llmbook ``generate`` vs ``transformers`` ``generate``.

    The model is Llama-style (4 layers, 4 heads, 2 kv heads, width 128, context 512), random weights;
    both produce the same tokens (checked).

    :param repeats: interleaved rounds.
    :param new_tokens: tokens generated per call.
    :returns: tokens/s medians and the ratio.

    Introduced in {doc}`/book/appendix/performance`.
    """
    from llmbook.generate.generation import generate
    from llmbook.model.gpt import GPT
    from llmbook.model.hf import to_hf

    torch.manual_seed(0)
    cfg = llama_style(vocab_size=259, block_size=512, n_kv_head=2)
    model = GPT(cfg).eval()
    hf = to_hf(model).eval()
    prompt = torch.randint(0, 256, (16,)).tolist()
    hf_input = torch.tensor([prompt])

    def ours():
        return generate(model, [prompt], max_new_tokens=new_tokens, temperature=0.0).completions[0]

    def theirs():
        with torch.no_grad():
            out = hf.generate(
                hf_input,
                attention_mask=torch.ones_like(hf_input),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=258,
            )
        return out[0, len(prompt) :].tolist()

    same = ours() == theirs()
    times = interleaved({"llmbook": ours, "hf": theirs}, repeats)
    tps = {name: new_tokens / median(t) for name, t in times.items()}
    return {
        "tokens_per_second": tps,
        "same_tokens": same,
        "ratios": {"generate_vs_hf": tps["llmbook"] / tps["hf"]},
    }


def bench_tokenizer(text: str, *, vocab_size: int = 4096, repeats: int = 3) -> dict:
    """BPE training and encoding: llmbook's from-scratch trainer vs Hugging Face ``tokenizers``.

    :param text: the training text (TinyShakespeare in the book).
    :param vocab_size: the vocabulary to train.
    :param repeats: interleaved rounds.
    :returns: seconds and ratios (reference time / llmbook time: above 1 means llmbook is faster).

    Introduced in {doc}`/book/appendix/performance`.
    """
    from llmbook.tokenizer.bpe import BPETokenizer
    from llmbook.tokenizer.hf import HFTokenizer

    trained = {}

    def ours_train():
        trained["llmbook"] = BPETokenizer.train(text, vocab_size)

    def theirs_train():
        trained["hf"] = HFTokenizer.train(text, vocab_size)

    train_times = interleaved({"llmbook": ours_train, "hf": theirs_train}, repeats)
    ours_tok, hf_tok = trained["llmbook"], trained["hf"]
    encode_times = interleaved(
        {"llmbook": lambda: ours_tok.encode(text), "hf": lambda: hf_tok.encode(text)}, repeats
    )
    n_bytes = len(text.encode("utf-8"))
    return {
        "train_seconds": {k: median(v) for k, v in train_times.items()},
        "encode_bytes_per_second": {k: n_bytes / median(v) for k, v in encode_times.items()},
        "ratios": {
            "bpe_train_vs_hf": median(train_times["hf"]) / median(train_times["llmbook"]),
            "bpe_encode_vs_hf": median(encode_times["hf"]) / median(encode_times["llmbook"]),
        },
    }


def bench_speedrun(target: float = 1.886, *, recipe: str = "shakespeare-speedrun") -> dict:
    """Train the speedrun recipe from scratch and report its training time and validation loss.

    The recipe's schedule ends where the target is reached, so the run's training time (evaluation
    excluded) is the time to the target when its final whole-split validation loss is at or below it.

    :param target: the validation loss to reach (nanoGPT's CPU Shakespeare result).
    :param recipe: the zoo recipe to train (cpu profile).
    :returns: seconds, loss, whether the target was reached, and the config.

    Introduced in {doc}`/book/appendix/performance`.
    """
    import tempfile
    from pathlib import Path

    from llmbook.zoo.registry import load_or_train

    # The zoo's own training path, from scratch, into a throw-away cache.
    with tempfile.TemporaryDirectory() as root:
        zoo = load_or_train(
            recipe, "cpu", device="cpu", root=Path(root), retrain=True, progress=False
        )
    metrics = zoo.meta["metrics"]
    return {
        "recipe": recipe,
        "target": target,
        "val_loss": metrics["val_loss"],
        "train_seconds": metrics["train_seconds"],
        "reached": metrics["val_loss"] <= target,
        "tokens_per_second": metrics["tokens_per_second"],
        "train_config": zoo.recipe.train_config.to_dict(),
    }


def store_bench_results(path, script: str, argv: list[str], record: dict) -> None:
    """Write a benchmark script's results, with its command line and the machine, as JSON.

    :param path: the JSON file (its folder is created).
    :param script: the script's file name under ``bench/``.
    :param argv: the script's arguments.
    :param record: what to store besides the command and the machine.
    """
    import json
    from pathlib import Path

    from llmbook.device import environment_report

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = {
        "command": f"python bench/{script} " + " ".join(argv),
        "machine": environment_report("cpu"),
        **record,
    }
    path.write_text(json.dumps(stored, indent=1) + "\n")
