r"""Beam search: keep the ``num_beams`` most probable partial sequences instead of one sample.

Greedy decoding commits to the most probable next token at every step; a sequence whose first token is
slightly less likely but whose continuation is far more likely is never seen. Beam search keeps ``K``
hypotheses per prompt. At each step every hypothesis is extended by every token, the ``2K`` best of the
``K V`` extensions (by summed log-probability) are kept, and those among the best ``K`` that end in EOS
(or reach the length limit) move to a pool of finished hypotheses, scored by
$\log p(y) / |y|^{\alpha}$ ($|y|$ generated tokens, $\alpha$ the length penalty). The ``K`` best
unfinished extensions carry on. A prompt is done when its pool is full and no running hypothesis can
beat the pool's worst member any more (judged at the current length). The result is the best finished
hypothesis. With these rules the output equals ``transformers``' beam search with ``early_stopping=False``
(the default), which the tests check.

Introduced in {doc}`/book/part2/08-batches-and-beams`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llmbook.generate.generation import _crop, eval_mode, left_pad


@dataclass
class BeamSearchOutput:
    """The best finished hypothesis of each prompt.

    Introduced in {doc}`/book/part2/08-batches-and-beams`.
    """

    completions: list[list[int]]
    """The generated ids of each prompt's best hypothesis (EOS included when it ended with EOS)."""
    scores: torch.Tensor
    """``(B,)`` its score: summed log-probability divided by ``len(completion) ** length_penalty``."""
    logprobs: torch.Tensor
    """``(B,)`` its summed log-probability (the score before the length penalty)."""
    steps: int
    """How many decoding steps ran (fewer than ``max_new_tokens`` when every prompt stopped early)."""


def check_beam_settings(num_beams: int, max_new_tokens: int, length_penalty: float) -> None:
    """Refuse beam-search settings that cannot run, naming the field.

    :param num_beams: hypotheses kept per prompt, an integer ``>= 1``.
    :param max_new_tokens: tokens to generate at most, an integer ``>= 1``.
    :param length_penalty: the exponent $\\alpha$, a finite number.
    :raises ValueError: naming the first bad field.

    Introduced in {doc}`/book/part2/08-batches-and-beams`.
    """
    for name, value in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise ValueError(f"length_penalty: must be a number, got {length_penalty!r}")
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty: must be finite, got {length_penalty}")


