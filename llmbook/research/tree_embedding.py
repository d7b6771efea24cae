r"""Embedding a hierarchy in the Poincaré ball or in Euclidean space, and scoring the embedding.

Training follows Nickel and Kiela (2017): for every pair $(u, v)$ of the tree's transitive closure in
which $v$ is an ancestor of $u$, a softmax over distances pulls $v$ towards $u$ and pushes away $k$
sampled nodes $v'$ that are neither ancestors nor descendants of $u$:

$$\mathcal L = -\log \frac{e^{-d(u, v)}}{e^{-d(u, v)} + \sum_{v'} e^{-d(u, v')}} .$$

Introduced in {doc}`/book/part10/07-hyperbolic`.
"""

from __future__ import annotations

import math

import torch

from llmbook.research.hyperbolic import distance, project, rsgd_step
from llmbook.research.trees import Tree

GEOMETRIES = ("poincare", "euclidean")
"""Where :func:`embed_tree` places the nodes."""


def pairwise_distances(emb: torch.Tensor, geometry: str, c: float = 1.0) -> torch.Tensor:
    """All distances between the rows of an embedding.

    :param emb: ``(N, d)`` points.
    :param geometry: ``"poincare"`` or ``"euclidean"``.
    :param c: the ball's curvature magnitude.
    :returns: ``(N, N)``.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    if geometry == "poincare":
        return torch.stack([distance(emb[i], emb, c) for i in range(len(emb))])
    return torch.cdist(emb, emb)


def embed_tree(
    tree: Tree,
    dim: int,
    *,
    geometry: str = "poincare",
    epochs: int = 100,
    lr: float = 1.0,
    negatives: int = 10,
    batch_size: int = 10,
    burn_in: int = 10,
    seed: int = 0,
    c: float = 1.0,
) -> tuple[torch.Tensor, list[float]]:
    """Fit an embedding of ``tree``'s transitive closure with the loss above.

    Points start uniformly in $[-10^{-3}, 10^{-3}]^d$. The first ``burn_in`` epochs use a tenth of the
    learning rate, so that the initial, nearly random directions settle before large steps. Poincaré
    embeddings take Riemannian SGD steps (:func:`~llmbook.research.hyperbolic.rsgd_step`); Euclidean
    ones plain SGD.

    :param tree: the hierarchy.
    :param dim: embedding dimension d.
    :param geometry: ``"poincare"`` or ``"euclidean"``.
    :param epochs: passes over the closure's pairs.
    :param lr: the learning rate after the burn-in.
    :param negatives: unrelated nodes sampled per pair (k).
    :param batch_size: pairs per step.
    :param burn_in: epochs at ``lr / 10`` at the start.
    :param seed: seeds the initial points, the pair order and the negatives.
    :param c: the ball's curvature magnitude.
    :returns: the ``(N, d)`` embedding and the mean loss of each epoch.
    :raises ValueError: for a single-node tree, an unknown geometry, a non-positive size or a rate
        that is not a finite positive number.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry: must be one of {GEOMETRIES}, got {geometry!r}")
    for name, value in (
        ("dim", dim),
        ("epochs", epochs),
        ("negatives", negatives),
        ("batch_size", batch_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
        raise ValueError(f"burn_in: must be an integer >= 0, got {burn_in!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0.0 < lr < math.inf:
        raise ValueError(f"lr: must be a finite number > 0, got {lr!r}")
    if len(tree) < 2:
        raise ValueError("tree: has a single node, so there is no pair to embed")
    g = torch.Generator().manual_seed(seed)
    n = len(tree)
    closure = tree.closure()
    related = torch.eye(n, dtype=torch.bool)
    related[closure[:, 0], closure[:, 1]] = True
    related[closure[:, 1], closure[:, 0]] = True
    # (descendant, ancestor): each node learns to find its ancestors nearer than anything unrelated,
    # which only a tree-like geometry allows (siblings are unrelated, yet near in the tree).
    pairs = closure.flip(1)
    emb = ((torch.rand(n, dim, generator=g, dtype=torch.float64) * 2 - 1) * 1e-3).requires_grad_()
    losses = []
    for epoch in range(epochs):
        rate = lr / 10 if epoch < burn_in else lr
        order = pairs[torch.randperm(len(pairs), generator=g)]
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]  # (B, 2)
            u, v = batch[:, 0], batch[:, 1]
            cand = torch.randint(0, n, (len(batch), negatives), generator=g)  # (B, k)
            # A sampled node related to u is not a negative: replace it by v, which adds a duplicate
            # of the positive term rather than a wrong one (the softmax stays well defined).
            cand = torch.where(related[u[:, None], cand], v[:, None], cand)
            targets = torch.cat([v[:, None], cand], dim=1)  # (B, 1 + k), the positive first
            if geometry == "poincare":
                d = distance(emb[u][:, None, :], emb[targets], c)  # (B, 1 + k)
            else:
                d = (emb[u][:, None, :] - emb[targets]).norm(dim=-1)
            loss = torch.nn.functional.cross_entropy(-d, torch.zeros(len(batch), dtype=torch.long))
            emb.grad = None
            loss.backward()
            if geometry == "poincare":
                rsgd_step(emb, rate, c)
            else:
                with torch.no_grad():
                    emb -= rate * emb.grad
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(pairs))
    out = emb.detach()
    return (project(out, c) if geometry == "poincare" else out), losses


def mean_average_precision(dist: torch.Tensor, tree: Tree) -> float:
    """Reconstruction mean average precision: for every node, rank all others by distance and
    average the precision at the rank of each node it is related to (ancestor or descendant).

    Nodes at equal distance count as one cut, as in scikit-learn's ``average_precision_score``: the
    precision at a relative is the share of relatives among all nodes no farther away, so the score
    does not depend on how the nodes are numbered.

    :param dist: ``(N, N)`` embedding distances.
    :param tree: the hierarchy (its closure defines who is related).
    :returns: MAP in [0, 1]; 1 when every node's relatives are its nearest neighbours.
    :raises ValueError: for a tree of one node (no node has a relative).

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    n = len(tree)
    if n < 2:
        raise ValueError("tree: has a single node, so no node has a relative to rank")
    pairs = tree.closure()
    related = torch.zeros(n, n, dtype=torch.bool)
    related[pairs[:, 0], pairs[:, 1]] = True
    related[pairs[:, 1], pairs[:, 0]] = True
    aps = []
    for u in range(n):
        others = torch.arange(n) != u
        d, rel = dist[u][others], related[u][others]
        at = d[rel][:, None]  # (R, 1): the distance of each relative
        within = (d[None, :] <= at).sum(-1)  # (R,) nodes no farther than that relative
        relatives_within = (d[rel][None, :] <= at).sum(-1)  # (R,) of them relatives
        aps.append(float((relatives_within.double() / within).mean()))
    return sum(aps) / len(aps)


def distortion(dist: torch.Tensor, graph: torch.Tensor) -> float:
    r"""Average distortion of the tree's path lengths, free of the embedding's overall scale:
    with $r_{ij} = d(i, j) / d_G(i, j)$ over all pairs $i < j$, the mean of $|r_{ij}/\bar r - 1|$.

    0 means every distance is the path length times one common factor.

    :param dist: ``(N, N)`` embedding distances.
    :param graph: ``(N, N)`` path lengths (see :meth:`~llmbook.research.trees.Tree.graph_distances`).
    :returns: the average relative distortion.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    i, j = torch.triu_indices(len(graph), len(graph), offset=1)
    ratio = dist[i, j].double() / graph[i, j]
    return float((ratio / ratio.mean() - 1).abs().mean())
