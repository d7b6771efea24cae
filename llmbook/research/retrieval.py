"""Reading a predicted sentence vector by retrieval, and scoring next-sentence prediction that way.

A concept model outputs a vector, not text. Without a decoder the vector is read by retrieval: the
nearest of a set of candidate sentences by cosine. :func:`build_retrieval_task` lays out held-out
positions, each with the true next sentence among N candidates (distractors from other documents, or
from the same document); :func:`rank_of_true` ranks the truth for any set of query vectors, whether
they come from the model (:func:`model_queries`) or from a baseline (:func:`previous_queries`,
:func:`context_mean_queries`); :func:`accuracy_by_document` turns ranks into per-document top-k
accuracy, the unit over which the book computes confidence intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DISTRACTORS = ("other", "same")


@dataclass(frozen=True)
class RetrievalTask:
    """Held-out positions, each with its context and its candidate next sentences.

    All indices point into one table of sentence vectors ``(M, E)``: the documents laid end to end.
    The context of a position is ``start .. target - 1`` (inside one document).

    Introduced in {doc}`/book/part10/06-concepts`.
    """

    doc: torch.Tensor
    """Document of each position ``(P,)``."""
    target: torch.Tensor
    """Index of the true next sentence ``(P,)``."""
    start: torch.Tensor
    """Index of the first context sentence ``(P,)``."""
    candidates: torch.Tensor
    """Candidate indices ``(P, N)``; column 0 is the target, the others are distractors."""
    distractors: str
    """``"other"`` (random sentences of other documents) or ``"same"`` (of the same document)."""
    skipped: int
    """Positions left out because the document had too few sentences to draw distractors from."""

    @property
    def n_candidates(self) -> int:
        """N, the number of candidates per position (the truth included)."""
        return int(self.candidates.size(1))


def build_retrieval_task(
    lengths: Sequence[int],
    *,
    n_candidates: int,
    window: int,
    distractors: str = "other",
    seed: int = 0,
) -> RetrievalTask:
    """Lay out next-sentence retrieval over documents of the given lengths.

    Every sentence but a document's first is a target; its context is the up to ``window``
    sentences before it in the same document. Its ``n_candidates - 1`` distractors are drawn
    uniformly without replacement: with ``"other"`` from the sentences of all other documents
    (a topic is usually enough to tell the truth apart), with ``"same"`` from the sentences of the
    same document outside the context and the target (which tests order, not topic: the context and
    the target are excluded so that a query equal to a context sentence does not retrieve it).
    Positions whose document lacks enough such sentences are skipped and counted.

    :param lengths: sentences per document, in the order of the vector table.
    :param n_candidates: N, candidates per position, the truth included (at least 2).
    :param window: the most context sentences (at least 1).
    :param distractors: ``"other"`` or ``"same"``.
    :param seed: seeds the draw.
    :returns: the :class:`RetrievalTask`.
    :raises ValueError: for a bad argument, or when no position can be built.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    if distractors not in DISTRACTORS:
        raise ValueError(f"distractors: must be one of {DISTRACTORS}, got {distractors!r}")
    if n_candidates < 2:
        raise ValueError(f"n_candidates: must be at least 2, got {n_candidates}")
    if window < 1:
        raise ValueError(f"window: must be at least 1, got {window}")
    if any(n < 0 for n in lengths):
        raise ValueError(f"lengths: must be non-negative, got {list(lengths)}")
    gen = torch.Generator().manual_seed(seed)
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    total = offsets[-1]
    rows, skipped = [], 0
    for d, n in enumerate(lengths):
        off = offsets[d]
        for t in range(1, n):
            lo = max(0, t - window)
            if distractors == "other":
                pool_size = total - n
            else:
                pool_size = n - (t - lo + 1)
            if pool_size < n_candidates - 1:
                skipped += 1
                continue
            pick = torch.randperm(pool_size, generator=gen)[: n_candidates - 1]
            if distractors == "other":
                # Indices 0..total-n-1 skip over this document's block.
                picked = pick + (pick >= off).long() * n
            else:
                # Indices into the document without lo..t.
                picked = off + pick + (pick >= lo).long() * (t - lo + 1)
            rows.append((d, off + t, off + lo, torch.cat([torch.tensor([off + t]), picked])))
    if not rows:
        raise ValueError(
            "lengths: no position has enough distractors; use longer or more documents, or a "
            "smaller n_candidates"
        )
    return RetrievalTask(
        doc=torch.tensor([r[0] for r in rows]),
        target=torch.tensor([r[1] for r in rows]),
        start=torch.tensor([r[2] for r in rows]),
        candidates=torch.stack([r[3] for r in rows]),
        distractors=distractors,
        skipped=skipped,
    )


