"""Newton-in-time: all T steps of h_t = f(h_{t-1}, x_t) solved at once (DEER, ParaRNN).

The recurrence is one nonlinear system F(h)_t = h_t - f(h_{t-1}, x_t) = 0 in the
whole trajectory h (B, T, D). Newton's method on it linearises f around the current
guess h^k and solves, for all t at once,

    h_t = J_t h_{t-1} + (f(h^k_{t-1}, x_t) - J_t h^k_{t-1}),    J_t = df/dh at (h^k_{t-1}, x_t),

a linear recurrence that `scan.linear_recurrence` solves in O(log T) depth. Because
h_0 is known, iterate k reproduces the sequential h_1..h_k exactly (for any J, even
an approximate one), so at most T iterations give the exact answer; for a contracting
f far fewer suffice. Methods:

deer        exact Newton with the cell's exact Jacobian in its cheapest layout
            (`cell.jacobian_structure`: dense D x D for GRU/LSTM, diagonal for
            DiagGRUCell, 2 x 2 blocks for DiagLSTMCell). Quadratic convergence;
            O(T D^3) work per iteration for dense cells, so small D only.
quasi_deer  the diagonal of J only: O(T D) per iteration, more iterations for dense
            cells, exact Newton for DiagGRUCell.
elk         damped Newton with an adaptive damping lambda >= 0 (Levenberg-Marquardt /
            trust-region style). Each step solves
                ((1 + lambda) I - L) delta = -F(h^k),   h^{k+1} = h^k + delta,
            where I - L is Newton's (block lower-bidiagonal) system matrix, i.e.
                h_t = J_t / (1 + lambda) h_{t-1} + (f(h^k_{t-1}) - J_t h^k_{t-1} + lambda h^k_t) / (1 + lambda).
            That is the minimiser of |h_t - J_t h_{t-1} - c_t|^2 + lambda |h_t - h^k_t|^2 one
            step at a time: the trust-region problem of ELK (Gonzalez et al.) solved
            with a forward filter in place of the full Kalman smoother, so each step is
            still one scan with the same primitive. lambda -> 0 is Newton, large lambda
            is a small Picard (Jacobi) step; the fixed point is the same for every
            lambda, and the scan's effective Jacobians |J| / (1 + lambda) cannot blow up.
            A step is accepted when it lowers the residual max |h_t - f(h_{t-1})|
            (lambda /= 10) and rejected otherwise (lambda *= 10, h kept).
quasi_elk   elk with the diagonal Jacobian.

Stopping: when the max-abs change of an accepted step (or the residual) falls below
`tol`. Undamped Newton is exact after T accepted steps (above), so T undamped steps
also count as converged; damped steps keep the exact prefix but need not extend it,
so the default cap is T + EXTRA_ITER. A solve that stops at the cap unconverged says
so twice: `trace.converged` is False and a RuntimeWarning names the method, the cap,
the last change and the residual.

`damping` is the starting lambda (elk: default 1; deer / quasi_deer: default 0, and a
positive value is a fixed lambda). Non-finite results never escape: a step whose
iterate is not finite is rejected and lambda raised to max(10 lambda, 1), after which
the solve continues as elk (`trace.fell_back`); the returned states are always the
last accepted, finite iterate.

Compiled path (`compile=True`): an iteration is two torch.compile'd programs, one
that evaluates f, its Jacobians, the offsets and the residual at all T steps, and one
that takes the (damped) step and the scan; lambda enters as a tensor, so adapting it
never recompiles. Fusion removes the eager path's temporaries (and with them its loop
over spans of time steps), and a dense scan with D <= 16 writes its small matrix
products as broadcast multiply-sums, which fuse into one loop per scan level. The
Python loop over iterations stays: it reads the change and residual once per iteration
to decide acceptance and stopping. Results equal the eager path's to rounding (tested).

Gradients do not go through the iterations. At the solution h*, one differentiable
evaluation y_t = f(h*_{t-1}, x_t) (all t in parallel) carries df/dtheta, df/dx and,
at t = 1, df/dh0; a hook on y replaces the incoming dL/dh by the adjoint
lambda_t = dL/dh_t + J_{t+1}^T lambda_{t+1}, solved with the reverse scan using the
exact Jacobians at h* (always `cell.jacobian_structure`, also for the quasi methods,
so their gradients are exact too). Then dL/dtheta = sum_t lambda_t^T df/dtheta. This
is the hook pattern of `ponder.solvers.implicit`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from ponder.solvers import scan
from ponder.solvers.scan import adjoint_recurrence, block_adjoint_recurrence, block_linear_recurrence, linear_recurrence

if TYPE_CHECKING:
    from ponder.solvers.cells import RecurrentCell

METHODS = ("deer", "quasi_deer", "elk", "quasi_elk")
DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
FALLBACK_TOL = 1e-3  # half precision and anything else
ELK_DAMPING = 1.0  # starting lambda for elk
MIN_DAMPING = 1e-8  # adaptive lambda below this snaps to 0: plain Newton
EXTRA_ITER = 50  # the default cap is T + this: room for damped steps on short sequences
CPU_SPAN_NUMBERS = 2**17  # Jacobian entries per evaluated span of time steps on CPU (eager path)
RECOMPILE_LIMIT = 64  # compiled programs kept per fused function (shapes x cell classes)
ELEMENTWISE_MAX_D = 16  # compiled dense scans write products out elementwise up to this D


@dataclass
class NewtonTrace:
    """How the solve went (one solve for the whole batch)."""

    iterations: int  # linear solves done, accepted or not
    max_change: float  # max |h^{k+1} - h^k| of the last accepted step (inf if none)
    residual: float  # max |h_t - f(h_{t-1}, x_t)| at the returned states
    converged: bool  # the change or the residual fell below tol, or T undamped steps were taken
    fell_back: bool  # a non-finite iterate was rejected and damping switched on
    damping: float  # lambda at the end
    changes: list[float] = field(default_factory=list)  # per iteration; nan for a rejected step


@dataclass
class NewtonResult:
    """States and the trace of the solve that found them."""

    h: torch.Tensor  # (B, T, D) with gradients attached (when grad is enabled)
    trace: NewtonTrace


def solve_recurrence(
    cell: RecurrentCell,
    x: torch.Tensor,
    h0: torch.Tensor | None = None,
    *,
    method: str = "deer",
    max_iter: int | None = None,
    tol: float | None = None,
    damping: float | None = None,
    init: torch.Tensor | None = None,
    chunk: int | None = None,
    compile: bool = False,
) -> NewtonResult:
    """Solve h_t = cell.update(h_{t-1}, cell.project(x_t)) for all t by Newton-in-time.

    x (B, T, input_size); h0 (B, D) or None (zeros); init (B, T, D) the first guess
    (zeros if None). max_iter defaults to T + EXTRA_ITER (T undamped steps are exact;
    damped ones need more); tol to 1e-10 (float64) / 1e-5 (float32) / 1e-3, on the
    max-abs change. Hitting max_iter unconverged warns (RuntimeWarning) and leaves
    `trace.converged` False.
    `chunk` is passed to the scan. `compile=True` runs each Newton iteration as two
    torch.compile'd programs (module docstring, "Compiled path"); the first call for a
    new shape compiles (seconds). Gradients reach the cell's parameters, x and h0
    through the reverse-scan adjoint (module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if x.dim() != 3:
        raise ValueError(f"x: expected shape (B, T, input_size), got {tuple(x.shape)}")
    batch, steps = x.shape[:2]
    dim = cell.state_size
    if steps < 1:
        raise ValueError("x: expected at least one time step, got T = 0")
    if max_iter is None:
        max_iter = steps + EXTRA_ITER
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol is None:
        tol = DEFAULT_TOL.get(x.dtype, FALLBACK_TOL)
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if damping is None:
        damping = ELK_DAMPING if method in ("elk", "quasi_elk") else 0.0
    if damping < 0 or not math.isfinite(damping):
        raise ValueError(f"damping must be a finite number >= 0, got {damping}")
    if h0 is None:
        h0 = x.new_zeros(batch, dim)
    if h0.shape != (batch, dim):
        raise ValueError(f"h0: expected shape {(batch, dim)}, got {tuple(h0.shape)}")
    if init is not None and init.shape != (batch, steps, dim):
        raise ValueError(f"init: expected shape {(batch, steps, dim)}, got {tuple(init.shape)}")
    if compile and chunk is not None:
        raise ValueError("chunk: the compiled path uses the recursive scan; pass chunk=None with compile=True")

    u = cell.project(x)  # (B, T, P) differentiable w.r.t. x and the input weights
    with torch.no_grad():
        kind = "diagonal" if method.startswith("quasi") else cell.jacobian_structure
        damped = method in ("elk", "quasi_elk")
        h, trace = _newton(cell, u.detach(), h0.detach(), init, kind, damped, max_iter, tol, damping, chunk, compile)
    if not trace.converged:
        warnings.warn(
            f"Newton-in-time ({method}) stopped at max_iter={max_iter} without converging: last change "
            f"{trace.max_change:.1e}, residual {trace.residual:.1e}, tol {tol:.1e}; the states are not the "
            "recurrence's solution (raise max_iter, or use elk for unstable cells)",
            RuntimeWarning,
            stacklevel=2,
        )
    result = NewtonResult(h=h, trace=trace)
    if not torch.is_grad_enabled():
        return result

    h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=1)  # (B, T, D): only the h0 slot carries grad
    y = cell.update(h_prev, u)  # (B, T, D) one differentiable step at the solution
    if y.requires_grad:
        out = y.view_as(y)  # the hook sits on a view so it fires once, on the caller's gradient
        out.register_hook(_adjoint_hook(cell, h_prev.detach(), u.detach(), chunk, compile))
        result.h = out
    return result


