r"""Evaluation against gold: generate answers to held-out task problems and score them exactly.

A fine-tuned model answers each problem of a held-out set in the chat format; the verifier of the
task (:func:`~llmbook.tasks.verify`) compares the answer with the gold one. For a set $S$ of
problems with completions $\hat y_i$ and gold answers $y_i$, the *exact-match accuracy* is

$$ \mathrm{EM}(S) = \frac{1}{|S|} \sum_{i \in S} \mathbb 1\left[\operatorname{canon}(\hat y_i)
   = \operatorname{canon}(y_i)\right], $$

where $\operatorname{canon}$ is the task's canonical form (surrounding whitespace, a trailing period
and allowed formats such as ``1,234`` do not count; anything else does). It is reported per task and
per difficulty, greedy (temperature 0), and sampled as pass@k (:mod:`llmbook.align.passk`), with the
failures grouped by kind (:func:`~llmbook.tasks.classify_failure`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llmbook.align.chat import ChatFormat, ParsedCompletion
from llmbook.align.passk import pass_at_k_many
from llmbook.generate import check_sampling, generate
from llmbook.tasks.base import Example, classify_failure, verify
from llmbook.tasks.splits import task_examples

__all__ = [
    "ANSWER_MARGIN",
    "RECORD_KEYS",
    "TaskEval",
    "complete",
    "default_max_new_tokens",
    "evaluate_tasks",
    "task_examples",
]

ANSWER_MARGIN = 4
"""Tokens granted beyond the longest gold answer and its ``<|end|>`` when no budget is given."""
RECORD_KEYS = ("index", "sample", "task", "difficulty", "reward", "kind")
"""The keys every record of a :class:`TaskEval` must have."""


def _check_count(name: str, value, minimum: int) -> int:
    # bool is an int subclass; True as a count is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def complete(
    model: nn.Module,
    chat: ChatFormat,
    prompts: Sequence[str],
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    n_samples: int = 1,
    max_new_tokens: int = 24,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> list[list[ParsedCompletion]]:
    """Answer each prompt as the assistant, ``n_samples`` times, and parse the answers.

    Each prompt is rendered with :meth:`~llmbook.align.chat.ChatFormat.prompt_ids` and the rows are
    generated in batches by :func:`~llmbook.generate.generate` (left-padded, KV-cached, stopping at
    ``<|end|>``). Rows are sorted by prompt length first so that a batch pads little; the order is
    fixed, so a seeded ``generator`` gives the same samples on every call. At temperature 0 decoding is
    greedy and every sample of a prompt is the same: it is generated once and repeated. The model's
    train/eval mode is restored afterwards.

    :param model: the language model (its vocabulary must cover the chat tokenizer's).
    :param chat: the chat format the model was fine-tuned with.
    :param prompts: the user texts.
    :param temperature: sampling temperature; 0 is greedy.
    :param top_k: top-k filter (None: off).
    :param top_p: nucleus filter (None: off).
    :param n_samples: completions per prompt.
    :param max_new_tokens: the generation budget per completion, ``<|end|>`` included.
    :param batch_size: rows per call of the model.
    :param generator: random generator for reproducible sampling (on the model's device).
    :param use_cache: use a KV cache when prompt and answer fit the context window.
    :returns: per prompt, its ``n_samples`` :class:`~llmbook.align.chat.ParsedCompletion`.
    :raises ValueError: naming ``prompts``, ``n_samples``, ``max_new_tokens``, ``batch_size`` or the
        sampling setting that is invalid.

    Introduced in {doc}`/book/part6/06-evaluation`.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts: expected a sequence of strings")
    n_samples = _check_count("n_samples", n_samples, 1)
    max_new_tokens = _check_count("max_new_tokens", max_new_tokens, 1)
    batch_size = _check_count("batch_size", batch_size, 1)
    check_sampling(temperature, top_k, top_p)
    try:
        pad_id = chat.tokenizer.pad_id
    except ValueError:
        pad_id = chat.end_id  # any id will do: padding is masked and never attended to
    ids = [chat.prompt_ids(p) for p in prompts]
    draws = 1 if temperature == 0 else n_samples
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    jobs = [(i, s) for i in order for s in range(draws)]
    results: list[list] = [[None] * draws for _ in ids]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        out = generate(
            model,
            [ids[i] for i, _ in chunk],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=chat.end_id,
            pad_id=pad_id,
            generator=generator,
            use_cache=use_cache,
        )
        for (i, s), completion in zip(chunk, out.completions):
            results[i][s] = chat.parse(completion)
    if draws < n_samples:
        results = [row * n_samples for row in results]
    return results


def default_max_new_tokens(
    chat: ChatFormat, examples: Sequence[Example], margin: int = ANSWER_MARGIN
) -> int:
    """A generation budget that fits the longest gold answer, its ``<|end|>`` and ``margin`` more.

    A correct answer never needs more, and a model that rambles is cut off early (its answer is
    wrong either way), which keeps evaluation fast.

    :param chat: the chat format (its tokenizer counts the answer's tokens).
    :param examples: the examples to be answered.
    :param margin: extra tokens, ``>= 0``.
    :returns: the number of tokens.
    :raises ValueError: naming ``margin`` when it is negative.

    Introduced in {doc}`/book/part6/06-evaluation`.
    """
    margin = _check_count("margin", margin, 0)
    answers = [ex.answer for ex in examples]
    longest = max((len(a) for a in chat.tokenizer.encode_batch(answers)), default=0)
    return longest + 1 + margin


def _as_by(by) -> tuple[str, ...]:
    if isinstance(by, str):
        return (by,)
    if isinstance(by, Sequence) and all(isinstance(b, str) for b in by):
        return tuple(by)
    raise ValueError(f"by: expected a record key or a tuple of them, got {by!r}")


def _sorted_keys(keys):
    try:
        return sorted(keys)
    except TypeError:  # keys of mixed types: keep first-seen order
        return list(keys)


@dataclass
class TaskEval:
    r"""The scored completions of an evaluation, one record per (example, sample).

    Each record is a dict with the keys ``index`` (the example's position), ``sample`` (0 to
    ``n_samples - 1``), ``task``, ``difficulty``, ``problem``, ``phrasing``, ``prompt``, ``answer``
    (gold), ``completion`` (the parsed text), ``finished`` (the model closed its turn), ``n_tokens``,
    ``reward`` (the verifier's, 0 or 1) and ``kind`` (:func:`~llmbook.tasks.classify_failure`). The
    methods aggregate them into plain lists and dicts (a chapter turns them into tables).

    :param records: the records; each must have at least the keys of :data:`RECORD_KEYS`.
    :raises ValueError: naming ``records`` when one is not a dict with those keys.

    Introduced in {doc}`/book/part6/06-evaluation`.
    """

    records: list[dict]

    def __post_init__(self) -> None:
        for i, record in enumerate(self.records):
            if not isinstance(record, dict):
                raise ValueError(f"records: record {i} is a {type(record).__name__}, not a dict")
            missing = [k for k in RECORD_KEYS if k not in record]
            if missing:
                raise ValueError(f"records: record {i} lacks the key {missing[0]!r}")

    def _group(self, records: list[dict], by: tuple[str, ...]) -> dict[tuple, list[dict]]:
        groups: dict[tuple, list[dict]] = {}
        for record in records:
            try:
                key = tuple(record[b] for b in by)
            except KeyError as err:
                raise ValueError(f"by: records have no key {err.args[0]!r}") from None
            groups.setdefault(key, []).append(record)
        return {key: groups[key] for key in _sorted_keys(groups)}

    def _first_samples(self) -> list[dict]:
        return [r for r in self.records if r["sample"] == 0]

    def accuracy(self, by: str | Sequence[str] = ("task",)) -> list[dict]:
        r"""Exact-match accuracy of the first sample of each example, per group.

        $\mathrm{EM} = \frac1n \sum_i \mathbb 1[r_i = 1]$ over the $n$ examples of a group, $r_i$ the
        verifier's reward of sample 0 (the greedy answer when decoding was greedy).

        :param by: the record keys to group by (``()``: one group of everything).
        :returns: one dict per group, sorted by group: the ``by`` keys with their values,
            ``"accuracy"`` and ``"n"`` (the number of examples).
        :raises ValueError: naming ``by`` when a key is not a record key.
        """
        by = _as_by(by)
        rows = []
        for key, group in self._group(self._first_samples(), by).items():
            hits = sum(r["reward"] == 1.0 for r in group)
            rows.append({**dict(zip(by, key)), "accuracy": hits / len(group), "n": len(group)})
        return rows

    def pass_at_k(self, k: int, by: str | Sequence[str] = ("task",)) -> list[dict]:
        r"""The unbiased pass@k per group, from each example's $n$ samples of which $c$ are correct.

        $$\text{pass@}k = \frac1{|G|}\sum_{i \in G}\left(1 - \binom{n_i - c_i}{k}\Big/\binom{n_i}{k}
        \right),$$

        the chance that $k$ of the $n_i$ samples, drawn without replacement, hold a correct answer
        (see :func:`~llmbook.align.passk.pass_at_k` for why this is unbiased and the plug-in
        $1 - (1 - c/n)^k$ is not). pass@1 is the mean reward over all samples.

        :param k: the budget of attempts, at most every example's number of samples.
        :param by: the record keys to group by (read from each example's first sample).
        :returns: one dict per group: the ``by`` keys, ``f"pass@{k}"`` and ``"n"`` (examples).
        :raises ValueError: naming ``k`` when it is not an integer in ``[1, n_samples]``, or ``by``.
        """
        by = _as_by(by)
        k = _check_count("k", k, 1)
        n: dict = {}
        c: dict = {}
        for r in self.records:
            n[r["index"]] = n.get(r["index"], 0) + 1
            c[r["index"]] = c.get(r["index"], 0) + int(r["reward"] == 1.0)
        if n and k > min(n.values()):
            raise ValueError(
                f"k: pass@{k} needs at least {k} samples per example, got {min(n.values())}; "
                "evaluate with a larger n_samples"
            )
        rows = []
        for key, group in self._group(self._first_samples(), by).items():
            idx = [r["index"] for r in group]
            value = pass_at_k_many([n[i] for i in idx], [c[i] for i in idx], k)
            rows.append({**dict(zip(by, key)), f"pass@{k}": value, "n": len(group)})
        return rows

    def failures(
        self, by: str | Sequence[str] = "kind", *, n_examples: int = 3, all_samples: bool = False
    ) -> dict:
        """Count the wrong answers by kind (or another grouping), with a few of them to read.

        :param by: a record key (the result is keyed by its values) or a tuple of keys (keyed by
            tuples); ``"kind"`` groups by :data:`~llmbook.tasks.FAILURE_KINDS`.
        :param n_examples: how many records to keep per group, in evaluation order.
        :param all_samples: count every sample, not only the first of each example.
        :returns: a dict, most frequent group first, of ``{"count": int, "rate": count / answers
            scored, "examples": [record, ...]}``; correct answers are left out.
        :raises ValueError: naming ``by`` or ``n_examples`` when invalid.
        """
        keys = _as_by(by)
        n_examples = _check_count("n_examples", n_examples, 0)
        scored = self.records if all_samples else self._first_samples()
        wrong = [r for r in scored if r["kind"] != "correct"]
        groups = self._group(wrong, keys)
        out = {}
        for key, group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            out[key[0] if isinstance(by, str) else key] = {
                "count": len(group),
                "rate": len(group) / len(scored),
                "examples": [dict(r) for r in group[:n_examples]],
            }
        return out

    def overall(self) -> float:
        """The mean reward over every record (every sample of every example).

        :returns: the mean, or NaN when there are no records.
        """
        if not self.records:
            return float("nan")
        return sum(r["reward"] for r in self.records) / len(self.records)

    def to_json(self) -> dict:
        """Per task, the first-sample accuracy, its ``n`` and the accuracy per difficulty.

        :returns: ``{task: {"accuracy": float, "n": int, "by_difficulty": {difficulty: float}}}``,
            for ``json.dumps`` (which writes the integer difficulties as strings).
        """
        out: dict = {}
        for row in self.accuracy(by=("task",)):
            out[row["task"]] = {"accuracy": row["accuracy"], "n": row["n"], "by_difficulty": {}}
        for row in self.accuracy(by=("task", "difficulty")):
            out[row["task"]]["by_difficulty"][row["difficulty"]] = row["accuracy"]
        return out


def evaluate_tasks(
    model: nn.Module,
    chat: ChatFormat,
    examples: Sequence[Example],
    *,
    n_samples: int = 1,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    use_cache: bool = True,
) -> TaskEval:
    """Answer every example, verify each answer against the gold one, and name each failure.

    Temperature 0 decodes greedily (all ``n_samples`` the same); above 0 the samples are drawn with
    a ``torch.Generator`` seeded by ``seed``, so the same call gives the same samples.

    :param model: the fine-tuned language model.
    :param chat: its chat format.
    :param examples: the examples to answer (see :func:`task_examples`).
    :param n_samples: completions per example (pass@k needs ``n_samples >= k``).
    :param temperature: sampling temperature; 0 is greedy.
    :param top_k: top-k filter (None: off).
    :param top_p: nucleus filter (None: off).
    :param max_new_tokens: the generation budget; None: :func:`default_max_new_tokens`.
    :param seed: seed of the sampling generator (unused when greedy).
    :param batch_size: rows per call of the model.
    :param use_cache: use a KV cache when prompt and answer fit the context window.
    :returns: a :class:`TaskEval` with ``len(examples) * n_samples`` records.
    :raises ValueError: naming ``examples`` when it is empty or holds something else than
        :class:`~llmbook.tasks.base.Example`, or the generation setting that is invalid.

    Introduced in {doc}`/book/part6/06-evaluation`.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("examples: need at least one example")
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise ValueError(f"examples: item {i} is a {type(ex).__name__}, not an Example")
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(chat, examples)
    check_sampling(temperature, top_k, top_p)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=next(model.parameters()).device)
        generator.manual_seed(seed)
    parsed = complete(
        model,
        chat,
        [ex.prompt for ex in examples],
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        n_samples=n_samples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        generator=generator,
        use_cache=use_cache,
    )
    records = []
    for index, (ex, completions) in enumerate(zip(examples, parsed)):
        for sample, c in enumerate(completions):
            records.append(
                {
                    "index": index,
                    "sample": sample,
                    "task": ex.task,
                    "difficulty": ex.difficulty,
                    "problem": ex.problem,
                    "phrasing": ex.phrasing,
                    "prompt": ex.prompt,
                    "answer": ex.answer,
                    "completion": c.text,
                    "finished": c.finished,
                    "n_tokens": c.n_tokens,
                    "reward": verify(ex, c.text),
                    "kind": classify_failure(ex, c.text),
                }
            )
    return TaskEval(records)
