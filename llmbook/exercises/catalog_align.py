"""Exercise specs for Parts 6–10: packing, the encoder's reward, LOO advantages, PPO, GRPO, DPO.

Each spec compares the reader's function with the package's real one; where the exercise's
signature differs from the package's, ``expected`` adapts the arguments and the spec's ``note`` says
how. The specs are collected in :data:`llmbook.exercises.catalog.EXERCISES`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch import tensor as T

from llmbook.align.advantages import group_advantages
from llmbook.align.batching import pack_batch
from llmbook.align.dpo_loss import dpo_loss
from llmbook.align.grpo_loss import AGGREGATIONS, grpo_loss
from llmbook.align.ppo_loss import ppo_policy_loss
from llmbook.align.reward_model import RewardModel, collate
from llmbook.exercises.check import Case, Exercise
from llmbook.exercises.draw import Draw
from llmbook.model.config import ModelConfig
from llmbook.model.gpt import GPT

_NAN = float("nan")


# ---- Part 6: packing by first fit ------------------------------------------------------------


def _pack(rows, block_size, pad_id):
    batch = pack_batch(rows, block_size=block_size, pad_id=pad_id)
    return batch.input_ids, batch.labels, batch.document_ids, batch.attention_mask


def _row(n: int, prompt: int, first: int = 10) -> tuple[list[int], list[bool]]:
    return list(range(first, first + n)), [False] * prompt + [True] * (n - prompt)


def _pack_edges() -> list[Case]:
    return [
        Case("one example", ([_row(4, 2)], 8, 0)),
        Case("an example exactly block_size long", ([_row(6, 3), _row(2, 1, 40)], 6, 0)),
        Case(
            "a short example fits an earlier row (first fit)",
            ([_row(5, 2), _row(6, 2, 30), _row(3, 1, 60)], 8, 0),
        ),
        Case("an example with no trained token", ([_row(3, 3), _row(4, 1, 20)], 8, 1)),
        Case("one-token examples", ([_row(1, 0, k) for k in range(5)], 3, 2)),
        Case("no padding at all", ([_row(4, 2), _row(4, 1, 20)], 4, 0)),
    ]


def _pack_random(d: Draw) -> Case:
    block = d.integer(2, 20)
    rows = []
    for _ in range(d.integer(1, 8)):
        n = d.integer(1, block)
        ids = d.randint(3, 300, n).tolist()
        prompt = d.integer(0, n)
        rows.append((ids, [False] * prompt + [True] * (n - prompt)))
    return Case("", (rows, block, d.choice([0, 1, 2])))


PACK = Exercise(
    name="pack",
    chapter="book/part6/04-packing",
    signature="naive_pack(rows, block_size, pad_id)",
    reference=pack_batch,
    expected=_pack,
    edge_cases=_pack_edges,
    random_case=_pack_random,
    outputs=("ids", "labels", "document_ids", "attention_mask"),
    note="The batch's ``input_ids``, ``labels``, ``document_ids`` and ``attention_mask``.",
)
"""Part 6.4, exercise 3: first-fit packing, labels and mask
(reference: :func:`~llmbook.align.batching.pack_batch`)."""


# ---- Part 7: the encoder reward model's mean pool ---------------------------------------------


def _reward_model(seed: int, n_layer: int = 1, n_embd: int = 16) -> RewardModel:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=64, block_size=16, n_layer=n_layer, n_head=2, n_embd=n_embd)
    model = RewardModel(GPT(config), pooling="mean", causal=False).eval()
    with torch.no_grad():  # a larger head than the training start's, so that differences show
        nn.init.normal_(model.head.weight)
        nn.init.normal_(model.head.bias)
    return model


def _mean_pool(model, ids):
    ids = list(ids)
    longer = (ids + ids)[: min(2 * len(ids), model.config.block_size)]
    rows = [ids, longer] if len(longer) > len(ids) else [ids]
    side = "left" if len(ids) % 2 else "right"
    with torch.no_grad():
        return model(*collate(rows, pad_id=0, side=side))[0]


def _reward_edges() -> list[Case]:
    model = _reward_model(7)
    return [
        Case("a one-token conversation", (model, [5])),
        Case("two tokens", (model, [5, 9])),
        Case("a longer conversation", (model, [3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9])),
        Case("as long as the context", (model, list(range(20, 36)))),
        Case("a wider, deeper model", (_reward_model(8, n_layer=2, n_embd=32), [1, 2, 3, 4, 5, 6])),
    ]


def _reward_random(d: Draw) -> Case:
    model = _reward_model(d.integer(0, 10**6), d.integer(1, 2), d.choice([16, 32]))
    return Case("", (model, d.randint(0, 64, d.integer(1, 16)).tolist()))


MEAN_POOL_REWARD = Exercise(
    name="mean_pool_reward",
    chapter="book/part7/02-reward-model",
    signature="naive_mean_pool_reward(model, ids)",
    reference=RewardModel.forward,
    expected=_mean_pool,
    edge_cases=_reward_edges,
    random_case=_reward_random,
    n_random=10,
    min_tolerance=(1e-5, 1e-4),
    note="The package scores the conversation inside a padded batch with a longer one (left "
    "padding for odd lengths, right for even); the reader's unpadded reward must equal it, to "
    "an atol of 1e-4 (the two run different shapes).",
)
"""Part 7.2, exercise 3: the encoder reward model's mean pool
(reference: :class:`~llmbook.align.reward_model.RewardModel`)."""


# ---- Part 8: PPO's clipped policy loss -----------------------------------------------------------

_KEYS_PPO = ("clipfrac", "approx_kl")


def _ppo(logps, old_logps, advantages, mask, clip=0.2, reduce="token"):
    if reduce == "token":
        loss, metrics = ppo_policy_loss(logps, old_logps, advantages, mask, clip=clip)
    else:  # GRPO's surrogate with one clip range is PPO's; its "grpo" aggregation is the row mean
        loss, metrics = grpo_loss(
            logps, old_logps, advantages, mask, clip_low=clip, clip_high=clip, aggregation="grpo"
        )
    return loss, {key: metrics[key] for key in _KEYS_PPO}


def _policy_batch(d: Draw, lengths, width, *, nan: bool, dtype=torch.float32):
    mask = d.lengths_mask(lengths, width)
    old = -3 * d.rand(len(lengths), width, dtype=dtype)
    logps = old + d.randn(len(lengths), width, dtype=dtype, scale=0.3)
    if nan:
        old = torch.where(mask, old, _NAN)
    return logps, old, mask


def _ppo_edges() -> list[Case]:
    d = Draw(8)
    lp, old, m = _policy_batch(d, [1], 1, nan=False)
    cases = [Case("one token", (lp, old, T([[0.7]]), m, 0.2, "token"))]
    lp, old, m = _policy_batch(d, [5, 5], 5, nan=False)
    cases.append(
        Case(
            "ratios far outside the clip range",
            (
                old + d.choice([1, -1]) * T([1.0, -1.0, 0.5, -0.5, 2.0]),
                old,
                d.randn(2, 5),
                m,
                0.2,
                "token",
            ),
        )
    )
    lp, old, m = _policy_batch(d, [6, 2, 4], 6, nan=True)
    adv = torch.where(m, d.randn(3, 6), _NAN)
    cases.append(Case("padding holds NaN", (lp, old, adv, m, 0.2, "token")))
    lp, old, m = _policy_batch(d, [4, 4, 4], 4, nan=False)
    cases.append(
        Case("row mean, rows of equal length", (lp, old, d.randn(3, 4), m, 0.2, "sequence"))
    )
    lp, old, m = _policy_batch(d, [7, 3, 1, 5], 7, nan=False)
    cases.append(
        Case("row mean, rows of different lengths", (lp, old, d.randn(4, 7), m, 0.2, "sequence"))
    )
    lp, old, m = _policy_batch(d, [3, 0, 4], 5, nan=False)
    cases.append(
        Case("a row with no counted token (token mean)", (lp, old, d.randn(3, 5), m, 0.1, "token"))
    )
    lp, old, m = _policy_batch(d, [3, 6], 6, nan=False, dtype=torch.float64)
    cases.append(Case("float64", (lp, old, d.randn(2, 6, dtype=torch.float64), m, 0.3, "token")))
    return cases


def _ppo_random(d: Draw) -> Case:
    B, N = d.integer(1, 6), d.integer(1, 10)
    lengths = [d.integer(1, N) for _ in range(B)]
    logps, old, mask = _policy_batch(d, lengths, N, nan=d.coin())
    clip, reduce = d.choice([0.1, 0.2, 0.3]), d.choice(["token", "sequence"])
    return Case(f"reduce={reduce!r}", (logps, old, d.randn(B, N), mask, clip, reduce))


PPO_POLICY_LOSS = Exercise(
    name="ppo_policy_loss",
    chapter="book/part8/03-ppo-objective",
    signature="my_ppo_policy_loss(logps, old_logps, advantages, mask, clip=0.2, reduce='token')",
    reference=ppo_policy_loss,
    expected=_ppo,
    edge_cases=_ppo_edges,
    random_case=_ppo_random,
    outputs=("loss", "metrics"),
    grad_wrt=(0,),
    grad_of=0,
    note="``reduce='token'`` is ``ppo_policy_loss``; ``'sequence'`` is ``grpo_loss`` with "
    "``clip_low = clip_high = clip`` and per-token advantages, whose ``'grpo'`` aggregation is the "
    "mean within each row, then over rows. Only the metrics the exercise asks for are compared.",
)
"""Part 8.3, exercise 3: PPO's clipped policy loss
(reference: :func:`~llmbook.align.ppo_loss.ppo_policy_loss`)."""


# ---- Part 9: leave-one-out advantages and the GRPO loss -----------------------------------------


def _loo(rewards, group_size):
    k = group_size
    return group_advantages(rewards, k, scale="none") * k / (k - 1)


def _loo_edges() -> list[Case]:
    d = Draw(9)
    return [
        Case("one group", (d.randn(5), 5)),
        Case("two completions per prompt (k = 2)", (T([1.0, 0.0, 0.5, 0.5]), 2)),
        Case("all-equal rewards in a group (advantage 0)", (T([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]), 3)),
        Case("binary rewards (right or wrong)", ((d.rand(16) < 0.4).float(), 8)),
        Case("float64 rewards", (d.randn(12, dtype=torch.float64), 4)),
    ]


def _loo_random(d: Draw) -> Case:
    k, G = d.integer(2, 8), d.integer(1, 6)
    rewards = (d.rand(k * G) < 0.5).float() if d.coin() else d.randn(k * G, scale=2.0)
    return Case("", (rewards, k))


LOO_ADVANTAGES = Exercise(
    name="loo_advantages",
    chapter="book/part9/01-group-baseline",
    signature="loo_advantages(rewards, group_size)",
    reference=group_advantages,
    expected=_loo,
    edge_cases=_loo_edges,
    random_case=_loo_random,
    note=r"The leave-one-out advantage is $\frac{k}{k-1}(r_i - \bar r)$: "
    "``group_advantages(rewards, k, scale='none') * k / (k - 1)``.",
)
"""Part 9.1, exercise 3: leave-one-out advantages
(reference: :func:`~llmbook.align.advantages.group_advantages`)."""

_KEYS_GRPO = ("clipfrac_low", "clipfrac_high")


def _grpo(
    logps,
    old_logps,
    advantages,
    mask,
    clip_low=0.2,
    clip_high=0.28,
    aggregation="grpo",
    max_length=None,
):
    loss, metrics = grpo_loss(
        logps,
        old_logps,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        aggregation=aggregation,
        max_length=max_length,
    )
    return loss, {key: metrics[key] for key in _KEYS_GRPO}


def _grpo_edges() -> list[Case]:
    d = Draw(10)
    cases = []
    lp, old, m = _policy_batch(d, [1], 1, nan=False)
    cases.append(
        Case("one completion of one token", (lp, old, T([0.5]), m, 0.2, 0.28, "grpo", None))
    )
    lp, old, m = _policy_batch(d, [6, 2, 4, 1], 6, nan=True)
    adv = T([0.5, -0.5, 1.0, -1.0])
    cases.append(Case("padding holds NaN", (lp, old, adv, m, 0.2, 0.28, "grpo", None)))
    cases.append(Case("token mean ('dapo')", (lp, old, adv, m, 0.2, 0.28, "dapo", None)))
    cases.append(Case("a constant divisor ('dr_grpo')", (lp, old, adv, m, 0.2, 0.28, "dr_grpo", 8)))
    _, old, m = _policy_batch(d, [4, 4], 4, nan=False)
    far = old + T([[0.6, -0.6, 0.1, -0.1], [0.6, -0.6, 0.1, -0.1]])
    cases.append(
        Case(
            "ratios beyond both clip bounds", (far, old, T([1.0, -1.0]), m, 0.2, 0.28, "grpo", None)
        )
    )
    lp, old, m = _policy_batch(d, [3, 0, 5], 5, nan=False)
    cases.append(
        Case(
            "a row with no counted token (it counts as loss 0)",
            (lp, old, T([1.0, -1.0, 0.5]), m, 0.2, 0.28, "grpo", None),
        )
    )
    lp, old, m = _policy_batch(d, [3, 5], 5, nan=False)
    cases.append(
        Case(
            "zero advantages (a group all right)",
            (lp, old, T([0.0, 0.0]), m, 0.2, 0.28, "dapo", None),
        )
    )
    return cases


def _grpo_random(d: Draw) -> Case:
    B, N = d.integer(1, 6), d.integer(1, 10)
    lengths = [d.integer(1, N) for _ in range(B)]
    logps, old, mask = _policy_batch(d, lengths, N, nan=d.coin())
    aggregation = d.choice(AGGREGATIONS)
    max_length = N + d.integer(0, 4) if aggregation == "dr_grpo" else None
    clips = (d.choice([0.1, 0.2]), d.choice([0.2, 0.28, 0.4]))
    return Case(
        f"aggregation={aggregation!r}",
        (logps, old, d.randn(B), mask, *clips, aggregation, max_length),
    )


GRPO_LOSS = Exercise(
    name="grpo_loss",
    chapter="book/part9/03-policy-only-objective",
    signature="my_grpo_loss(logps, old_logps, advantages, mask, clip_low=0.2, clip_high=0.28, "
    "aggregation='grpo', max_length=None)",
    reference=grpo_loss,
    expected=_grpo,
    edge_cases=_grpo_edges,
    random_case=_grpo_random,
    outputs=("loss", "metrics"),
    grad_wrt=(0,),
    grad_of=0,
    note="No KL term (``beta = 0``); only the metrics the exercise asks for are compared.",
)
"""Part 9.3, exercise 3: the GRPO loss in its three aggregations
(reference: :func:`~llmbook.align.grpo_loss.grpo_loss`)."""


# ---- Part 10: the DPO loss ------------------------------------------------------------------


def _dpo(logps_c, logps_r, ref_c, ref_r, beta, loss="sigmoid", eps=0.0):
    return dpo_loss(logps_c, logps_r, ref_c, ref_r, beta=beta, loss=loss, label_smoothing=eps)[0]


def _dpo_edges() -> list[Case]:
    d = Draw(11)
    ref_c, ref_r = -20 * d.rand(6), -20 * d.rand(6)
    pol_c, pol_r = ref_c + d.randn(6), ref_r + d.randn(6)
    zero = torch.zeros(1)
    return [
        Case("one pair", (T([-3.0]), T([-4.0]), T([-3.5]), T([-3.5]), 0.5, "sigmoid", 0.0)),
        Case(
            "policy equals the reference (loss ln 2)",
            (ref_c, ref_r, ref_c, ref_r, 0.1, "sigmoid", 0.0),
        ),
        Case("conservative DPO (eps = 0.2)", (pol_c, pol_r, ref_c, ref_r, 0.3, "cdpo", 0.2)),
        Case("IPO", (pol_c, pol_r, ref_c, ref_r, 0.3, "ipo", 0.0)),
        Case(
            "a pair ranked wrong by 200 nats", (T([-200.0]), zero, zero, zero, 1.0, "sigmoid", 0.0)
        ),
        Case(
            "a pair ranked right by 200 nats, conservative",
            (T([200.0]), zero, zero, zero, 1.0, "cdpo", 0.1),
        ),
        Case(
            "float64 log-probs",
            tuple(x.double() for x in (pol_c, pol_r, ref_c, ref_r)) + (0.1, "sigmoid", 0.0),
        ),
    ]


def _dpo_random(d: Draw) -> Case:
    n = d.integer(1, 32)
    ref_c, ref_r = -20 * d.rand(n), -20 * d.rand(n)
    scale = d.choice([0.3, 1.0, 3.0])
    loss = d.choice(["sigmoid", "cdpo", "ipo"])
    eps = d.choice([0.1, 0.25, 0.4]) if loss == "cdpo" else 0.0
    args = (ref_c + d.randn(n, scale=scale), ref_r + d.randn(n, scale=scale), ref_c, ref_r)
    return Case(f"loss={loss!r}", (*args, d.choice([0.1, 0.3, 1.0]), loss, eps))


DPO_LOSS = Exercise(
    name="dpo_loss",
    chapter="book/part10/01-dpo",
    signature="my_dpo_loss(logps_c, logps_r, ref_c, ref_r, beta, loss='sigmoid', eps=0.0)",
    reference=dpo_loss,
    expected=_dpo,
    edge_cases=_dpo_edges,
    random_case=_dpo_random,
    grad_wrt=(0, 1),
    note="The loss alone (the package's first output), with ``eps`` as ``label_smoothing``; the "
    "gradients with respect to the policy's log-probabilities are compared too.",
)
"""Part 10.1, exercise 3: the DPO, cDPO and IPO losses
(reference: :func:`~llmbook.align.dpo_loss.dpo_loss`)."""
