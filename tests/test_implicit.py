"""Differentiable equilibria: implicit and phantom gradients, Jacobian penalty."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from ponder.solvers.implicit import fixed_point

BATCH, DIM = 3, 6
TIGHT = {"method": "anderson", "max_iter": 100, "tol": 1e-12, "history": 6}
UNROLL = 300  # plain steps: 0.5 ** 300 leaves nothing of the start


class Cell(nn.Module):
    """f(z) = tanh(W z + U x + b), with ||W||_2 = 0.5 so f contracts."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.w = nn.Linear(DIM, DIM).double()  # W and b
        self.u = nn.Linear(DIM, DIM, bias=False).double()
        with torch.no_grad():
            self.w.weight.mul_(0.5 / torch.linalg.matrix_norm(self.w.weight, ord=2))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.w(z) + self.u(x))  # (B, ..., DIM)


def unrolled(f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        z = f(z)
    return z


def grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def make(seed: int, shape: tuple[int, ...]) -> tuple[Cell, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    cell = Cell(seed)
    x = torch.randn(*shape, DIM, dtype=torch.float64, requires_grad=True)
    target = torch.randn(*shape, DIM, dtype=torch.float64)
    return cell, x, target, [cell.w.weight, cell.u.weight, cell.w.bias, x]


@pytest.mark.parametrize("shape", [(BATCH,), (BATCH, 4)], ids=["B,D", "B,L,D"])
@pytest.mark.parametrize("method", ["anderson", "broyden"])
def test_implicit_gradient_matches_long_unroll(shape: tuple[int, ...], method: str) -> None:
    cell, x, target, wrt = make(0, shape)
    f = lambda z: cell(z, x)  # noqa: E731
    z0 = torch.zeros(*shape, DIM, dtype=torch.float64)

    reference = grads(((unrolled(f, z0, UNROLL) - target) ** 2).sum(), wrt)
    kwargs = {**TIGHT, "method": method}
    eq = fixed_point(f, z0, solver_kwargs=kwargs)
    assert bool(eq.trace.converged.all())
    implicit = grads(((eq.z - target) ** 2).sum(), wrt)

    assert eq.adjoint_trace is not None and bool(eq.adjoint_trace.converged.all())
    for name, got, want in zip(("W", "U", "b", "x"), implicit, reference):
        assert relative_error(got, want) < 1e-4, name


def test_implicit_gradient_through_backward_and_module_grads() -> None:
    """loss.backward() fills .grad of the module's parameters and of the input."""
    cell, x, target, wrt = make(1, (BATCH,))
    z0 = torch.zeros(BATCH, DIM, dtype=torch.float64)
    reference = grads(((unrolled(lambda z: cell(z, x), z0, UNROLL) - target) ** 2).sum(), wrt)

    eq = fixed_point(lambda z: cell(z, x), z0, solver_kwargs=TIGHT)
    ((eq.z - target) ** 2).sum().backward()
    for got, want in zip([t.grad for t in wrt], reference):
        assert got is not None and relative_error(got, want) < 1e-4


def test_differs_from_one_step_gradient() -> None:
    """The adjoint solve matters: backprop through the single f(z*) call alone is wrong."""
    cell, x, target, wrt = make(2, (BATCH,))
    z0 = torch.zeros(BATCH, DIM, dtype=torch.float64)
    f = lambda z: cell(z, x)  # noqa: E731
    implicit = grads(((fixed_point(f, z0, solver_kwargs=TIGHT).z - target) ** 2).sum(), wrt)
    one_step = grads(((fixed_point(f, z0, backward="phantom", solver_kwargs=TIGHT).z - target) ** 2).sum(), wrt)
    assert relative_error(one_step[0], implicit[0]) > 1e-2


@pytest.mark.parametrize("steps, damping", [(1, 1.0), (4, 1.0), (3, 0.6)])
def test_phantom_equals_autograd_through_k_steps(steps: int, damping: float) -> None:
    cell, x, target, wrt = make(3, (BATCH,))
    f = lambda z: cell(z, x)  # noqa: E731
    z0 = torch.zeros(BATCH, DIM, dtype=torch.float64)

    eq = fixed_point(f, z0, backward="phantom", phantom_steps=steps, phantom_damping=damping, solver_kwargs=TIGHT)
    z = eq.z
    phantom = grads(((z - target) ** 2).sum(), wrt)

    z_ref = fixed_point(f, z0, solver_kwargs=TIGHT).z.detach()
    for _ in range(steps):
        z_ref = z_ref + damping * (f(z_ref) - z_ref)
    reference = grads(((z_ref - target) ** 2).sum(), wrt)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-12)
    for got, want in zip(phantom, reference):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_jacobian_penalty_is_unbiased_and_differentiable() -> None:
    cell, x, _, wrt = make(4, (BATCH,))
    f = lambda z: cell(z, x)  # noqa: E731
    z_star = fixed_point(f, torch.zeros(BATCH, DIM, dtype=torch.float64), solver_kwargs=TIGHT).z.detach()

    jacobian = torch.autograd.functional.jacobian(f, z_star)  # (B, D, B, D), block diagonal
    exact = float(jacobian.pow(2).sum()) / BATCH

    torch.manual_seed(0)
    warm = {**TIGHT, "max_iter": 2}  # start at z*: the solve is a formality
    estimates = []
    for _ in range(2000):
        eq = fixed_point(f, z_star, backward="phantom", jacobian_weight=1.0, solver_kwargs=warm)
        assert eq.jacobian_penalty is not None
        estimates.append(eq.jacobian_penalty.detach())
    assert abs(float(torch.stack(estimates).mean()) / exact - 1) < 0.05

    eq = fixed_point(f, z_star, jacobian_weight=0.5, solver_kwargs=warm)
    assert eq.jacobian_penalty is not None and eq.jacobian_penalty.requires_grad
    penalty_grads = grads(eq.jacobian_penalty, wrt[:3])  # W, U, b
    assert all(bool(torch.isfinite(g).all()) for g in penalty_grads)
    assert float(penalty_grads[0].norm()) > 0


def test_no_penalty_unless_asked_and_no_grad_mode() -> None:
    cell, x, _, _ = make(5, (BATCH,))
    z0 = torch.zeros(BATCH, DIM, dtype=torch.float64)
    assert fixed_point(lambda z: cell(z, x), z0).jacobian_penalty is None
    with torch.no_grad():
        eq = fixed_point(lambda z: cell(z, x), z0, jacobian_weight=1.0)
    assert not eq.z.requires_grad and eq.jacobian_penalty is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backward": "unrolled"}, "backward"),
        ({"phantom_steps": 0}, "phantom_steps"),
        ({"phantom_damping": 0.0}, "phantom_damping"),
        ({"jacobian_weight": -1.0}, "jacobian_weight"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fixed_point(torch.tanh, torch.zeros(BATCH, DIM), **kwargs)  # type: ignore[arg-type]


def test_the_equilibrium_does_not_keep_its_graph_alive():
    """The gradient hook must not make a reference cycle with the result: once the
    caller drops it, what f used is freed (an attractor model trains for hours)."""
    import gc
    import weakref

    W = torch.randn(4, 4, dtype=torch.float64) * 0.3
    W.requires_grad_(True)

    def run():
        x = torch.randn(3, 4, dtype=torch.float64) @ W  # an intermediate f closes over
        eq = fixed_point(lambda z: torch.tanh(z @ W.T + x), torch.zeros(3, 4, dtype=torch.float64))
        eq.z.sum().backward()
        return weakref.ref(x), weakref.ref(eq)

    x_ref, eq_ref = run()
    gc.collect()
    assert eq_ref() is None and x_ref() is None
