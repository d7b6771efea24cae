"""The benchmark and profiling helpers: timing discipline, kernel choice, accounting."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llmbook import benchmark, profiling, timing
from llmbook.model.counting import count_parameters
from tests.book.chapters import ROOT


def test_interleaved_rotates_the_order_and_times_every_contender_each_round():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.interleaved(fns, repeats=4)
    assert calls == list("abcbcacababc")
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for v in times.values() for t in v)


def test_median():
    assert timing.median([3.0, 1.0, 2.0]) == 2.0
    assert timing.median([4.0, 1.0, 2.0, 3.0]) == 2.5


def test_matmul_workload_sized_by_time_shrinks_a_slow_product(monkeypatch):
    # A fake clock: the first product (n=1024) "takes" 4 s, far over the 0.1 s asked for, so n is
    # halved; at n=512 one product takes 0.01 s, so a call repeats it 10 times.
    ticks = iter([0.0, 4.0, 10.0, 10.01])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(ticks))
    run, flops = timing.matmul_workload(torch.float32, seconds=0.1)
    assert flops == 2.0 * 512**3 * 10
    run()  # the workload itself runs (the clock is not read by it)


def test_matmul_workload_sized_by_time_on_the_real_clock_and_bad_durations():
    run, flops = timing.matmul_workload(torch.bfloat16, seconds=0.05, n=256)
    run()
    assert flops >= 2.0 * 128**3
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="seconds"):
            timing.matmul_workload(seconds=bad)


def test_train_steps_build_the_same_model_for_llmbook_and_transformers():
    # Same config and seed: the two contenders start from identical weights, so they do the same work.
    cfg = benchmark.llama_style(n_layer=1)
    ours = benchmark.llmbook_train_step(cfg, 2)
    theirs = benchmark.hf_train_step(cfg, 2)
    model_ours, model_theirs = ours.model, theirs.model
    assert sum(p.numel() for p in model_ours.parameters()) == count_parameters(cfg)
    assert sum(p.numel() for p in model_theirs.parameters()) == count_parameters(cfg)
    first = model_ours.blocks[0].attn.q_proj.weight
    assert torch.equal(first, model_theirs.model.layers[0].self_attn.q_proj.weight)
    assert ours() > 0 and theirs() > 0


def test_op_categories():
    assert profiling.op_category("aten::mm") == "matmul"
    assert profiling.op_category("aten::addmm") == "matmul"
    assert profiling.op_category("aten::mm_backward") == "other"  # exact names for aten ops
    assert profiling.op_category("aten::_scaled_dot_product_flash_attention_for_cpu") == (
        "attention kernel"
    )
    assert profiling.op_category("aten::_fused_adamw_") == "optimizer"
    assert profiling.op_category("aten::mul") == "other"


def test_time_by_category_adds_up_and_sees_the_matmuls():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    split = profiling.time_by_category(lambda: (a @ b).relu_(), steps=3, warmup=1)
    assert set(split) == {*profiling.OP_CATEGORIES, "other", "total"}
    parts = sum(v for k, v in split.items() if k != "total")
    assert split["total"] == pytest.approx(parts)
    assert split["matmul"] > 0 and split["attention kernel"] == 0 and split["optimizer"] == 0


def test_bench_attention_reports_each_length_and_dtype_with_the_auto_choice():
    r = profiling.bench_attention(lengths=(16,), repeats=1, batch_size=2)
    assert [(row["T"], row["dtype"]) for row in r["rows"]] == [(16, "fp32"), (16, "bf16")]
    # The documented rule: the written-out path for bf16 on the CPU up to 256 keys, fused otherwise.
    assert [row["auto"] for row in r["rows"]] == ["fused", "reference"]
    for row in r["rows"]:
        assert row["fused_ms"] > 0 and row["reference_ms"] > 0
    assert set(r["ratios"]) == {
        "attn_fp32_T16_reference_vs_fused",
        "attn_bf16_T16_reference_vs_fused",
    }


def test_bench_attention_turns_round_times_into_ms_per_call_and_ratios(monkeypatch):
    # Fixed round times in place of the clock: at T=16 each timing runs 256 // 16 = 16 calls, so
    # medians of 4 ms (fused) and 2 ms (reference) are 0.25 and 0.125 ms per call, a ratio of 2.
    def fake_interleaved(fns, repeats):
        return {"fused": [0.004, 0.009, 0.001], "reference": [0.002, 0.001, 0.005]}

    monkeypatch.setattr(profiling, "interleaved", fake_interleaved)
    r = profiling.bench_attention(lengths=(16,), repeats=3, batch_size=2)
    for row in r["rows"]:
        assert row["fused_ms"] == pytest.approx(0.25) and row["reference_ms"] == pytest.approx(
            0.125
        )
    assert r["ratios"]["attn_fp32_T16_reference_vs_fused"] == pytest.approx(2.0)


def _counted_flops_per_token(cfg, batch_size):
    """FLOPs of one training step as torch's FlopCounterMode counts them, per token, and the
    number of parameters of the model it built."""
    from llmbook.model.gpt import GPT
    from llmbook.train.loop import autocast

    model = GPT(cfg)
    x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size + 1))
    # bf16 autocast as the benchmark runs it: on the CPU that takes the written-out attention, whose
    # matmuls the counter sees (it has no formula for the CPU flash kernel).
    with FlopCounterMode(display=False) as counter:
        with autocast("bfloat16", "cpu"):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
    n_params = sum(p.numel() for p in model.parameters())
    return counter.get_total_flops() / (batch_size * cfg.block_size), n_params


def test_gpu_mfu_benchmark_accounts_flops_on_any_device(monkeypatch):
    cfg = benchmark.gpt2_style(n_layer=1, block_size=16)
    # A median step time of 0.25 s for 2 x 16 tokens is 128 tokens/s; a measured peak of 1e9 FLOP/s.
    monkeypatch.setattr(benchmark, "median", lambda times: 0.25)
    monkeypatch.setattr(benchmark, "matmul_flops", lambda *args, **kwargs: 1e9)
    r = benchmark.bench_gpu_mfu(
        device="cpu", config=cfg, batch_size=2, steps=2, warmup=1, compile=False
    )
    assert r["device_name"] == "cpu" and r["bf16_peak_flops"]["datasheet"] is None
    counted, n_params = _counted_flops_per_token(cfg, 2)
    assert r["parameters"] == n_params
    assert r["flops_per_token"] == counted
    assert r["tokens_per_second"] == 128.0
    assert r["mfu"]["vs_measured_matmul"] == pytest.approx(counted * 128.0 / 1e9)
    assert r["mfu"]["vs_datasheet"] is None


def test_gpt2_124m_shape_has_124m_parameters():
    cfg = benchmark.gpt2_style(**benchmark.GPT2_124M)
    assert round(count_parameters(cfg) / 1e6) == 124


def test_bench_script_refuses_an_unknown_stage():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--only", "nonsense"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "unknown stage" in result.stderr and "training" in result.stderr


def test_sft_budget_run_reports_examples_seconds_and_the_target_accuracies():
    import importlib.util

    from llmbook.align.sft import prepare_model
    from llmbook.model import GPT, ModelConfig
    from llmbook.tokenizer import ByteTokenizer

    spec = importlib.util.spec_from_file_location("sft_budget", ROOT / "bench" / "sft_budget.py")
    sft_budget = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sft_budget)
    torch.manual_seed(0)
    base = GPT(
        ModelConfig(
            vocab_size=259, block_size=32, n_layer=1, n_head=2, n_embd=16, pos_embedding="rope"
        )
    )
    model, chat = prepare_model(base, ByteTokenizer(), block_size=64)
    result = sft_budget.run(
        model,
        chat,
        tasks={"add": 1, "count": 1},
        difficulty={"add": [2]},
        steps=2,
        batch_size=4,
        n_eval=3,
    )
    assert result["examples"] == 8 and result["train_seconds"] >= 0
    assert set(result["accuracy"]) == {"add 2", "count"}
    assert all(0.0 <= v <= 1.0 for v in result["accuracy"].values())


@pytest.mark.parametrize(
    "tasks, named",
    [("{add: 1}", "not JSON"), ('{"juggle": 1}', "juggle")],
    ids=["not-json", "unknown-task"],
)
def test_sft_budget_script_refuses_a_bad_mixture_before_training(tasks, named):
    # exit status 2 is argparse's refusal: an error raised while training would exit with 1
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sft_budget.py"), "--tasks", tasks],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and named in result.stderr


def _load_bench(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ppo_seeds_run_reports_gains_per_cell_and_the_kl():
    from tests.align.ppo_fixtures import CHAT, tiny_config, tiny_gpt, tiny_reward_model

    ppo_seeds = _load_bench("ppo_seeds")
    sft, rm = tiny_gpt(0), tiny_reward_model()
    before = [p.detach().clone() for p in sft.parameters()]
    config = tiny_config(prompts={"add": [1], "count": [3]}, eval_examples=6)
    result = ppo_seeds.run(sft, rm, CHAT, config)
    # the SFT model itself is not trained: a copy is
    assert all(p.equal(b) for p, b in zip(sft.parameters(), before))
    assert result["eval_iterations"] == [0, config.iterations]
    assert result["gain"] == round(result["accuracy"][-1] - result["accuracy"][0], 4)
    assert len(result["kl"]) == config.iterations and result["kl_max"] >= result["kl_final"]
    assert set(result["by_cell"]) == {"add 1", "count 3"}
    assert sum(c["n"] for c in result["by_cell"].values()) == 6
    # the per-cell start accuracies are the run's own first evaluation, split by cell
    start = sum(c["start"] * c["n"] for c in result["by_cell"].values()) / 6
    assert abs(start - result["accuracy"][0]) < 1e-3
    summary = ppo_seeds.summarise(
        [{**result, "preset": "recipe"}, {**result, "preset": "recipe", "seed": 1, "gain": 0.5}]
    )
    assert summary["recipe"]["seeds"] == [0, 1] and summary["recipe"]["gain_max"] == 0.5


def test_ppo_seeds_script_refuses_a_negative_seed():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ppo_seeds.py"), "--seeds", "-1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--seeds" in result.stderr


def test_store_bench_results_records_the_command_and_the_machine(tmp_path):
    import json

    path = tmp_path / "sub" / "r.json"
    benchmark.store_bench_results(path, "x.py", ["--seeds", "1"], {"results": [1]})
    stored = json.loads(path.read_text())
    assert stored["command"] == "python bench/x.py --seeds 1" and stored["results"] == [1]
    assert stored["machine"]["device"] == "cpu"


def test_grpo_benchmark_runs_both_sides_on_the_same_work():
    # A tiny model and batch: both sides train for two GRPO steps and time the second.
    grpo_trl = _load_bench("grpo_trl")
    settings = dict(
        model=dict(grpo_trl.MODEL, n_layer=1, n_head=2, n_kv_head=1, n_embd=32),
        prompts={"count": [3]},
        prompts_per_batch=2,
        group_size=2,
        max_new_tokens=4,
        minibatch_size=2,
        updates_per_batch=2,
        warmup=1,
        steps=1,
        rounds=1,
    )
    torch.set_num_threads(1)
    r = grpo_trl.compare(settings)
    assert r["ratio"] == pytest.approx(
        r["llmbook"]["steps_per_second"] / r["trl"]["steps_per_second"]
    )
    assert r["ratio_by_round"] == [pytest.approx(r["ratio"])]
    for side in ("llmbook", "trl"):
        s = r[side]
        split = s["split_seconds_per_step"]
        assert set(split) == {"generate", "score", "update"}
        assert s["steps"] == 1 and s["seconds"] > 0
        assert s["steps_per_second"] == pytest.approx(1 / s["seconds"])
        assert split["generate"] > 0 and split["score"] > 0 and split["update"] > 0
        assert sum(split.values()) == pytest.approx(s["seconds"])
        # 2 groups of 2 completions in minibatches of 2, two passes: 4 optimizer steps; the model
        # never ends a completion early, so each is exactly 4 tokens
        assert s["optimizer_steps"] == 4
        assert s["sampled_tokens"] == 2 * 2 * 4 and s["mean_completion_length"] == 4.0


def test_grpo_benchmark_gives_trl_the_prompt_ids_llmbook_renders():
    from llmbook.align.chat import ChatFormat, chat_tokenizer
    from llmbook.tokenizer import ByteTokenizer

    grpo_trl = _load_bench("grpo_trl")
    chat = ChatFormat(chat_tokenizer(ByteTokenizer()))
    hf = grpo_trl.hf_chat_tokenizer(chat)
    for prompt in ("How many times does a occur in banana?", "héllo ∑ 🙂", ""):
        ids = hf(text=[grpo_trl.prompt_text(prompt)])["input_ids"][0]
        assert ids == chat.prompt_ids(prompt)
    assert (hf.eos_token_id, hf.pad_token_id) == (chat.end_id, 258)
    # what TRL decodes for the reward is what llmbook parses: the answer before <|end|>
    answer = list(b"12") + [chat.end_id]
    assert hf.decode(answer, skip_special_tokens=True) == chat.parse(answer).text == "12"


def test_never_ends_makes_the_end_token_unreachable():
    from llmbook.model.gpt import GPT

    grpo_trl = _load_bench("grpo_trl")
    torch.manual_seed(0)
    model = grpo_trl.never_ends(GPT(benchmark.llama_style(vocab_size=262, n_layer=2)), 261)
    x = torch.randint(0, 262, (4, 32))
    logits = model(x).logits
    # every position puts <|end|> far below every other id
    assert (logits[..., 261] < logits[..., :261].amin(dim=-1) - 50).all()


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_ppo_vs_grpo_run_reads_the_evaluation_at_the_budget(algorithm):
    from tests.align.grpo_fixtures import tiny_grpo
    from tests.align.ppo_fixtures import CHAT, tiny_config, tiny_gpt, tiny_reward_model

    bench = _load_bench("ppo_vs_grpo")
    sft = tiny_gpt(0)
    before = [p.detach().clone() for p in sft.parameters()]
    if algorithm == "ppo":  # 8 completions per iteration, evaluations at 0, 2, 4
        config = tiny_config(iterations=4, eval_interval=2)
        result = bench.run("ppo", config, sft, CHAT, reward_model=tiny_reward_model(), budget=16)
    else:  # 16 completions per iteration
        config = tiny_grpo(iterations=4, eval_interval=2)
        result = bench.run("grpo", config, sft, CHAT, budget=32)
    assert all(p.equal(b) for p, b in zip(sft.parameters(), before))
    assert result["eval_iterations"] == [0, 2, 4]
    assert result["budget"]["iteration"] == 2 and result["budget"]["completions"] in (16, 32)
    assert result["budget"]["gain"] == round(result["accuracy"][1] - result["accuracy"][0], 4)
    assert result["sampled_tokens"][0] == 0 < result["budget"]["sampled_tokens"]
    assert result["sampled_tokens"][1] == result["budget"]["sampled_tokens"]
    assert result["budget"]["seconds"] > 0 and result["state_mb"] > 0
    assert result["peak_rss_mb"] > 0
    with pytest.raises(ValueError, match="budget"):
        bench.run(algorithm, config, sft, CHAT, reward_model=tiny_reward_model(), budget=24)
    summary = bench.summarise([result, {**result, "seed": 1}])
    assert summary[algorithm]["seeds"] == [0, 1]


@pytest.mark.parametrize("flag", ["--budget", "--jobs"])
def test_ppo_vs_grpo_script_refuses_a_bad_budget_or_job_count(flag):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ppo_vs_grpo.py"), flag, "0"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and flag in result.stderr
