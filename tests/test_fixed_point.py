"""Batched fixed-point solvers: accuracy, acceleration, per-sample stopping, divergence."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from ponder.solvers.fixed_point import METHODS, solve

BATCH, N = 4, 8


def contraction(norm: float, seed: int, batch: int = BATCH, n: int = N) -> torch.Tensor:
    """Random (batch, n, n) matrices with spectral norm exactly `norm`."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    return a * (norm / torch.linalg.matrix_norm(a, ord=2))[:, None, None]


def slow_contraction(seed: int) -> torch.Tensor:
    """(B, n, n) symmetric matrices with eigenvalues spread over [-0.95, 0.95]: norm and rate 0.95."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(BATCH, N, N, generator=gen, dtype=torch.float64))
    eigenvalues = torch.linspace(-0.95, 0.95, N, dtype=torch.float64)
    return q @ torch.diag_embed(eigenvalues.expand(BATCH, N)) @ q.transpose(1, 2)


def affine(a: torch.Tensor, b: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(z) = A z + b per sample; z is (B, n)."""
    return lambda z: (a @ z[..., None]).squeeze(-1) + b


def exact_affine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    return torch.linalg.solve(eye - a, b)  # (B, n)


@pytest.mark.parametrize("method", METHODS)
def test_affine_fixed_point_matches_exact(method: str) -> None:
    norms = torch.tensor([0.5, 0.6, 0.75, 0.9], dtype=torch.float64)
    a = contraction(1.0, seed=0) * norms[:, None, None]
    b = torch.randn(BATCH, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = solve(affine(a, b), torch.zeros(BATCH, N, dtype=torch.float64), method=method, max_iter=300, tol=1e-10)
    assert result.trace.converged.all()
    assert not result.trace.diverged.any()
    torch.testing.assert_close(result.z, exact_affine(a, b), atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_nonlinear_fixed_point(method: str) -> None:
    w = contraction(0.8, seed=2)
    x = torch.randn(BATCH, N, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh((w @ z[..., None]).squeeze(-1) + x)

    result = solve(f, torch.zeros(BATCH, N, dtype=torch.float64), method=method, max_iter=200, tol=1e-10)
    assert result.trace.converged.all()
    assert (f(result.z) - result.z).norm(dim=1).max() < 1e-8


def test_acceleration_beats_plain_iteration() -> None:
    a = slow_contraction(seed=4)
    b = torch.randn(BATCH, N, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    z0 = torch.zeros(BATCH, N, dtype=torch.float64)
    counts = {}
    for method in METHODS:
        result = solve(affine(a, b), z0, method=method, max_iter=1000, tol=1e-8)
        assert result.trace.converged.all(), method
        counts[method] = int(result.trace.iterations.max())
    print("iterations to tol 1e-8 at contraction 0.95, history 5:", counts)
    assert counts["anderson"] < counts["iteration"] / 4
    assert counts["broyden"] < counts["iteration"] / 4
    assert counts["bad_broyden"] < counts["iteration"] / 4


@pytest.mark.parametrize("method", METHODS)
def test_easy_sample_stops_early_and_stays_frozen(method: str) -> None:
    norms = torch.tensor([0.05, 0.95], dtype=torch.float64)
    a = contraction(1.0, seed=6, batch=2) * norms[:, None, None]
    b = torch.randn(2, N, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    z0 = torch.zeros(2, N, dtype=torch.float64)
    long = solve(affine(a, b), z0, method=method, max_iter=400, tol=1e-9, history=3)
    easy_iters, hard_iters = long.trace.iterations.tolist()
    assert long.trace.converged.all()
    assert easy_iters < hard_iters
    short = solve(affine(a, b), z0, method=method, max_iter=easy_iters, tol=1e-9, history=3)
    assert short.trace.converged.tolist() == [True, False]
    assert torch.equal(short.z[0], long.z[0])
    # a frozen sample's trace repeats its final residual
    assert (long.trace.residuals[easy_iters:, 0] == long.trace.residuals[easy_iters - 1, 0]).all()


def test_linear_blow_up_is_diverged_and_finite() -> None:
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    result = solve(lambda z: 2 * z + 1, z0, method="iteration", max_iter=100)
    assert result.trace.diverged.all()
    assert not result.trace.converged.any()
    assert torch.isfinite(result.z).all() and torch.isfinite(result.trace.residuals).all()
    assert (result.trace.iterations < 100).all()
    # the returned z is the iterate with the lowest relative residual seen
    fz = 2 * result.z + 1
    returned = (fz - result.z).norm(dim=1) / fz.norm(dim=1)
    torch.testing.assert_close(returned, result.trace.residuals.min(dim=0).values)


@pytest.mark.parametrize("method", ["anderson", "broyden", "bad_broyden"])
def test_secant_methods_solve_expanding_affine_map(method: str) -> None:
    """Plain iteration blows up on f(z) = 2 z + 1, but its fixed point -1 is still found by
    methods that fit the map's slope."""
    result = solve(lambda z: 2 * z + 1, torch.zeros(2, 3, dtype=torch.float64), method=method, tol=1e-10)
    assert result.trace.converged.all() and not result.trace.diverged.any()
    torch.testing.assert_close(result.z, torch.full((2, 3), -1.0, dtype=torch.float64))


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_map_marks_only_that_sample(method: str) -> None:
    a = contraction(0.5, seed=8, batch=2)
    b = torch.randn(2, N, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    calls = {"n": 0}

    def f(z: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = affine(a, b)(z)
        if calls["n"] > 3:
            out[1] = float("nan") if calls["n"] % 2 else float("inf")
        return out

    result = solve(f, torch.zeros(2, N, dtype=torch.float64), method=method, max_iter=100, tol=1e-10)
    assert result.trace.converged.tolist() == [True, False]
    assert result.trace.diverged.tolist() == [False, True]
    assert result.trace.iterations[1] == 4
    assert torch.isfinite(result.z).all() and torch.isfinite(result.trace.residuals).all()
    torch.testing.assert_close(result.z[0], exact_affine(a, b)[0], atol=1e-8, rtol=0)
    # sample 1 returns its best of the three finite iterates: the last one
    assert result.trace.residuals[3, 1] == result.trace.residuals[2, 1]


@pytest.mark.parametrize("method", METHODS)
def test_multi_axis_state(method: str) -> None:
    length, dim = 3, 4
    a = contraction(0.7, seed=10, n=length * dim)
    b = torch.randn(BATCH, length, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(11))

    def f(z: torch.Tensor) -> torch.Tensor:
        assert z.shape == (BATCH, length, dim)
        return affine(a, b.reshape(BATCH, -1))(z.reshape(BATCH, -1)).reshape(BATCH, length, dim)

    result = solve(f, torch.zeros(BATCH, length, dim, dtype=torch.float64), method=method, max_iter=200, tol=1e-10)
    assert result.z.shape == (BATCH, length, dim)
    expected = exact_affine(a, b.reshape(BATCH, -1)).reshape(BATCH, length, dim)
    torch.testing.assert_close(result.z, expected, atol=1e-6, rtol=0)


def test_runs_without_grad() -> None:
    w = torch.full((N,), 0.5, dtype=torch.float64, requires_grad=True)
    result = solve(lambda z: w * z + 1, torch.zeros(2, N, dtype=torch.float64))
    assert not result.z.requires_grad


def test_unknown_method_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="iteration, anderson, broyden, bad_broyden"):
        solve(lambda z: z, torch.zeros(1, 2), method="newton")


@pytest.mark.parametrize("good", [True, False], ids=["good", "bad"])
@pytest.mark.parametrize("rank", [1, 3])
def test_broyden_secant_condition_after_every_update_across_restarts(good: bool, rank: int) -> None:
    """After each rank-one update H y = s holds for the newest pair, also right after H
    restarts from -I (every `rank` updates), and H applies only the filled slots."""
    from ponder.solvers.fixed_point import _Broyden

    w = slow_contraction(seed=7)
    x = torch.randn(BATCH, N, dtype=torch.float64, generator=torch.Generator().manual_seed(8))

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh((w @ z[..., None]).squeeze(-1) + x)

    z = torch.zeros(BATCH, N, dtype=torch.float64)
    stepper = _Broyden(z, rank=rank, damping=1.0, good=good)
    active = torch.ones(BATCH, dtype=torch.bool)
    checked = 0
    for k in range(3 * rank + 2):
        fz = f(z)
        g = fz - z
        previous = (stepper.prev_z, stepper.prev_g)
        z_next = stepper.step(z, fz, active)
        if previous[0] is not None:
            s, y = z - previous[0], g - previous[1]
            assert stepper.stored == (k - 1) % rank + 1  # restarted after `rank` updates
            relative = (stepper._h(y) - s).norm(dim=1) / s.norm(dim=1)
            assert relative.max() < 1e-9, (k, relative)
            checked += 1
        z = z_next
    assert checked == 3 * rank + 1


def test_broyden_history_size_does_not_change_early_iterations() -> None:
    """Unfilled slots cost nothing and change nothing: before the first restart, ranks 5
    and 30 take identical steps."""
    w = slow_contraction(seed=9)
    x = torch.randn(BATCH, N, dtype=torch.float64, generator=torch.Generator().manual_seed(10))

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh((w @ z[..., None]).squeeze(-1) + x)

    z0 = torch.zeros(BATCH, N, dtype=torch.float64)
    small = solve(f, z0, method="broyden", history=5, max_iter=6, tol=1e-14)
    large = solve(f, z0, method="broyden", history=30, max_iter=6, tol=1e-14)
    torch.testing.assert_close(small.z, large.z, atol=0, rtol=0)