def _adjoint_hook(
    cell: RecurrentCell, h_prev: torch.Tensor, u: torch.Tensor, chunk: int | None, compiled: bool,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hook replacing g = dL/dh by lambda_t = g_t + J_{t+1}^T lambda_{t+1} (exact J at h*)."""
    adjoint = _compiled("adjoint") if compiled else _adjoint

    def hook(g: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return adjoint(cell, h_prev, u, g)

    return hook


def _adjoint(cell: RecurrentCell, h_prev: torch.Tensor, u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """lambda (B, T, D) from dL/dh g (B, T, D), with the exact Jacobians at (h_prev, u)."""
    kind = cell.jacobian_structure
    jac = cell.linearise(h_prev, u, kind)[1]
    if kind == "blocks":
        return _flat(block_adjoint_recurrence(jac, _split(g, cell.block_size)))
    return adjoint_recurrence(jac, g)


def _evaluate_fused(
    cell: RecurrentCell, h: torch.Tensor, h0: torch.Tensor, u: torch.Tensor, kind: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compiled path: offsets f(h_{t-1}) - J_t h_{t-1} (B, T, D), Jacobians J_t and the
    residual max |h_t - f(h_{t-1})| (a 0-dim tensor) in one program."""
    h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=1)  # (B, T, D)
    f, jac = cell.linearise(h_prev, u, kind)
    offset = f - _apply(jac, kind, cell.block_size, h_prev)
    return offset, jac, (h - f).abs().amax()


