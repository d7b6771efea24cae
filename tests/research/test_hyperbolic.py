import math

import pytest
import torch

from llmbook.research.hyperbolic import (
    conformal_factor,
    distance,
    expmap,
    mobius_add,
    project,
    riemannian_grad,
    rsgd_step,
)

geoopt = pytest.importorskip("geoopt")


def random_points(n, d, c, generator, radius=0.9):
    """Points spread over the ball of radius 1/sqrt(c), up to ``radius`` of the way to its edge."""
    direction = torch.randn(n, d, generator=generator, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    r = torch.rand(n, 1, generator=generator, dtype=torch.float64) * radius / math.sqrt(c)
    return direction * r


@pytest.mark.parametrize("c", [1.0, 0.5, 2.0])
def test_distance_mobius_and_expmap_equal_geoopt(c):
    g = torch.Generator().manual_seed(0)
    ball = geoopt.PoincareBall(c=c)
    # Inside 0.7 of the radius and short steps: geoopt clips results to (1 - 1e-5) of the radius.
    x, y = random_points(64, 5, c, g, radius=0.7), random_points(64, 5, c, g, radius=0.7)
    v = 0.1 * torch.randn(64, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(distance(x, y, c), ball.dist(x, y))
    torch.testing.assert_close(mobius_add(x, y, c), ball.mobius_add(x, y))
    torch.testing.assert_close(expmap(x, v, c), ball.expmap(x, v))
    torch.testing.assert_close(riemannian_grad(x, v, c), ball.egrad2rgrad(x, v))


def test_the_two_forms_of_the_distance_agree():
    g = torch.Generator().manual_seed(4)
    x, y = random_points(50, 3, 1.0, g), random_points(50, 3, 1.0, g)
    arg = 1 + 2 * (x - y).pow(2).sum(-1) / ((1 - x.pow(2).sum(-1)) * (1 - y.pow(2).sum(-1)))
    torch.testing.assert_close(distance(x, y), torch.acosh(arg))


def test_distance_by_hand_from_the_origin():
    # d(0, r e) = 2 artanh(r) for c = 1.
    r = torch.tensor([0.0, 0.3, 0.9], dtype=torch.float64)
    x = torch.stack([r, torch.zeros_like(r)], -1)
    torch.testing.assert_close(
        distance(torch.zeros_like(x), x), 2 * torch.atanh(r), atol=1e-6, rtol=0
    )


def test_distance_is_a_metric_on_samples():
    g = torch.Generator().manual_seed(1)
    x, y, z = (random_points(200, 3, 1.0, g) for _ in range(3))
    dxy, dyz, dxz = distance(x, y), distance(y, z), distance(x, z)
    torch.testing.assert_close(dxy, distance(y, x))
    assert (dxz <= dxy + dyz + 1e-9).all()
    assert distance(x, x).max() < 1e-3


def test_the_conformal_factor_grows_towards_the_boundary():
    x = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.99, 0.0]], dtype=torch.float64)
    lam = conformal_factor(x).squeeze(-1)
    want = torch.tensor([2.0, 2 / 0.75, 2 / (1 - 0.99**2)], dtype=torch.float64)
    torch.testing.assert_close(lam, want)


def test_mobius_identity_and_inverse():
    g = torch.Generator().manual_seed(2)
    x = random_points(10, 4, 1.0, g)
    torch.testing.assert_close(mobius_add(x, torch.zeros_like(x)), x)
    torch.testing.assert_close(mobius_add(-x, x), torch.zeros_like(x), atol=1e-12, rtol=0)


def test_expmap_moves_the_length_of_the_tangent_vector():
    # A geodesic with velocity v covers distance lambda_x * |v| in unit time.
    g = torch.Generator().manual_seed(3)
    x = random_points(20, 3, 1.0, g, radius=0.6)
    v = 0.05 * torch.randn(20, 3, generator=g, dtype=torch.float64)
    moved = distance(x, expmap(x, v))
    torch.testing.assert_close(moved, conformal_factor(x).squeeze(-1) * v.norm(dim=-1))


def test_project_pulls_points_inside_and_leaves_inner_points():
    x = torch.tensor([[2.0, 0.0], [0.1, 0.2]])
    out = project(x, 1.0, eps=1e-3)
    assert out[0].norm() == pytest.approx(1 - 1e-3)
    torch.testing.assert_close(out[1], x[1])


@pytest.mark.parametrize("c", [0.0, -1.0, math.nan, math.inf, True])
def test_bad_curvature_names_the_argument(c):
    with pytest.raises(ValueError, match="^c:"):
        distance(torch.zeros(1, 2), torch.zeros(1, 2), c)


@pytest.mark.parametrize("exact", [True, False])
def test_rsgd_pulls_two_points_together_and_stays_in_the_ball(exact):
    x = torch.tensor([[0.5, 0.0], [-0.5, 0.3]], dtype=torch.float64, requires_grad=True)
    before = float(distance(x[0], x[1]).detach())
    for _ in range(50):
        x.grad = None
        distance(x[0], x[1]).backward()
        rsgd_step(x, 0.1, exact=exact)
    assert float(distance(x[0], x[1]).detach()) < 0.5 * before
    assert (x.detach().norm(dim=-1) < 1).all()


def test_rsgd_refuses_a_bad_rate_and_a_missing_gradient():
    x = torch.zeros(2, 2, requires_grad=True)
    with pytest.raises(ValueError, match="^x:"):
        rsgd_step(x, 0.1)
    x.grad = torch.ones(2, 2)
    with pytest.raises(ValueError, match="^lr:"):
        rsgd_step(x, math.nan)