def rank_of_true(
    queries: torch.Tensor, vectors: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    r"""The rank of the true candidate (column 0) under cosine similarity to each query.

    $$r_i = \#\{\,j \ge 1 : \cos(q_i, v_{c_{ij}}) \ge \cos(q_i, v_{c_{i0}})\,\}$$

    Rank 0 means the truth is retrieved first; ties count against the truth, so a constant query
    (or a zero vector) never looks better than chance.

    :param queries: ``(P, E)``, any length.
    :param vectors: the sentence table ``(M, E)``.
    :param candidates: indices ``(P, N)`` into ``vectors``, the truth in column 0.
    :returns: ranks ``(P,)`` in ``0 .. N - 1``; top-k accuracy is ``(ranks < k).float().mean()``.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    q = F.normalize(queries.float(), dim=-1)  # (P, E)
    c = F.normalize(vectors.float(), dim=-1)[candidates]  # (P, N, E)
    scores = torch.einsum("pe,pne->pn", q, c)  # (P, N)
    return (scores[:, 1:] >= scores[:, :1]).sum(1)


def previous_queries(vectors: torch.Tensor, task: RetrievalTask) -> torch.Tensor:
    """Baseline: the next sentence looks like the previous one.

    :param vectors: the sentence table ``(M, E)``.
    :param task: the positions.
    :returns: queries ``(P, E)``: the vector of the sentence before each target.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    return vectors[task.target - 1]


def context_mean_queries(vectors: torch.Tensor, task: RetrievalTask) -> torch.Tensor:
    """Baseline: the next sentence looks like the average of the context (its topic).

    :param vectors: the sentence table ``(M, E)``.
    :param task: the positions.
    :returns: queries ``(P, E)``: the mean of the context vectors ``start .. target - 1``.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    cs = torch.cat([vectors.new_zeros(1, vectors.size(1)), vectors.cumsum(0)])  # (M + 1, E)
    n = (task.target - task.start).unsqueeze(-1).to(vectors.dtype)  # (P, 1)
    return (cs[task.target] - cs[task.start]) / n


@torch.no_grad()
def model_queries(
    model: torch.nn.Module, vectors: torch.Tensor, task: RetrievalTask, *, chunk: int = 256
) -> torch.Tensor:
    """The model's predictions of each target from its context.

    Contexts are right-padded to the longest one and run in chunks; causal attention keeps the
    padding out, so each prediction is read at the context's last real position.

    :param model: a :class:`~llmbook.research.concepts.ConceptModel` (put in eval mode).
    :param vectors: the sentence table ``(M, E)``.
    :param task: the positions; contexts must fit the model's ``block_size``.
    :param chunk: positions per forward pass.
    :returns: queries ``(P, E)``.
    :raises ValueError: when a context is longer than the model's ``block_size``.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    lengths = task.target - task.start  # (P,)
    T = int(lengths.max())
    if T > model.config.block_size:
        raise ValueError(
            f"task: contexts of {T} sentences exceed block_size {model.config.block_size}"
        )
    offsets = torch.arange(T)  # (T,)
    out = []
    for s in range(0, len(lengths), chunk):
        start, n = task.start[s : s + chunk], lengths[s : s + chunk]
        idx = (start[:, None] + offsets).clamp(max=vectors.size(0) - 1)  # (B, T)
        real = offsets < n[:, None]  # (B, T)
        x = vectors[idx] * real.unsqueeze(-1)  # (B, T, E), zeros after the context
        pred = model(x)  # (B, T, E)
        out.append(pred[torch.arange(len(n)), n - 1])  # (B, E)
    return torch.cat(out)


def accuracy_by_document(ranks: torch.Tensor, doc: torch.Tensor, k: int) -> dict[int, float]:
    """Top-k accuracy of each document's positions.

    Positions of one document share its topic and style, so they are not independent; the book
    treats documents as the units of a confidence interval
    (:func:`~llmbook.experiments.stats.mean_ci` over these values).

    :param ranks: from :func:`rank_of_true` ``(P,)``.
    :param doc: document of each position ``(P,)``.
    :param k: count a hit when the rank is below ``k``.
    :returns: document index -> fraction of its positions with ``rank < k``.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    if k < 1:
        raise ValueError(f"k: must be at least 1, got {k}")
    hits = (ranks < k).double()
    out = {}
    for d in torch.unique(doc).tolist():
        sel = doc == d
        out[int(d)] = float(hits[sel].mean())
    return out


def nearest_sentences(
    query: torch.Tensor, vectors: torch.Tensor, k: int = 3, exclude: Sequence[int] = ()
) -> tuple[list[int], list[float]]:
    """Retrieval as decoding: the ``k`` sentences nearest to a vector by cosine.

    :param query: one vector ``(E,)``.
    :param vectors: the candidate sentences ``(M, E)``.
    :param k: how many to return.
    :param exclude: indices never returned (e.g. the context itself).
    :returns: ``(indices, cosines)``, best first.

    Introduced in {doc}`/book/part10/06-concepts`.
    """
    scores = F.normalize(vectors.float(), dim=-1) @ F.normalize(query.float(), dim=0)  # (M,)
    if exclude:
        scores[torch.as_tensor(list(exclude))] = float("-inf")
    top = scores.topk(min(k, int(torch.isfinite(scores).sum())))
    return top.indices.tolist(), top.values.tolist()
