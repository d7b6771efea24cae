"""``llmbook zoo build``: the plan, the scheduler (dependencies, jobs, failures), the CLI, and the
fixed training threads that make its checkpoints independent of ``--jobs``."""

import json
import threading
import time

import pytest
import torch

from llmbook.cli import main
from llmbook.zoo import build as build_module
from llmbook.zoo.build import build, build_plan, dependencies
from llmbook.zoo.recipes import book_recipes, resolve
from llmbook.zoo.registry import CPU_TRAIN_THREADS, checkpoint_dir, load_or_train


def test_the_plan_closes_over_parents_and_reward_models_in_dependency_order():
    plan = build_plan(["ppo"])
    assert list(plan) == ["shakespeare-modern", "sft", "reward", "ppo"]
    assert plan["ppo"] == ("sft", "reward") and plan["shakespeare-modern"] == ()
    full = build_plan(book_recipes())
    assert set(book_recipes()) <= set(full)
    order = list(full)
    for name, deps in full.items():
        assert all(order.index(d) < order.index(name) for d in deps), name
    assert dependencies("dpo") == ("sft",) and dependencies("lora-sft-r4") == (
        "shakespeare-modern",
    )


def test_an_unknown_recipe_is_named():
    with pytest.raises(ValueError, match="'nope'"):
        build_plan(["sft", "nope"])


class FakeTrainer:
    """Records when each recipe starts and ends; fails the recipes it is told to."""

    def __init__(self, fail=(), seconds=0.02):
        self.fail, self.seconds, self.lock = set(fail), seconds, threading.Lock()
        self.events, self.running, self.most = [], 0, 0

    def __call__(self, recipe, profile):
        with self.lock:
            self.events.append(("start", recipe))
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
            self.events.append(("end", recipe))
        if recipe in self.fail:
            return 1, json.dumps({"error": f"{recipe} broke"}) + "\n", "traceback...\n"
        return (
            0,
            "progress\n"
            + json.dumps({"recipe": recipe, "profile": profile, "trained_now": True})
            + "\n",
            "",
        )


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_each_recipe_starts_after_the_models_it_needs_and_jobs_bound_the_processes(
    jobs, empty_cache
):
    names = ["ppo", "ppo-biased", "grpo", "shakespeare-byte", "shakespeare-bpe"]
    trainer, seen = FakeTrainer(), []
    results = build(names, jobs=jobs, profile="cpu", runner=trainer, on_done=seen.append)
    plan = build_plan(names)
    assert [r.recipe for r in results] == list(plan) and {r.status for r in results} == {"trained"}
    assert sorted(r.recipe for r in seen) == sorted(plan)
    for name, deps in plan.items():
        start = trainer.events.index(("start", name))
        assert all(trainer.events.index(("end", d)) < start for d in deps), name
    assert trainer.most == jobs  # independent recipes (the three bases, the reward models) overlap
    assert all(r.summary["profile"] == "cpu" and r.seconds > 0 for r in results)


def test_a_failure_skips_only_the_recipes_that_need_it(empty_cache):
    trainer = FakeTrainer(fail={"reward-biased"})
    results = {
        r.recipe: r
        for r in build(
            ["ppo", "ppo-biased", "shakespeare-byte"], jobs=2, runner=trainer, profile="cpu"
        )
    }
    assert results["reward-biased"].status == "failed"
    assert results["reward-biased"].summary["error"] == "exit status 1: reward-biased broke"
    assert (
        results["reward-biased"].summary["stderr"] == "traceback..."
    )  # the process's own last lines
    assert (
        results["ppo-biased"].status == "skipped"
        and "reward-biased" in results["ppo-biased"].summary["error"]
    )
    assert ("start", "ppo-biased") not in trainer.events
    assert {
        results[n].status
        for n in ("shakespeare-modern", "sft", "reward", "ppo", "shakespeare-byte")
    } == {"trained"}


def test_cached_checkpoints_are_not_retrained(empty_cache):
    checkpoint_dir(resolve("shakespeare-modern", "cpu")).mkdir(parents=True)
    trainer = FakeTrainer()
    results = {r.recipe: r for r in build(["sft"], runner=trainer, profile="cpu")}
    assert (
        results["shakespeare-modern"].status == "cached"
        and results["shakespeare-modern"].seconds == 0
    )
    assert trainer.events == [("start", "sft"), ("end", "sft")]


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_jobs_must_be_a_positive_integer(jobs, empty_cache):
    with pytest.raises(ValueError, match="jobs"):
        build(["sft"], jobs=jobs, runner=FakeTrainer())


def test_the_command_builds_what_it_is_asked_and_ends_with_json(empty_cache, capsys, monkeypatch):
    trainer = FakeTrainer()
    monkeypatch.setattr(build_module, "train_in_subprocess", trainer)
    assert (
        main(
            [
                "zoo",
                "build",
                "--recipes",
                "sft,shakespeare-byte",
                "--jobs",
                "2",
                "--profile",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert (
        summary["command"] == "zoo build" and summary["jobs"] == 2 and summary["profile"] == "cpu"
    )
    assert (summary["trained"], summary["cached"], summary["failed"], summary["skipped"]) == (
        3,
        0,
        0,
        0,
    )
    assert [r["recipe"] for r in summary["recipes"]] == [
        "shakespeare-modern",
        "sft",
        "shakespeare-byte",
    ]
    assert "llmbook: sft: trained in" in err


def test_the_command_fails_naming_the_recipe(empty_cache, capsys, monkeypatch):
    monkeypatch.setattr(
        build_module, "train_in_subprocess", FakeTrainer(fail={"shakespeare-modern"})
    )
    assert main(["zoo", "build", "--recipes", "sft", "--profile", "cpu", "--no-progress"]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["failed"] == 1 and summary["skipped"] == 1 and summary["type"] == "BuildError"
    assert "shakespeare-modern failed" in summary["error"] and "llmbook: error:" in err


@pytest.mark.parametrize(
    "argv, names",
    [(["--recipes", "sft,nope"], ["--recipes", "nope"]), (["--recipes", " , "], ["--recipes"])],
)
def test_bad_recipes_are_usage_errors_before_anything_trains(
    argv, names, empty_cache, capsys, monkeypatch
):
    trainer = FakeTrainer()
    monkeypatch.setattr(build_module, "train_in_subprocess", trainer)
    assert main(["zoo", "build", *argv, "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert (
        all(n in err for n in names)
        and json.loads(out.strip().splitlines()[-1])["type"] == "UsageError"
    )
    assert trainer.events == []


def test_negative_jobs_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["zoo", "build", "--jobs", "-1"])
    out, err = capsys.readouterr()
    assert (
        exc.value.code == 2
        and "--jobs" in err
        and "error" in json.loads(out.strip().splitlines()[-1])
    )


def test_training_uses_fixed_threads_whatever_the_caller_set(toy_zoo, tmp_path, monkeypatch):
    before = torch.get_num_threads()
    weights = []
    try:
        for i, threads in enumerate((2, 1)):
            monkeypatch.setenv("LLMBOOK_CACHE_DIR", str(tmp_path / f"cache{i}"))
            torch.set_num_threads(threads)
            zoo = load_or_train("toy", "cpu", progress=False)
            assert zoo.trained_now and zoo.meta["metrics"]["torch_threads"] == CPU_TRAIN_THREADS
            assert torch.get_num_threads() == threads  # the caller's setting is back
            weights.append([p.detach().clone() for p in zoo.model.parameters()])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*weights))