def _step_fused(
    jac: torch.Tensor, offset: torch.Tensor, h: torch.Tensor, lam: torch.Tensor | None, h0: torch.Tensor, kind: str, k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compiled path: one Newton step, damped by lam (a 0-dim tensor, so a new lambda
    does not recompile; None: plain Newton) -> the new iterate (B, T, D) and
    max |h_new - h| (0-dim)."""
    a, b = jac, offset
    if lam is not None:
        a = jac / (1 + lam)
        b = (offset + lam * h) / (1 + lam)
    if kind == "blocks":
        h_new = _flat(block_linear_recurrence(a, _split(b, k), _split(h0, k)))
    else:  # small matrix products written out elementwise fuse; larger ones go to matmul
        h_new = scan._solve(a, b, h0, None, elementwise=h.shape[-1] <= ELEMENTWISE_MAX_D)
    return h_new, (h_new - h).abs().amax()


_COMPILED: dict[str, Callable] = {}


def _compiled(name: str) -> Callable:
    """The torch.compile'd version of one of the fused functions, made once per process.
    Cells are arguments, so every cell of a class shares one compiled program."""
    if name not in _COMPILED:
        fn = {"evaluate": _evaluate_fused, "step": _step_fused, "adjoint": _adjoint}[name]
        # one program per shape and cell class: allow more than dynamo's default 8 before
        # it gives up and runs eagerly
        _COMPILED[name] = torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)(torch.compile(fn, dynamic=False))
    return _COMPILED[name]


def _newton(
    cell: RecurrentCell,
    u: torch.Tensor,
    h0: torch.Tensor,
    init: torch.Tensor | None,
    kind: str,
    adaptive: bool,
    max_iter: int,
    tol: float,
    damping: float,
    chunk: int | None,
    compiled: bool = False,
) -> tuple[torch.Tensor, NewtonTrace]:
    """The damped-Newton loop (no grad). Returns the last accepted iterate and the trace."""
    batch, steps = u.shape[:2]
    k = cell.block_size
    h = u.new_zeros(batch, steps, cell.state_size) if init is None else init.detach().clone()  # (B, T, D)
    # on CPU, evaluate f and J a span of time steps at a time so the many elementwise
    # temporaries of the gates stay in cache (2-3x faster at T D ~ 1e6); one span on GPU
    per_step = batch * cell.state_size * (cell.state_size if kind == "dense" else 1)
    span = steps if u.device.type != "cpu" else max(16, CPU_SPAN_NUMBERS // per_step)

    # Buffers are reused across iterations: the current and the candidate linearisation
    # swap on acceptance. Fresh large allocations cost page faults that can exceed the
    # arithmetic on CPU.
    spare: list[tuple[torch.Tensor, torch.Tensor]] = []
    scaled: list[torch.Tensor] = []  # (J / (1 + lambda), damped offset) once damping is on

    def evaluate_eager(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Offsets f(h_{t-1}) - J_t h_{t-1} (B, T, D), Jacobians J_t, residual max |h_t - f(h_{t-1})|."""
        h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=1)  # (B, T, D)
        offset, jac = spare.pop() if spare else (torch.empty_like(h), None)
        worst = []
        for start in range(0, steps, span):
            part = slice(start, start + span)
            f_part, jac_part = cell.linearise(h_prev[:, part], u[:, part], kind)
            if jac is None:
                jac = jac_part.new_empty((batch, steps) + jac_part.shape[2:])
            jac[:, part] = jac_part
            offset[:, part] = f_part - _apply(jac_part, kind, k, h_prev[:, part])
            worst.append((h[:, part] - f_part).abs().max())
        assert jac is not None
        return offset, jac, float(torch.stack(worst).max())

    def evaluate_compiled(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        offset, jac, residual = _compiled("evaluate")(cell, h, h0, u, kind)
        return offset, jac, float(residual)

    def solve_compiled(jac: torch.Tensor, offset: torch.Tensor, h: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        h_new, change = _compiled("step")(jac, offset, h, h.new_tensor(lam) if lam > 0 else None, h0, kind, k)
        return h_new, float(change)

    def solve_eager(jac: torch.Tensor, offset: torch.Tensor, h: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        a, b = jac, offset
        if lam > 0:
            if not scaled:
                scaled.extend([torch.empty_like(jac), torch.empty_like(offset)])
            a = torch.div(jac, 1 + lam, out=scaled[0])
            b = torch.add(offset, h, alpha=lam, out=scaled[1]).div_(1 + lam)
        h_new = _solve(a, kind, k, b, h0, chunk)  # (B, T, D)
        return h_new, _max_abs(h_new - h)  # nan or inf exactly when h_new is not finite (h is)

    evaluate, solve = (evaluate_compiled, solve_compiled) if compiled else (evaluate_eager, solve_eager)
    recycle = (lambda pair: None) if compiled else spare.append  # compiled programs allocate their own outputs
    offset, jac, residual = evaluate(h)
    lam = damping
    changes: list[float] = []
    change = math.inf
    converged = residual < tol
    fell_back = False
    iterations = 0
    exact_prefix = 0  # time steps known exact: one more per accepted undamped step
    while not converged and iterations < max_iter:
        iterations += 1
        h_new, step_change = solve(jac, offset, h, lam)
        if not math.isfinite(step_change):
            fell_back = adaptive = True
            lam = max(10 * lam, 1.0)
            changes.append(math.nan)
            continue
        new_offset, new_jac, new_residual = evaluate(h_new)
        if not math.isfinite(new_residual) or (adaptive and new_residual >= residual):
            recycle((new_offset, new_jac))
            if not math.isfinite(new_residual):
                fell_back = adaptive = True
            lam = max(10 * lam, 1.0) if adaptive else lam
            changes.append(math.nan)
            continue
        change = step_change
        changes.append(change)
        recycle((offset, jac))
        h, offset, jac, residual = h_new, new_offset, new_jac, new_residual
        if lam == 0:
            exact_prefix += 1
        if adaptive:
            lam = lam / 10 if lam / 10 >= MIN_DAMPING else 0.0
        converged = change < tol or residual < tol or exact_prefix >= steps
    trace = NewtonTrace(
        iterations=iterations,
        max_change=change,
        residual=residual,
        converged=bool(converged),
        fell_back=fell_back,
        damping=lam,
        changes=changes,
    )
    return h, trace


def _max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _apply(jac: torch.Tensor, kind: str, k: int, v: torch.Tensor) -> torch.Tensor:
    """J v for v (B, T, D) with J in layout `kind`."""
    if kind == "diagonal":
        return jac * v
    if kind == "dense":
        return (jac @ v[..., None]).squeeze(-1)
    return _flat((jac * _split(v, k)[..., None, :, :]).sum(-2))  # (B, T, D)


def _solve(a: torch.Tensor, kind: str, k: int, b: torch.Tensor, h0: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t with a in layout `kind`, b (B, T, D), h0 (B, D)."""
    if kind == "diagonal":
        return linear_recurrence(a, b, h0, chunk=chunk)
    if kind == "dense":
        return linear_recurrence(a, b, h0)
    # blocks: H independent k-dimensional recurrences, H kept last
    return _flat(block_linear_recurrence(a, _split(b, k), _split(h0, k)))


def _split(v: torch.Tensor, k: int) -> torch.Tensor:
    """(..., k H) on the [g_0, ..., g_{k-1}] layout -> (..., k, H), a view."""
    return v.unflatten(-1, (k, v.shape[-1] // k))


def _flat(v: torch.Tensor) -> torch.Tensor:
    """(..., k, H) -> (..., k H)."""
    return v.flatten(-2)
