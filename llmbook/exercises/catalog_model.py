"""Exercise specs for Parts 0–5: reward-model loss, attention, top-k, rolling cache, BPE, routing.

Each spec compares the reader's function with the package's real one; where the exercise's
signature differs from the package's, ``expected`` adapts the arguments and the spec's ``note`` says
how. The specs are collected in :data:`llmbook.exercises.catalog.EXERCISES`.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import tensor as T

from llmbook.align.reward_loss import bradley_terry_loss
from llmbook.exercises.check import Case, Exercise
from llmbook.exercises.draw import Draw
from llmbook.generate.sampling import top_k_filter
from llmbook.model.attention import attention_reference
from llmbook.model.config import ModelConfig
from llmbook.model.kv_cache import RollingKVCache
from llmbook.model.moe import Router
from llmbook.tokenizer.bpe import GPT2_PATTERN, BPETokenizer, count_pretokens, train_merges

# ---- Part 0: the Bradley–Terry loss ------------------------------------------------------------


def _bradley_terry(chosen, rejected, margin=None):
    return bradley_terry_loss(chosen, rejected, margin=margin)


def _bt_edges() -> list[Case]:
    return [
        Case("one pair", (T([0.7]), T([-0.2]), None)),
        Case(
            "tied rewards (a tie counts as wrong)",
            (T([1.0, 0.5, -0.3, 2.0]), T([1.0, 0.5, 0.1, -1.0]), None),
        ),
        Case("a pair ranked wrong by 200 nats", (T([-200.0, 0.5, 1.0]), T([0.0, 0.0, -1.0]), None)),
        Case("a pair ranked right by 200 nats", (T([200.0, -0.5]), T([0.0, 0.3]), None)),
        Case("one margin for every pair", (T([1.0, 0.2, -0.4]), T([0.0, 0.5, -1.0]), 0.5)),
        Case("a margin per pair", (T([1.0, 0.2, -0.4]), T([0.0, 0.5, -1.0]), T([0.0, 1.0, 2.5]))),
        Case(
            "float64 rewards",
            (T([0.3, -1.2], dtype=torch.float64), T([0.1, 0.4], dtype=torch.float64), None),
        ),
    ]


def _bt_random(d: Draw) -> Case:
    n, scale = d.integer(1, 48), d.choice([0.5, 2.0, 8.0])
    margin = d.choice([None, "float", "tensor"])
    if margin == "float":
        margin = 2.0 * float(d.rand(1))
    elif margin == "tensor":
        margin = 2.0 * d.rand(n)
    return Case("", (d.randn(n, scale=scale), d.randn(n, scale=scale), margin))


BRADLEY_TERRY = Exercise(
    name="bradley_terry_loss",
    chapter="book/part0/02-preferences",
    signature="my_bradley_terry_loss(chosen, rejected, margin=None)",
    reference=bradley_terry_loss,
    expected=_bradley_terry,
    edge_cases=_bt_edges,
    random_case=_bt_random,
    outputs=("loss", "metrics"),
    grad_wrt=(0, 1),
    grad_of=0,
    note="The package takes the margin by keyword; the loss's gradients are compared too.",
)
"""Part 0.2, exercise 4: the reward-model loss and its metrics
(reference: :func:`~llmbook.align.reward_loss.bradley_terry_loss`)."""


# ---- Part 1: attention for one query, read key by key -------------------------------------------


def _one_query(q, k, v):
    return attention_reference(q[None], k, v)[0]


def _attention_edges() -> list[Case]:
    d = Draw(1)
    k_row = d.randn(1, 6)
    big_k = d.randn(5, 8)
    return [
        Case("one key", (d.randn(4), d.randn(1, 4), d.randn(1, 3))),
        Case("all keys equal (uniform weights)", (d.randn(6), k_row.repeat(7, 1), d.randn(7, 2))),
        Case(
            "large scores (the softmax must subtract the max)",
            (40 * big_k[0], 40 * big_k, d.randn(5, 3)),
        ),
        Case(
            "very negative scores", (-40 * big_k[1], 40 * big_k[1] + d.randn(5, 8), d.randn(5, 4))
        ),
        Case("one-dimensional keys (D = 1)", (d.randn(1), d.randn(9, 1), d.randn(9, 5))),
        Case(
            "float64",
            (
                d.randn(8, dtype=torch.float64),
                d.randn(11, 8, dtype=torch.float64),
                d.randn(11, 3, dtype=torch.float64),
            ),
        ),
    ]


def _attention_random(d: Draw) -> Case:
    S, D, Dv = d.integer(1, 24), d.integer(1, 16), d.integer(1, 12)
    dtype, scale = d.choice([torch.float32, torch.float64]), d.choice([0.5, 1.0, 3.0])
    return Case(
        "",
        (
            d.randn(D, dtype=dtype, scale=scale),
            d.randn(S, D, dtype=dtype, scale=scale),
            d.randn(S, Dv, dtype=dtype),
        ),
    )


ONLINE_ATTENTION = Exercise(
    name="online_attention",
    chapter="book/part1/02-attention-by-hand",
    signature="naive_online_attention(q, k, v)",
    reference=attention_reference,
    expected=_one_query,
    edge_cases=_attention_edges,
    random_case=_attention_random,
    note="One query ``(D,)`` is the package's ``(1, D)`` query matrix; the output row is compared.",
)
"""Part 1.2, exercise 4: one query's attention with an online softmax
(reference: :func:`~llmbook.model.attention.attention_reference`)."""


# ---- Part 2: top-k filtering ---------------------------------------------------------------------


def _top_k_edges() -> list[Case]:
    d = Draw(2)
    scales = T([[0.1], [1.0], [10.0]])
    with_inf = d.randn(2, 9)
    with_inf[:, ::3] = float("-inf")
    return [
        Case("one row", (d.randn(1, 10), 3)),
        Case("rows on different scales", (scales * d.randn(3, 12), 4)),
        Case("k = 1", (d.randn(3, 8), 1)),
        Case("k = V keeps everything", (d.randn(2, 6), 6)),
        Case(
            "a tie at the k-th value (every tied entry is kept)",
            (T([[3.0, 1.0, 2.0, 2.0, 0.0, 2.0]]), 2),
        ),
        Case("-inf entries from an earlier filter", (with_inf, 3)),
        Case("bfloat16 logits", (d.randn(2, 16, dtype=torch.bfloat16), 5)),
    ]


def _top_k_random(d: Draw) -> Case:
    B, V = d.integer(1, 5), d.integer(2, 40)
    logits = d.randn(B, V, scale=d.choice([1.0, 5.0]))
    if d.coin(0.3):
        logits = logits.round()  # ties, often at the k-th value
    return Case("", (logits, d.integer(1, V + 1)))


TOP_K = Exercise(
    name="top_k",
    chapter="book/part2/07-sampling",
    signature="naive_top_k(logits, k)",
    reference=top_k_filter,
    expected=top_k_filter,
    edge_cases=_top_k_edges,
    random_case=_top_k_random,
)
"""Part 2.7, exercise 2: top-k filtering with a sort and a loop
(reference: :func:`~llmbook.generate.sampling.top_k_filter`)."""


# ---- Part 3: the rolling cache's slots --------------------------------------------------------


@cache
def _tiny_config() -> ModelConfig:
    return ModelConfig(n_layer=1, n_head=1, n_embd=2, block_size=8)


def _ring(t, sinks, window):
    cache_ = RollingKVCache(_tiny_config(), 1, sinks=sinks, window=window)
    positions, valid, query = cache_.positions(t)
    return cache_.slot_tokens(t), positions, valid, query


def _ring_edges() -> list[Case]:
    return [
        Case("first token (t = 0)", (0, 2, 5)),
        Case("the ring not yet full", (4, 2, 5)),
        Case("the ring just full", (6, 2, 5)),
        Case("the ring wrapped around", (9, 2, 5)),
        Case("no sinks (S = 0)", (11, 0, 5)),
        Case("a window of one (W = 1)", (7, 3, 1)),
        Case("no sinks and a window of one", (5, 0, 1)),
        Case("more sinks than tokens so far", (1, 4, 3)),
        Case("a long stream", (200, 4, 28)),
    ]


def _ring_random(d: Draw) -> Case:
    return Case("", (d.integer(0, 60), d.integer(0, 6), d.integer(1, 12)))


ROLLING_CACHE = Exercise(
    name="rolling_cache",
    chapter="book/part3/05-sliding-window",
    signature="my_ring(t, sinks, window)",
    reference=RollingKVCache,
    expected=_ring,
    edge_cases=_ring_edges,
    random_case=_ring_random,
    n_random=30,
    outputs=("held", "positions", "valid", "query_position"),
    note="A one-row cache of a tiny config answers ``slot_tokens(t)`` and ``positions(t)``.",
)
"""Part 3.5, exercise 5: the rolling cache's slots and positions
(reference: :class:`~llmbook.model.kv_cache.RollingKVCache`)."""


# ---- Part 4: BPE encoding by merge rank ------------------------------------------------------


_ALPHABET = "abcde aab ba,.\n0123'séé"


def _merges(text: str, n: int) -> list[tuple[int, int]]:
    return train_merges(count_pretokens(text), n)


def _encode(text, merges):
    return BPETokenizer(merges).encode(text)


def _bpe_edges() -> list[Case]:
    unicode = "naïve café, 日本語の本 — ça va? " * 3
    return [
        Case("empty text", ("", [(97, 98)])),
        Case("no merges", ("hello world", [])),
        Case("one character", ("a", [(97, 97)])),
        Case("a lower-ranked pair to the right", ("abc", [(98, 99), (97, 98)])),
        Case("a merge of merges", ("aaaa", [(97, 97), (256, 256)])),
        Case("overlapping pairs", ("aaa", [(97, 97)])),
        Case("a pair across a pre-token boundary", ("ab ab", [(98, 32), (97, 98)])),
        Case("multi-byte UTF-8", (unicode, _merges(unicode, 30))),
        Case(
            "contractions, digits and newlines",
            ("I'm 42, don't\n\n  go", _merges("I'm 42, don't go 42 don't", 12)),
        ),
    ]


def _bpe_random(d: Draw) -> Case:
    train = "".join(d.choice(_ALPHABET) for _ in range(d.integer(20, 200)))
    merges = _merges(train, d.integer(0, 40))
    if d.coin(0.5):
        start = d.integer(0, len(train) - 1)
        text = train[start : start + d.integer(0, 60)]
    else:
        text = "".join(d.choice(_ALPHABET) for _ in range(d.integer(0, 60)))
    return Case("", (text, merges))


BPE_ENCODE = Exercise(
    name="bpe_encode",
    chapter="book/part4/01-bpe",
    signature="encode_by_rank(text, merges)",
    reference=BPETokenizer,
    expected=_encode,
    edge_cases=_bpe_edges,
    random_case=_bpe_random,
    note=f"``BPETokenizer(merges).encode(text)`` with the pattern ``{GPT2_PATTERN[:10]}...``; "
    "random merges are learned by ``train_merges`` from a random text.",
)
"""Part 4.1, exercise 3: encoding by merge rank
(reference: :class:`~llmbook.tokenizer.bpe.BPETokenizer`)."""


# ---- Part 5: the router -------------------------------------------------------------------------


def _router(x, weight, k, renormalize):
    router = Router(x.size(-1), weight.size(0), k, renormalize=renormalize).eval()
    out = torch.func.functional_call(router, {"weight": weight}, (x,))
    return out.probs, out.weights, out.indices


def _halves(d: Draw, N: int, C: int, E: int) -> tuple[torch.Tensor, torch.Tensor]:
    # bfloat16 tokens and weights in {-1, -1/2, 0, 1/2, 1}: their logits are exact and (redrawn
    # until) distinct per token, so any correct way of computing them picks the same experts.
    while True:
        x, w = (d.randint(-2, 3, *shape).to(torch.bfloat16) / 2 for shape in ((N, C), (E, C)))
        logits = x.double() @ w.double().T  # multiples of 1/4 in [-C, C]: exact in bfloat16
        if all(len(set(row.tolist())) == E for row in logits):
            return x, w


def _router_edges() -> list[Case]:
    d = Draw(5)
    return [
        Case("one token", (d.randn(1, 8), d.randn(4, 8), 2, True)),
        Case("every expert chosen (k = E)", (d.randn(5, 8), d.randn(4, 8), 4, True)),
        Case("bfloat16 tokens and weight", (*_halves(d, 6, 8, 4), 2, True)),
        Case("raw gates (renormalize=False)", (d.randn(6, 8), d.randn(4, 8), 2, False)),
        Case("top-1 with the raw gate (Switch)", (d.randn(7, 5), d.randn(6, 5), 1, False)),
        Case("top-1 renormalised (the gate is always 1)", (d.randn(7, 5), d.randn(6, 5), 1, True)),
    ]


def _router_random(d: Draw) -> Case:
    N, C, E = d.integer(1, 20), d.integer(1, 16), d.integer(2, 10)
    return Case("", (d.randn(N, C), d.randn(E, C), d.integer(1, E), d.coin()))


ROUTER = Exercise(
    name="router",
    chapter="book/part5/01-moe-theory",
    signature="my_router(x, weight, k, renormalize)",
    reference=Router,
    expected=_router,
    edge_cases=_router_edges,
    random_case=_router_random,
    outputs=("probs", "gates", "chosen"),
    grad_wrt=(1,),
    grad_of=1,
    note="A ``Router`` in evaluation mode (no noise) runs with ``weight`` in place of its own; "
    "the gates' gradient with respect to ``weight`` is compared too.",
)
"""Part 5.1, exercise 1: top-k routing with both kinds of gate
(reference: :class:`~llmbook.model.moe.Router`)."""
