"""Evaluation against gold: oracles score exactly, pass@k matches enumeration, draws are balanced."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import pytest
import torch
from torch import nn

from llmbook.align.chat import ChatFormat, chat_tokenizer
from llmbook.align.evaluate import (
    TaskEval,
    complete,
    default_max_new_tokens,
    evaluate_tasks,
    task_examples,
)
from llmbook.align.vocab import grow_vocab
from llmbook.model import GPT, ModelConfig
from llmbook.model.gpt import GPTOutput
from llmbook.tasks import FAILURE_KINDS, TASKS, Example, generate_examples, split_of
from llmbook.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(chat_tokenizer(ByteTokenizer()))


@pytest.fixture(scope="module")
def tiny_gpt(chat):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=259, block_size=128, n_layer=2, n_head=4, n_embd=32, pos_embedding="rope"
    )
    model = GPT(cfg)
    return grow_vocab(model, chat.tokenizer.vocab_size)


class Oracle(nn.Module):
    """Emits a fixed answer (then ``<|end|>``) to each known prompt, whatever the padding or cache.

    It keeps its own copy of each row's ids, since with a KV cache ``generate`` passes only the
    newest token after the first step.
    """

    def __init__(self, chat, examples, answer_of, *, stop=True):
        super().__init__()
        self.config = ModelConfig(vocab_size=chat.tokenizer.vocab_size, block_size=256, n_embd=8)
        self.weight = nn.Parameter(torch.zeros(1))  # generate reads the device and dtype from it
        self.chat, self.stop = chat, stop
        self.table = {
            tuple(chat.prompt_ids(ex.prompt)): chat.tokenizer.encode(answer_of(ex))
            for ex in examples
        }
        self.history, self.cache, self.calls = None, None, 0

    def forward(self, idx, targets=None, *, attention_mask=None, positions=None, cache=None):
        self.calls += 1
        if cache is not None and cache is self.cache:
            self.history = torch.cat([self.history, idx], dim=1)
        else:
            self.history, self.cache = idx, cache
        B, T = idx.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        for b, row in enumerate(self.history.tolist()):
            start = row.index(self.chat.bos_id)
            cut = len(row) - row[::-1].index(self.chat.assistant_id)
            target = self.table[tuple(row[start:cut])]
            done = len(row) - cut
            if done < len(target):
                nxt = target[done]
            else:
                nxt = self.chat.end_id if self.stop else target[-1]
            logits[b, -1, nxt] = 10.0
        return GPTOutput(logits)


def _examples(tasks, n=4, difficulty=None, seed=0):
    return generate_examples(
        tasks, n, split="test", seed=seed, difficulty=difficulty, distinct=True
    )


# ---- oracles: the scores are known without a model --------------------------------------------


@pytest.mark.parametrize("use_cache", [True, False])
def test_gold_oracle_scores_one(chat, use_cache):
    examples = task_examples(["add", "reverse", "count"], 2)
    oracle = Oracle(chat, examples, lambda ex: ex.answer)
    ev = evaluate_tasks(oracle, chat, examples, batch_size=5, use_cache=use_cache)
    assert len(ev.records) == len(examples)
    assert all(r["kind"] == "correct" and r["finished"] for r in ev.records)
    assert [r["completion"] for r in ev.records] == [ex.answer for ex in examples]
    assert ev.accuracy() == [
        {"task": t, "accuracy": 1.0, "n": 2 * len(TASKS[t].difficulties)}
        for t in ("add", "count", "reverse")
    ]
    assert ev.overall() == 1.0
    assert ev.failures() == {}
    data = json.loads(json.dumps(ev.to_json()))
    assert set(data) == {"add", "reverse", "count"}
    assert data["add"] == {"accuracy": 1.0, "n": 6, "by_difficulty": {"1": 1.0, "2": 1.0, "3": 1.0}}


def test_off_by_one_oracle_scores_zero(chat):
    examples = _examples(["add"], 6, difficulty=2)
    oracle = Oracle(chat, examples, lambda ex: str(int(ex.answer) + 1))
    ev = evaluate_tasks(oracle, chat, examples)
    assert ev.accuracy() == [{"task": "add", "accuracy": 0.0, "n": 6}]
    assert {r["kind"] for r in ev.records} == {"off_by_one"}
    failures = ev.failures(n_examples=2)
    assert list(failures) == ["off_by_one"]
    assert failures["off_by_one"]["count"] == 6 and failures["off_by_one"]["rate"] == 1.0
    assert [r["index"] for r in failures["off_by_one"]["examples"]] == [0, 1]


def test_wrong_digit_and_truncated_oracles(chat):
    # Changing the leading digit of a 2-3 digit sum keeps its length and moves it by >= 10.
    examples = _examples(["add"], 6, difficulty=2)
    lead = {str(d): str(d % 9 + 1) for d in range(1, 10)}
    ev = evaluate_tasks(
        chat=chat,
        examples=examples,
        model=Oracle(chat, examples, lambda ex: lead[ex.answer[0]] + ex.answer[1:]),
    )
    assert {r["kind"] for r in ev.records} == {"wrong_digit"}
    assert ev.accuracy()[0]["accuracy"] == 0.0
    ev = evaluate_tasks(Oracle(chat, examples, lambda ex: ex.answer[:-1]), chat, examples)
    assert {r["kind"] for r in ev.records} == {"truncated"}


def test_mixed_oracle_accuracy_by_difficulty(chat):
    # Right on even example indices only: the expected table is counted from the draw itself.
    examples = task_examples(["add", "compare"], 3)
    right = {ex.prompt: i % 2 == 0 for i, ex in enumerate(examples)}
    oracle = Oracle(chat, examples, lambda ex: ex.answer if right[ex.prompt] else "x")
    ev = evaluate_tasks(oracle, chat, examples)
    expected = {}
    for i, ex in enumerate(examples):
        hits, n = expected.get((ex.task, ex.difficulty), (0, 0))
        expected[(ex.task, ex.difficulty)] = (hits + (i % 2 == 0), n + 1)
    rows = ev.accuracy(by=("task", "difficulty"))
    assert [(r["task"], r["difficulty"]) for r in rows] == sorted(expected)
    for r in rows:
        hits, n = expected[(r["task"], r["difficulty"])]
        assert (r["accuracy"], r["n"]) == (hits / n, n)
    assert ev.accuracy(by=())[0]["accuracy"] == sum(h for h, _ in expected.values()) / len(examples)
    assert ev.failures()["format"]["count"] == sum(1 for i in range(len(examples)) if i % 2)


def test_rambling_oracle_is_cut_at_the_budget(chat):
    examples = [
        Example("add", (40, 45), 2, "What is 40 plus 45?", "85", 0),
        Example("add", (60, 63), 2, "What is 60 plus 63?", "123", 0),
    ]
    # Two and three bytes: the longest answer, its <|end|>, and the margin.
    assert default_max_new_tokens(chat, examples) == 3 + 1 + 4
    assert default_max_new_tokens(chat, examples, margin=0) == 4
    ev = evaluate_tasks(Oracle(chat, examples, lambda ex: ex.answer, stop=False), chat, examples)
    assert [r["completion"] for r in ev.records] == ["85555555", "12333333"]
    assert all(not r["finished"] and r["n_tokens"] == 8 and r["reward"] == 0.0 for r in ev.records)


def test_greedy_samples_are_generated_once(chat):
    examples = _examples(["reverse"], 3)
    oracle = Oracle(chat, examples, lambda ex: ex.answer)
    out = complete(oracle, chat, [ex.prompt for ex in examples], n_samples=4, max_new_tokens=12)
    assert [len(row) for row in out] == [4, 4, 4]
    assert all(len(set(row)) == 1 for row in out)
    assert oracle.calls <= 12  # one batch of 3 rows, at most one call per token
    ev = evaluate_tasks(oracle, chat, examples, n_samples=4)
    assert len(ev.records) == 12
    assert ev.pass_at_k(4) == [{"task": "reverse", "pass@4": 1.0, "n": 3}]


# ---- pass@k on records: against enumeration of k-subsets ---------------------------------------


def _brute_pass_at_k(rewards, k):
    subsets = list(itertools.combinations(rewards, k))
    return sum(any(r == 1.0 for r in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("seed", range(4))
def test_pass_at_k_matches_enumeration(seed):
    rng = random.Random(seed)
    n_samples = rng.randint(3, 7)
    records, per_task = [], {}
    for index in range(12):
        task = rng.choice(["add", "reverse"])
        p = rng.random()
        rewards = [float(rng.random() < p) for _ in range(n_samples)]
        per_task.setdefault(task, []).append(rewards)
        for s, r in enumerate(rewards):
            kind = "correct" if r else "wrong"
            records.append(
                {
                    "index": index,
                    "sample": s,
                    "task": task,
                    "difficulty": 1,
                    "reward": r,
                    "kind": kind,
                }
            )
    ev = TaskEval(records)
    for k in range(1, n_samples + 1):
        rows = ev.pass_at_k(k)
        assert [r["task"] for r in rows] == sorted(per_task)
        for row in rows:
            brute = [_brute_pass_at_k(rw, k) for rw in per_task[row["task"]]]
            assert row["n"] == len(brute)
            assert row[f"pass@{k}"] == pytest.approx(sum(brute) / len(brute), abs=1e-12)
    everything = [r["reward"] for r in records]
    assert ev.pass_at_k(1, by=())[0]["pass@1"] == pytest.approx(sum(everything) / len(everything))
    assert ev.overall() == pytest.approx(sum(everything) / len(everything))
    with pytest.raises(ValueError, match="^k: "):
        ev.pass_at_k(n_samples + 1)


# ---- a real (random) model ----------------------------------------------------------------------


def test_random_gpt_never_crashes_and_restores_mode(chat, tiny_gpt):
    examples = task_examples(["add", "reverse", "lookup"], 2)
    tiny_gpt.train()
    ev = evaluate_tasks(tiny_gpt, chat, examples, batch_size=4)
    assert tiny_gpt.training
    assert len(ev.records) == len(examples)
    for row in ev.accuracy(by=("task", "difficulty")):
        assert 0.0 <= row["accuracy"] <= 1.0
    assert all(r["kind"] in FAILURE_KINDS and r["reward"] in (0.0, 1.0) for r in ev.records)
    no_cache = evaluate_tasks(tiny_gpt, chat, examples, batch_size=4, use_cache=False)
    assert [r["completion"] for r in no_cache.records] == [r["completion"] for r in ev.records]
    json.dumps(ev.to_json())


def test_sampled_evaluation_is_reproducible(chat, tiny_gpt):
    examples = _examples(["add", "reverse"], 4)
    kw = dict(n_samples=3, temperature=1.0, max_new_tokens=6)
    a = evaluate_tasks(tiny_gpt, chat, examples, seed=0, **kw)
    b = evaluate_tasks(tiny_gpt, chat, examples, seed=0, **kw)
    c = evaluate_tasks(tiny_gpt, chat, examples, seed=1, **kw)
    texts = [[r["completion"] for r in ev.records] for ev in (a, b, c)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]
    assert len(set(texts[0])) > len(examples)  # the samples of one example differ
    assert [(r["index"], r["sample"]) for r in a.records] == [
        (i, s) for i in range(len(examples)) for s in range(3)
    ]
    for row in a.pass_at_k(3):
        assert 0.0 <= row["pass@3"] <= 1.0


# ---- the evaluation set --------------------------------------------------------------------------


def test_task_examples_are_balanced_and_in_split():
    tasks = ["add", "reverse", "lookup"]
    examples = task_examples(tasks, 5, split="val", seed=3)
    cells = Counter((ex.task, ex.difficulty) for ex in examples)
    assert cells == {(t, d): 5 for t in tasks for d in TASKS[t].difficulties}
    assert all(split_of(ex.task, ex.problem, ex.phrasing) == "val" for ex in examples)
    big = [ex for ex in examples if ex.task == "reverse"]
    assert len({ex.problem for ex in big}) == len(big)
    assert task_examples(tasks, 5, split="val", seed=3) == examples
    # Each cell has its own stream: dropping a task leaves the others' draws alone.
    assert task_examples(["reverse"], 5, split="val", seed=3) == big


def test_small_cells_repeat_every_problem_evenly():
    # One-digit addition has fewer distinct test problems than 40.
    examples = task_examples(["add"], 40)
    small = [ex for ex in examples if ex.difficulty == 1]
    assert len(small) == 40
    counts = Counter(ex.problem for ex in small)
    assert 1 < len(counts) < 40
    assert max(counts.values()) - min(counts.values()) <= 1
    assert all(split_of("add", ex.problem) == "test" for ex in small)


def test_ood_and_all_levels():
    ood = task_examples(["add", "lookup"], 2, difficulties="ood")
    assert Counter((ex.task, ex.difficulty) for ex in ood) == {("add", 4): 2, ("add", 5): 2}
    every = task_examples(["mul"], 1, difficulties="all")
    assert [ex.difficulty for ex in every] == [1, 2, 3]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: task_examples(["nope"], 2), "tasks"),
        (lambda: task_examples("add", 2), "tasks"),
        (lambda: task_examples(["add"], 0), "n_per_cell"),
        (lambda: task_examples(["add"], 2, split="dev"), "split"),
        (lambda: task_examples(["add"], 2, difficulties="hard"), "difficulties"),
        (lambda: TaskEval([{"index": 0}]), "records"),
        (lambda: TaskEval([]).accuracy(by=("task", 3)), "by"),
    ],
)
def test_errors_name_the_field(call, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        call()


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"batch_size": True}, "batch_size"),
        ({"temperature": -1.0}, "temperature"),
    ],
)
def test_generation_errors_name_the_field(chat, tiny_gpt, kw, field):
    examples = _examples(["add"], 1)
    with pytest.raises(ValueError, match=f"^{field}: "):
        evaluate_tasks(tiny_gpt, chat, examples, **kw)


def test_evaluate_refuses_bad_examples(chat, tiny_gpt):
    with pytest.raises(ValueError, match="^examples: "):
        evaluate_tasks(tiny_gpt, chat, [])
    with pytest.raises(ValueError, match="^examples: "):
        evaluate_tasks(tiny_gpt, chat, ["What is 1 plus 1?"])
    ev = TaskEval(
        [{"index": 0, "sample": 0, "task": "add", "difficulty": 1, "reward": 0.0, "kind": "wrong"}]
    )
    with pytest.raises(ValueError, match="^by: "):
        ev.accuracy(by=("colour",))
