"""Batched solvers for the fixed point z* = f(z*) of a deep-equilibrium / attractor model.

The state z has shape (B, ...), batch first; each sample is flattened to a vector of n
numbers internally and judged on its own. Methods:

iteration   z <- (1 - d) z + d f(z). Cheapest per step; converges only when f contracts,
            and slowly when its contraction factor is near 1. `damping` d < 1 helps
            maps that oscillate.
anderson    type-II Anderson acceleration: the next iterate mixes the last m iterates
            and their images with weights (summing to 1) that minimise the norm of the
            mixed residual f(z) - z; a (B, m+1, m+1) bordered least-squares system per
            step, Tikhonov-regularised. Exact in few steps on affine maps.
broyden     quasi-Newton on g(z) = f(z) - z with "good" Broyden rank-one updates of the
            inverse Jacobian, kept as -I + U V^T with U, V of shape (B, n, k): memory
            is O(n k), never n x n; a step costs O(n c) for the c filled slots. After
            k = `history` updates H restarts from -I (and takes the new update).
            bad_broyden: the same with the "bad" Broyden update.

Per-sample stopping: once a sample's relative residual ||f(z) - z|| / (||f(z)|| + eps)
drops below `tol` it is frozen (its z no longer changes, its iteration count is fixed);
f is still called on the whole batch, because f may close over per-sample inputs.
A sample whose residual is non-finite, or whose absolute residual grows `BLOWUP` times
past its first one, is marked diverged and frozen at its best iterate, so NaN/inf never
reach the other samples or the result. Every sample returns its best iterate, the one
with the lowest residual seen.

The trace holds, per iteration and sample, the residual of the iterate f was evaluated
at (a stopped sample repeats its best residual; inf if it never had a finite one), plus each sample's iteration count and
its converged / diverged flags.

Everything runs under torch.no_grad(): the solver is only the forward search for z*;
gradients through the equilibrium (implicit differentiation or a few tracked steps
from z*) are handled separately by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

METHODS = ("iteration", "anderson", "broyden", "bad_broyden")
EPS = 1e-12  # keeps the relative residual defined when f(z) = 0
BLOWUP = 1e6  # absolute residual this many times its first value means divergence


@dataclass
class SolverTrace:
    """How the solve went, per sample."""

    residuals: torch.Tensor  # (iterations, B) relative residual of each evaluated iterate
    iterations: torch.Tensor  # (B,) f evaluations until converged / diverged (else max_iter)
    converged: torch.Tensor  # (B,) bool: residual fell below tol
    diverged: torch.Tensor  # (B,) bool: non-finite or blown-up residual; best iterate returned


@dataclass
class SolverResult:
    """The per-sample best iterate and the trace that produced it."""

    z: torch.Tensor  # (B, ...) same shape as z0
    trace: SolverTrace


class _Iteration:
    """Plain (damped) fixed-point iteration."""

    def __init__(self, damping: float) -> None:
        self.damping = damping
        self.all_active = True

    def step(self, z: torch.Tensor, fz: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        return z + self.damping * (fz - z)  # (B, n)


class _Anderson:
    """Type-II Anderson mixing over a ring buffer of the last `history` iterates."""

    def __init__(self, like: torch.Tensor, history: int, damping: float, regularisation: float) -> None:
        batch, n = like.shape
        self.xs = like.new_zeros(batch, history, n)  # (B, m, n) past iterates
        self.fs = like.new_zeros(batch, history, n)  # (B, m, n) their images under f
        self.history = history
        self.damping = damping
        self.regularisation = regularisation
        self.stored = 0
        self.all_active = True  # set by the solve loop: no stopped samples to mask

    def step(self, z: torch.Tensor, fz: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        slot = self.stored % self.history
        self.xs[:, slot] = z
        # stopped samples store a zero residual so a non-finite f(z) never enters the system
        self.fs[:, slot] = fz if self.all_active else torch.where(active[:, None], fz, z)
        self.stored += 1
        used = min(self.stored, self.history)
        xs, fs = self.xs[:, :used], self.fs[:, :used]  # (B, c, n)
        gs = fs - xs  # (B, c, n) residuals
        gram = gs @ gs.transpose(1, 2)  # (B, c, c)

        # KKT system of min_a a^T G a subject to sum(a) = 1:  [0 1^T; 1 G + lam I] [mu; a] = [1; 0].
        # lam scales with the residuals so the regularisation is unit-free.
        batch = z.shape[0]
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1)  # (B,)
        lam = self.regularisation * scale + torch.finfo(z.dtype).tiny  # (B,)
        eye = torch.eye(used, dtype=z.dtype, device=z.device)
        system = z.new_zeros(batch, used + 1, used + 1)  # (B, c+1, c+1)
        system[:, 0, 1:] = 1
        system[:, 1:, 0] = 1
        system[:, 1:, 1:] = gram + lam[:, None, None] * eye
        system = torch.where(active[:, None, None], system, torch.eye(used + 1, dtype=z.dtype, device=z.device))
        rhs = z.new_zeros(batch, used + 1)  # (B, c+1)
        rhs[:, 0] = 1
        solution, info = torch.linalg.solve_ex(system, rhs)
        weights = solution[:, 1:]  # (B, c)

        # a failed or non-finite solve falls back to a plain step from the newest iterate
        newest = torch.zeros_like(weights)
        newest[:, slot] = 1
        usable = (info == 0) & torch.isfinite(weights).all(dim=1)  # (B,)
        weights = torch.where(usable[:, None], weights, newest)

        mixed_f = (weights[:, None, :] @ fs).squeeze(1)  # (B, n)
        if self.damping == 1.0:
            return mixed_f  # undamped: the mixed iterate itself is never needed
        mixed_x = (weights[:, None, :] @ xs).squeeze(1)  # (B, n)
        return mixed_x + self.damping * (mixed_f - mixed_x)


class _Broyden:
    """Limited-memory Broyden on g(z) = f(z) - z with inverse Jacobian H = -I + U V^T.

    H starts at -I, so the first step is a plain (damped) iteration."""

    def __init__(self, like: torch.Tensor, rank: int, damping: float, good: bool) -> None:
        batch, n = like.shape
        self.us = like.new_zeros(batch, n, rank)  # (B, n, k)
        self.vs = like.new_zeros(batch, n, rank)  # (B, n, k)
        self.rank = rank
        self.damping = damping
        self.good = good
        self.all_active = True
        self.stored = 0
        self.prev_z: torch.Tensor | None = None  # (B, n)
        self.prev_g: torch.Tensor | None = None  # (B, n)

    def _h(self, x: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        """H x (or H^T x) for x of shape (B, n), H = -I + U V^T; work proportional to the
        filled slots, not `rank`."""
        if self.stored == 0:
            return -x
        us, vs = self.us[:, :, : self.stored], self.vs[:, :, : self.stored]  # (B, n, c)
        left, right = (vs, us) if transposed else (us, vs)
        return -x + (left @ (right.transpose(1, 2) @ x[..., None])).squeeze(-1)

    def step(self, z: torch.Tensor, fz: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        g = torch.where(active[:, None], fz - z, torch.zeros_like(z))  # (B, n)
        if self.prev_z is not None and self.prev_g is not None:
            self._update(z - self.prev_z, g - self.prev_g, active)
        self.prev_z, self.prev_g = z, g
        return z - self.damping * self._h(g)  # (B, n)

    def _update(self, s: torch.Tensor, y: torch.Tensor, active: torch.Tensor) -> None:
        """Rank-one secant update making H y = s.

        When all k slots are used, H restarts from -I before the update is computed, so
        the first term of the fresh H is the update of -I (built from the old H it would
        not satisfy H y = s). Dropping only the oldest term instead would break the
        secant conditions the later terms were built on."""
        if self.stored == self.rank:
            self.stored = 0  # slots are overwritten from the first; unused ones are never read
        h_y = self._h(y)  # (B, n)
        if self.good:  # H += (s - H y) s^T H / (s^T H y)
            v = self._h(s, transposed=True)
            denom = (s * h_y).sum(-1)
            size = s.norm(dim=1) * h_y.norm(dim=1)
        else:  # H += (s - H y) y^T / (y^T y)
            v = y
            denom = (y * y).sum(-1)
            size = denom
        # skip samples that are stopped or whose update would be ill-conditioned
        ok = active & torch.isfinite(denom) & (denom.abs() > torch.finfo(s.dtype).eps * size) & (size > 0)
        u = (s - h_y) / torch.where(ok, denom, torch.ones_like(denom))[:, None]
        slot = self.stored
        self.us[:, :, slot] = torch.where(ok[:, None], u, torch.zeros_like(u))
        self.vs[:, :, slot] = torch.where(ok[:, None], v, torch.zeros_like(v))
        self.stored += 1


def solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    method: str = "anderson",
    max_iter: int = 50,
    tol: float = 1e-5,
    damping: float = 1.0,
    history: int = 5,
    regularisation: float = 1e-4,
) -> SolverResult:
    """Find z with f(z) = z per sample, starting from z0 of shape (B, ...).

    `history` is Anderson's number of mixed iterates and Broyden's rank k. Runs under
    torch.no_grad(); see the module docstring for stopping and divergence rules."""
    if method not in METHODS:
        raise ValueError(f"fixed-point method: expected one of {', '.join(METHODS)}, got {method!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    if history < 1:
        raise ValueError(f"history must be >= 1, got {history}")
    if regularisation < 0:
        raise ValueError(f"regularisation must be >= 0, got {regularisation}")
    with torch.no_grad():
        return _solve(f, z0, method, max_iter, tol, damping, history, regularisation)


def _solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    method: str,
    max_iter: int,
    tol: float,
    damping: float,
    history: int,
    regularisation: float,
) -> SolverResult:
    shape = z0.shape
    batch = shape[0]
    z = z0.detach().reshape(batch, -1).clone()  # (B, n)

    if method == "iteration":
        stepper: _Iteration | _Anderson | _Broyden = _Iteration(damping)
    elif method == "anderson":
        stepper = _Anderson(z, history, damping, regularisation)
    else:
        stepper = _Broyden(z, history, damping, good=method == "broyden")

    best_z = z.clone()  # (B, n)
    best_res = torch.full((batch,), float("inf"), dtype=z.dtype, device=z.device)  # (B,)
    first_abs: torch.Tensor | None = None  # (B,) absolute residual at z0
    converged = torch.zeros(batch, dtype=torch.bool, device=z.device)
    diverged = torch.zeros_like(converged)
    iterations = torch.full((batch,), max_iter, dtype=torch.long, device=z.device)
    rows: list[torch.Tensor] = []

    for k in range(max_iter):
        fz = f(z.view(shape)).reshape(batch, -1)  # (B, n)
        abs_res = (fz - z).norm(dim=1)  # (B,)
        res = abs_res / (fz.norm(dim=1) + EPS)  # (B,)
        if first_abs is None:
            first_abs = abs_res
        active = ~(converged | diverged)
        blown = ~torch.isfinite(res) | (abs_res > BLOWUP * first_abs)
        healthy = active & ~blown

        improved = healthy & (res < best_res)
        best_res = torch.where(improved, res, best_res)
        best_z = torch.where(improved[:, None], z, best_z)
        newly_converged = healthy & (res < tol)
        newly_diverged = active & blown
        converged |= newly_converged
        diverged |= newly_diverged
        iterations = torch.where(newly_converged | newly_diverged, torch.full_like(iterations, k + 1), iterations)
        rows.append(torch.where(healthy, res, best_res))

        active = ~(converged | diverged)
        running = int(active.sum())
        if running == 0 or k == max_iter - 1:
            break
        # while every sample runs (the common case) the masks are no-ops: skip their copies
        stepper.all_active = running == batch
        if running < batch and bool(diverged.any()):  # (a diverged sample never runs: no sync while all do)
            z = torch.where(diverged[:, None], best_z, z)  # keep non-finite values out of the history
        step = stepper.step(z, fz, active)
        z = step if running == batch else torch.where(active[:, None], step, z)

    trace = SolverTrace(
        residuals=torch.stack(rows),
        iterations=iterations,
        converged=converged,
        diverged=diverged,
    )
    return SolverResult(z=best_z.view(shape), trace=trace)
