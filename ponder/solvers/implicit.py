"""Differentiable equilibria z* = f(z*): gradients without backpropagating through the solver.

The forward search (`fixed_point.solve`) runs without autograd, so its memory does not grow
with the number of iterations. Gradients are then attached in one of two ways:

implicit  exact gradient of the true equilibrium. By the implicit function theorem,
          dL/dtheta = u^T df/dtheta at z*, where u solves the adjoint fixed point
          u = g + (df/dz)^T u and g = dL/dz*. One differentiable call z = f(z*) carries
          df/dtheta; a hook on its output swaps g for u, found with the same solver using
          vector-Jacobian products. Costs a second (backward) solve; needs f to contract
          (or the solver to converge) near z*.
phantom   a.k.a. truncated: backpropagate through K tracked (optionally damped) steps of f
          from the detached z*. Cheap and stable, but only an approximation of the implicit
          gradient (exact as K -> infinity for a contraction); no adjoint solve.

Either way an optional Hutchinson estimate of ||df/dz||_F^2 at z* can be added to the loss
to keep f contractive, which keeps both the forward and the adjoint solve well behaved. It
takes the Jacobian-vector product by a forward difference, so training against it needs
only first-order autograd (fused attention kernels have no double backward).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ponder.solvers.fixed_point import SolverTrace, solve

BACKWARDS = ("implicit", "phantom")


@dataclass
class Equilibrium:
    """A differentiable equilibrium and how it was found.

    `adjoint_trace` is empty until a backward pass through `z` (implicit mode) solves the
    adjoint system; it then holds the trace of the latest such solve, for diagnostics."""

    z: torch.Tensor  # (B, ...) equilibrium carrying gradients to whatever f depends on
    trace: SolverTrace  # forward solve
    jacobian_penalty: torch.Tensor | None = None  # () weighted estimate; None if jacobian_weight == 0
    adjoint_trace: SolverTrace | None = None


def fixed_point(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    backward: str = "implicit",
    solver_kwargs: dict[str, Any] | None = None,
    backward_kwargs: dict[str, Any] | None = None,
    phantom_steps: int = 1,
    phantom_damping: float = 1.0,
    jacobian_weight: float = 0.0,
) -> Equilibrium:
    """Solve z* = f(z*) from z0 of shape (B, ...) and return z* with gradients attached.

    f may close over module parameters and input tensors: gradients reach everything f
    uses, with no need to list them. f must treat samples independently (as `solve`
    assumes). `solver_kwargs` go to the forward `solve`; `backward_kwargs` to the adjoint
    solve (default: the same). With `jacobian_weight` > 0, `jacobian_penalty` is
    jacobian_weight times a one-probe Hutchinson estimate of the batch mean of the
    per-sample ||df/dz||_F^2 at z*, differentiable w.r.t. what f depends on.

    The implicit gradient is first-order only: backward with create_graph=True does not
    give correct second derivatives through z."""
    if backward not in BACKWARDS:
        raise ValueError(f"backward: expected one of {', '.join(BACKWARDS)}, got {backward!r}")
    if phantom_steps < 1:
        raise ValueError(f"phantom_steps must be >= 1, got {phantom_steps}")
    if not 0.0 < phantom_damping <= 1.0:
        raise ValueError(f"phantom_damping must be in (0, 1], got {phantom_damping}")
    if jacobian_weight < 0:
        raise ValueError(f"jacobian_weight must be >= 0, got {jacobian_weight}")
    solver_kwargs = dict(solver_kwargs or {})
    backward_kwargs = dict(solver_kwargs if backward_kwargs is None else backward_kwargs)

    forward = solve(f, z0, **solver_kwargs)
    result = Equilibrium(z=forward.z, trace=forward.trace)
    needs_vjp = backward == "implicit" or jacobian_weight > 0
    # a fresh leaf at z*: the point at which df/dz (adjoint, penalty) is taken
    z_star = forward.z.detach().requires_grad_(needs_vjp)  # (B, ...)
    if not torch.is_grad_enabled():
        return result

    fz = f(z_star)  # (B, ...) one differentiable application at z*
    if jacobian_weight > 0:
        result.jacobian_penalty = jacobian_weight * _hutchinson(f, fz, z_star)

    if backward == "implicit":
        # the hook sits on a view so the vector-Jacobian products taken from fz inside it
        # never re-enter the hook
        z = fz.view_as(fz)
        if z.requires_grad:
            z.register_hook(_adjoint_hook(fz, z_star, backward_kwargs, result))
    else:
        z = z_star + phantom_damping * (fz - z_star)
        for _ in range(phantom_steps - 1):
            z = z + phantom_damping * (f(z) - z)
    result.z = z
    return result


def _adjoint_hook(
    fz: torch.Tensor,
    z_star: torch.Tensor,
    backward_kwargs: dict[str, Any],
    result: Equilibrium,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hook replacing the gradient g at f(z*) by u = g + (df/dz)^T u."""

    def vjp(u: torch.Tensor) -> torch.Tensor:
        # retain_graph: the solve takes many products, and the caller's backward still
        # has to traverse fz's graph afterwards
        return torch.autograd.grad(fz, z_star, u, retain_graph=True)[0]  # (B, ...)

    # A weak reference: `result` holds the hooked tensor, so a strong one would make a
    # cycle through the autograd graph that Python's collector cannot free.
    result_ref = weakref.ref(result)

    def hook(g: torch.Tensor) -> torch.Tensor:
        adjoint = solve(lambda u: g + vjp(u), g, **backward_kwargs)
        if (live := result_ref()) is not None:
            live.adjoint_trace = adjoint.trace
        return adjoint.z  # (B, ...)

    return hook


def _hutchinson(f: Callable[[torch.Tensor], torch.Tensor], fz: torch.Tensor, z_star: torch.Tensor) -> torch.Tensor:
    """Batch mean of ||(df/dz) v||^2 with v ~ N(0, I): unbiased for the mean ||df/dz||_F^2,
    since E[v v^T] = I. The product is a forward difference with a step of 1e-3 of each
    sample's ||z*||: differentiable with first-order autograd, bias O(step)."""
    v = torch.randn_like(z_star)  # (B, ...)
    flat = (z_star.detach().flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1)).clamp_min(1e-6)  # (B,)
    step = (1e-3 * flat).view(-1, *[1] * (z_star.dim() - 1))  # (B, 1, ...)
    jv = (f(z_star + step * v) - fz) / step  # (B, ...)
    return jv.pow(2).flatten(1).sum(dim=1).mean()