@torch.no_grad()
def beam_search(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_id: int | None = None,
    length_penalty: float = 1.0,
    pad_id: int = 0,
) -> BeamSearchOutput:
    r"""Decode each prompt with beam search (see the module docstring for the rules).

    The prompts are left-padded (:func:`~llmbook.generate.generation.left_pad`) and each is repeated
    ``num_beams`` times, so one forward pass per step scores every hypothesis of every prompt; each
    step recomputes the last ``block_size`` tokens (no KV cache: the cache would have to be reordered
    as hypotheses are dropped and duplicated). The model runs in eval mode and is put back in the mode
    it was in.

    :param model: a language model with ``config.block_size`` whose forward takes ``attention_mask``.
    :param prompts: token-id lists (different lengths allowed).
    :param num_beams: hypotheses kept per prompt ($K$); 1 is greedy decoding.
    :param max_new_tokens: the most tokens a hypothesis may generate.
    :param eos_id: the id that ends a hypothesis (None: every hypothesis runs ``max_new_tokens``).
    :param length_penalty: $\alpha$ in $\log p(y) / |y|^\alpha$: 0 ranks finished hypotheses by
        probability alone, 1 by the mean log-probability per token (favouring longer ones).
    :param pad_id: the padding id.
    :returns: a :class:`BeamSearchOutput`.
    :raises ValueError: for a bad setting (:func:`check_beam_settings`), before the model runs.

    Introduced in {doc}`/book/part2/08-batches-and-beams`.
    """
    check_beam_settings(num_beams, max_new_tokens, length_penalty)
    K = num_beams
    with eval_mode(model):
        device = next(model.parameters()).device
        ids, mask = left_pad(prompts, pad_id)
        B = ids.size(0)
        ids = ids.to(device).repeat_interleave(
            K, dim=0
        )  # (B K, P): prompt b's beams are rows bK..bK+K-1
        mask = mask.to(device).repeat_interleave(K, dim=0)
        block_size = model.config.block_size
        neg = torch.tensor(float("-inf"), device=device)
        # Summed log-probabilities of the running hypotheses; at first only beam 0 is real, so the K
        # identical copies of the prompt do not fill the first step with K copies of the same token.
        running = torch.full((B, K), float("-inf"), device=device)
        running[:, 0] = 0.0
        # The finished pool: up to K hypotheses per prompt with their penalised scores and raw sums.
        pool_scores = torch.full((B, K), float("-inf"), device=device)
        pool_sums = torch.zeros((B, K), device=device)
        pool_tokens: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(B)]
        open_ = torch.ones(
            B, dtype=torch.bool, device=device
        )  # can this prompt still improve its pool?
        steps = 0
        for n in range(max_new_tokens):
            steps = n + 1
            ctx_ids, ctx_mask = _crop(ids, mask, block_size)
            logits = model(ctx_ids, attention_mask=ctx_mask).logits[:, -1].float()  # (B K, V)
            V = logits.size(-1)
            logp = torch.log_softmax(logits, dim=-1).view(B, K, V) + running[:, :, None]
            cand, flat = torch.topk(logp.view(B, K * V), k=min(2 * K, K * V), dim=-1)  # (B, 2K)
            beam, token = flat // V, flat % V
            last = n == max_new_tokens - 1
            ends = (
                torch.ones_like(token, dtype=torch.bool)
                if last
                else torch.zeros_like(token, dtype=torch.bool)
            )
            if eos_id is not None:
                ends = ends | (token == eos_id)
            # Only the K best candidates may finish, and only while the prompt's pool can improve.
            top_k = torch.arange(cand.size(1), device=device)[None, :] < K
            finishing = ends & top_k & open_[:, None] & torch.isfinite(cand)
            penalised = cand / float(n + 1) ** length_penalty
            prefix = ids[:, -(n):] if n > 0 else ids[:, :0]  # generated tokens so far, (B K, n)
            prefix = prefix.view(B, K, n)
            for b, j in finishing.nonzero().tolist():
                worst = int(torch.argmin(pool_scores[b]))
                if penalised[b, j] > pool_scores[b, worst]:
                    pool_scores[b, worst] = penalised[b, j]
                    pool_sums[b, worst] = cand[b, j]
                    pool_tokens[b][worst] = prefix[b, beam[b, j]].tolist() + [int(token[b, j])]
            if last:
                break
            # The K best candidates that did not end carry on.
            alive = torch.where(ends, neg, cand)
            keep_score, keep = torch.topk(alive, k=K, dim=-1)  # (B, K), sorted best first
            src = (beam.gather(1, keep) + torch.arange(B, device=device)[:, None] * K).view(-1)
            ids = torch.cat([ids[src], token.gather(1, keep).view(-1, 1)], dim=1)
            mask = torch.cat([mask[src], torch.ones_like(mask[src, :1])], dim=1)
            running = keep_score
            # A prompt stops when its pool is full and its best running hypothesis, judged at the
            # current length, cannot beat the pool's worst member.
            full = torch.isfinite(pool_scores).all(dim=1)
            best_possible = running[:, 0] / float(n + 1) ** length_penalty
            open_ = open_ & ~(full & (best_possible <= pool_scores.min(dim=1).values))
            if not bool(open_.any()):
                break
        best = pool_scores.argmax(dim=1)
        scores = pool_scores.gather(1, best[:, None]).squeeze(1).cpu()
        sums = pool_sums.gather(1, best[:, None]).squeeze(1).cpu()
        completions = [pool_tokens[b][int(best[b])] for b in range(B)]
        return BeamSearchOutput(completions, scores, sums, steps)
