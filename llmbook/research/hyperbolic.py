r"""The Poincaré ball: distance, Möbius addition, the exponential map and Riemannian SGD.

The ball $\mathbb B^d_c = \{x \in \mathbb R^d : c\lVert x\rVert^2 < 1\}$ with curvature $-c$ carries the
metric $g_x = \lambda_x^2\, g^E$, conformal to the Euclidean one with the factor

$$\lambda_x = \frac{2}{1 - c\lVert x\rVert^2},$$

which grows without bound towards the boundary: near it, a small Euclidean step is a long hyperbolic
one, which is why the ball has room for trees whose number of nodes grows exponentially with depth.

Introduced in {doc}`/book/part10/07-hyperbolic`.
"""

from __future__ import annotations

import math

import torch

MIN_NORM = 1e-15
"""Norms are clamped below by this before dividing, so that the origin has a defined map."""
BOUNDARY_EPS = 1e-5
""":func:`project` keeps points this far (relative) inside the ball's boundary, in float32."""


def _check_c(c: float) -> float:
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 < c < math.inf:
        raise ValueError(f"c: the curvature magnitude must be a finite number > 0, got {c!r}")
    return float(c)


def conformal_factor(x: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    r"""$\lambda_x = 2 / (1 - c\lVert x\rVert^2)$, the scale of the metric at ``x``.

    :param x: points ``(..., d)`` inside the ball.
    :param c: the curvature magnitude (the ball has radius $1/\sqrt c$).
    :returns: ``(..., 1)``.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    c = _check_c(c)
    return 2.0 / (1.0 - c * x.pow(2).sum(-1, keepdim=True)).clamp_min(MIN_NORM)


def project(x: torch.Tensor, c: float = 1.0, eps: float = BOUNDARY_EPS) -> torch.Tensor:
    """Pull points that left the ball (or came too close to its edge) back inside it, along their ray.

    :param x: points ``(..., d)``.
    :param c: the curvature magnitude.
    :param eps: the relative margin kept from the boundary.
    :returns: points with norm at most ``(1 - eps) / sqrt(c)``.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    c = _check_c(c)
    limit = (1.0 - eps) / math.sqrt(c)
    norm = x.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    return torch.where(norm > limit, x / norm * limit, x)


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    r"""Möbius addition, the ball's analogue of $x + y$:

    $$x \oplus_c y = \frac{(1 + 2c\langle x, y\rangle + c\lVert y\rVert^2)\,x + (1 - c\lVert x\rVert^2)\,y}
    {1 + 2c\langle x, y\rangle + c^2\lVert x\rVert^2\lVert y\rVert^2}.$$

    It is neither commutative nor associative; $0$ is its identity and $(-x) \oplus_c x = 0$.

    :param x: points ``(..., d)``.
    :param y: points ``(..., d)``, broadcastable with ``x``.
    :param c: the curvature magnitude.
    :returns: ``(..., d)``.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    c = _check_c(c)
    xy = (x * y).sum(-1, keepdim=True)
    x2 = x.pow(2).sum(-1, keepdim=True)
    y2 = y.pow(2).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    return num / (1 + 2 * c * xy + c**2 * x2 * y2).clamp_min(MIN_NORM)


def distance(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    r"""The geodesic distance on the ball:

    $$d_c(x, y) = \frac{1}{\sqrt c}\operatorname{arcosh}\!\left(1 + \frac{2c\lVert x - y\rVert^2}
    {(1 - c\lVert x\rVert^2)(1 - c\lVert y\rVert^2)}\right)
    = \frac{2}{\sqrt c}\operatorname{artanh}\!\big(\sqrt c\,\lVert (-x) \oplus_c y\rVert\big),$$

    computed in the second form.

    :param x: points ``(..., d)``.
    :param y: points ``(..., d)``, broadcastable with ``x``.
    :param c: the curvature magnitude.
    :returns: ``(...)`` distances.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    c = _check_c(c)
    sqrt_c = math.sqrt(c)
    # The same distance as 2/sqrt(c) artanh(sqrt(c) |(-x) + y|) with Moebius addition: exactly 0 at
    # x = y (the arcosh form is 0 only up to rounding there, and its gradient is infinite).
    norm = mobius_add(-x, y, c).norm(dim=-1).clamp_min(MIN_NORM)
    return 2 / sqrt_c * torch.atanh((sqrt_c * norm).clamp_max(1 - 1e-15))


def expmap(x: torch.Tensor, v: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    r"""Follow the geodesic from ``x`` with initial velocity ``v`` for unit time:

    $$\exp^c_x(v) = x \oplus_c \left(\tanh\!\Big(\frac{\sqrt c\,\lambda_x \lVert v\rVert}{2}\Big)
    \frac{v}{\sqrt c\,\lVert v\rVert}\right).$$

    :param x: base points ``(..., d)``.
    :param v: tangent vectors at ``x``, ``(..., d)``.
    :param c: the curvature magnitude.
    :returns: points ``(..., d)`` on the ball.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    c = _check_c(c)
    sqrt_c = math.sqrt(c)
    norm = v.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    step = torch.tanh(sqrt_c * conformal_factor(x, c) * norm / 2) * v / (sqrt_c * norm)
    return mobius_add(x, step, c)


def riemannian_grad(x: torch.Tensor, euclidean_grad: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    r"""Turn a Euclidean gradient at ``x`` into the Riemannian one: divide by the metric,
    $\nabla_R = \lambda_x^{-2}\,\nabla_E = \big((1 - c\lVert x\rVert^2)/2\big)^2\,\nabla_E$.

    :param x: points ``(..., d)``.
    :param euclidean_grad: $\partial L / \partial x$, ``(..., d)``.
    :param c: the curvature magnitude.
    :returns: ``(..., d)``.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    return euclidean_grad / conformal_factor(x, c).pow(2)


@torch.no_grad()
def rsgd_step(x: torch.Tensor, lr: float, c: float = 1.0, *, exact: bool = True) -> None:
    r"""One Riemannian SGD step on a leaf tensor of points, in place, from its ``.grad``:
    $x \leftarrow \exp_x(-\eta\,\nabla_R)$ (``exact``), or the first-order retraction
    $x - \eta\,\nabla_R$ of Nickel and Kiela; then :func:`project`. Rows with a zero gradient stay put.

    :param x: a tensor of points ``(N, d)`` with ``requires_grad`` and a ``.grad``.
    :param lr: the learning rate $\eta$, finite and > 0.
    :param c: the curvature magnitude.
    :param exact: follow the geodesic (True) or take the straight retraction step.
    :raises ValueError: for a bad ``lr`` or when ``x`` has no gradient.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0.0 < lr < math.inf:
        raise ValueError(f"lr: must be a finite number > 0, got {lr!r}")
    if x.grad is None:
        raise ValueError("x: has no .grad; call backward() first")
    step = -lr * riemannian_grad(x, x.grad, c)
    moved = expmap(x, step, c) if exact else x + step
    x.copy_(project(moved, c))
