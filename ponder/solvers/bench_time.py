"""Timing: Newton-in-time (parallel over T) against sequential loops, forward only.

For each cell, sequence length T, size and method, `benchmark` runs `run_parallel` and
the sequential baselines on the same random inputs (batch `batch`, input size = hidden
size, PyTorch's default cell init, which contracts) under torch.no_grad() and reports
the best of `repeats` wall-clock times after a warm-up (CUDA is synchronised around
each timed call), the Newton iterations used and the max-abs difference from the eager
loop's outputs. The eager loop at T >= 50000 is timed once (it is the slow part and its
run-to-run spread is small). Baselines (`baselines`):

eager     `run_sequential`: the plain Python loop over t (what `speedup` divides)
compiled  the same loop as one torch.compile'd program (torch's scan operator, so the
          loop is not unrolled): PyTorch's fastest loop for any cell
torch     torch.nn.GRU with the cell's weights (gru only): the library's fused C++
          loop (cuDNN on CUDA)

`compile` adds, for each method, a row of the compiled Newton path
(`run_parallel(..., compile=True)`; compiling happens in the warm-up, not the timing).

Threads: every intra-op parallel tensor operation waits for all of torch's threads, so
on a CPU shared with other jobs set torch.set_num_threads to the cores actually free.
On a 2-core machine with one core busy elsewhere, 2 threads made each large operation
cost milliseconds and the parallel solves 10-100x slower than with 1 thread, while
the sequential loop (operations too small to be split) was unaffected.

Rows left out (printed to stderr with the reason when `progress`):
- dense Jacobians (`deer` / `elk` on GRU / LSTM) when T * D^2 > DENSE_BUDGET numbers
  (memory: several (T, D, D) tensors; work: O(T D^3) per iteration);
- a method that is the same computation as an earlier one for that cell (on DiagGRUCell
  `deer` is `quasi_deer` and `elk` is `quasi_elk`, the diagonal being the exact Jacobian).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

import torch

from ponder.solvers.cells import CELLS, make_cell, run_parallel, run_sequential
from ponder.solvers.newton import METHODS

FIELDS = ("method", "T", "D", "dtype", "seconds_parallel", "seconds_sequential", "speedup", "iterations", "max_abs_err")
BASELINES = ("eager", "compiled", "torch")
DENSE_BUDGET = 2**25  # T * D^2 numbers per dense Jacobian
SLOW_SEQUENTIAL = 50_000  # T from which the sequential loop is timed once


def benchmark(
    lengths: Sequence[int] = (1000, 10000, 100000),
    sizes: Sequence[int] = (4, 16, 64),
    methods: Sequence[str] = ("quasi_deer", "deer", "elk"),
    cell: str | Sequence[str] = ("diag_gru", "gru"),
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    batch: int = 1,
    repeats: int = 3,
    max_iter: int | None = 200,
    tol: float | None = None,
    progress: bool = True,
    seed: int = 0,
    baselines: Sequence[str] = ("eager",),
    compile: bool = False,
) -> list[dict[str, Any]]:
    """Rows with the FIELDS plus device, cell, batch, converged, compiled (the Newton
    path) and, per extra baseline, `seconds_<baseline>` and `speedup_<baseline>` (None
    where the baseline does not apply); see the module docstring.

    `sizes` are hidden sizes (D in the rows is the state size: 2 x hidden for LSTMs).
    `max_iter` caps the Newton iterations (None: the solver's default)."""
    cells = (cell,) if isinstance(cell, str) else tuple(cell)
    for name in cells:
        if name not in CELLS:
            raise ValueError(f"cell: expected names from {', '.join(CELLS)}, got {name!r}")
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"methods: expected names from {', '.join(METHODS)}, got {method!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for name in baselines:
        if name not in BASELINES:
            raise ValueError(f"baselines: expected names from {', '.join(BASELINES)}, got {name!r}")
    device = torch.device(device)
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for name in cells:
            for hidden in sizes:
                for steps in lengths:
                    rows.extend(_one_setting(
                        name, hidden, steps, methods, dtype, device, batch, repeats, max_iter, tol, progress, seed, baselines, compile,
                    ))
    return rows


def _one_setting(
    name: str,
    hidden: int,
    steps: int,
    methods: Sequence[str],
    dtype: torch.dtype,
    device: torch.device,
    batch: int,
    repeats: int,
    max_iter: int | None,
    tol: float | None,
    progress: bool,
    seed: int,
    baselines: Sequence[str] = ("eager",),
    compile: bool = False,
) -> list[dict[str, Any]]:
    torch.manual_seed(seed)
    model = make_cell(name, hidden, hidden).to(device=device, dtype=dtype)
    dim = model.state_size
    x = torch.randn(batch, steps, hidden, device=device, dtype=dtype)
    label = f"{name} T={steps} D={dim}"

    run_sequential(model, x[:, : min(steps, 100)])  # warm-up
    seq_repeats = 1 if steps >= SLOW_SEQUENTIAL else repeats
    seconds_sequential, reference = _best_time(lambda: run_sequential(model, x), seq_repeats, device)
    extra: dict[str, float | None] = {}
    for baseline in baselines:
        if baseline == "eager":
            continue
        loop = compiled_sequential(model) if baseline == "compiled" else torch_rnn(model)
        if loop is None:
            extra[baseline] = None
            continue
        loop(x)  # warm-up (compiles)
        extra[baseline], out = _best_time(lambda: loop(x), repeats, device)
        _say(progress, f"{baseline:<10} {label}: {extra[baseline]:.4f}s err {float((out - reference).abs().max()):.1e}")

    rows = []
    seen: dict[tuple[str, bool], str] = {}
    for method in methods:
        quasi = method.startswith("quasi")
        kind = "diagonal" if quasi else model.jacobian_structure
        key = (kind, method in ("elk", "quasi_elk"))
        if key in seen:
            _say(progress, f"skip {method:<10} {label}: same computation as {seen[key]} for this cell")
            continue
        seen[key] = method
        if kind == "dense" and steps * dim * dim > DENSE_BUDGET:
            _say(progress, f"skip {method:<10} {label}: dense Jacobians need T*D^2 = {steps * dim * dim:.2e} > {DENSE_BUDGET:.2e} numbers")
            continue

        for compiled in (False, True) if compile else (False,):
            rows.append(_time_method(model, x, method, compiled, max_iter, tol, repeats, device, reference, seconds_sequential, extra, name, batch, progress, label))
    return rows


def _time_method(
    model: torch.nn.Module, x: torch.Tensor, method: str, compiled: bool, max_iter: int | None, tol: float | None, repeats: int,
    device: torch.device, reference: torch.Tensor, seconds_sequential: float, extra: dict[str, float | None], name: str,
    batch: int, progress: bool, label: str,
) -> dict[str, Any]:
    """One row: the Newton solve's best time against every baseline's."""

    def parallel() -> Any:
        return run_parallel(model, x, method=method, max_iter=max_iter, tol=tol, compile=compiled)

    parallel()  # warm-up (compiles when `compiled`)
    seconds_parallel, result = _best_time(parallel, repeats, device)
    steps, dim = x.shape[1], model.state_size
    row = {
        "method": method,
        "T": steps,
        "D": dim,
        "dtype": str(x.dtype).replace("torch.", ""),
        "seconds_parallel": seconds_parallel,
        "seconds_sequential": seconds_sequential,
        "speedup": seconds_sequential / seconds_parallel,
        "iterations": result.trace.iterations,
        "max_abs_err": float((result.h - reference).abs().max()),
        "device": str(device),
        "cell": name,
        "batch": batch,
        "converged": result.trace.converged,
        "compiled": compiled,
    }
    for baseline, seconds in extra.items():
        row[f"seconds_{baseline}"] = seconds
        row[f"speedup_{baseline}"] = None if seconds is None else seconds / seconds_parallel
    _say(
        progress,
        f"{method + (' (compiled)' if compiled else ''):<21} {label}: parallel {seconds_parallel:.4f}s sequential {seconds_sequential:.4f}s "
        f"speedup {row['speedup']:.2f}x iterations {row['iterations']} err {row['max_abs_err']:.1e}",
    )
    return row


def compiled_sequential(cell: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The sequential loop as one torch.compile'd program: x (B, T, input) -> states (B, T, D).

    torch's scan operator keeps the loop a loop (compiling a Python loop would unroll
    all T steps), so the compiled step runs T times with no Python in between."""
    from torch._higher_order_ops.scan import scan

    def step(h: torch.Tensor, u_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = cell.update(h, u_t)  # (B, D)
        return h, h.clone()  # the carry and the output may not alias

    def loop(x: torch.Tensor) -> torch.Tensor:
        u = cell.project(x)  # (B, T, P)
        h0 = x.new_zeros(x.shape[0], cell.state_size)
        return scan(step, h0, u, dim=1)[1]  # outputs stacked along dim 1: (B, T, D)

    # each call makes a new program for one cell and shape; lift dynamo's limit of 8 per function
    return torch._dynamo.config.patch(recompile_limit=1024)(torch.compile(loop, dynamic=False, fullgraph=True))


def torch_rnn(cell: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torch.nn.GRU carrying a GRUCell's weights (same equations and layout), as a
    function x (B, T, input) -> states (B, T, D); None for other cells (torch.nn.LSTM
    returns only the last cell state c, and the diagonal cells have no torch layer)."""
    from ponder.solvers.cells import GRUCell

    if type(cell) is not GRUCell:
        return None
    rnn = torch.nn.GRU(cell.input_size, cell.hidden_size, batch_first=True).to(cell.weight_hh)
    with torch.no_grad():
        for mine, theirs in (("weight_ih", "weight_ih_l0"), ("weight_hh", "weight_hh_l0"), ("bias_ih", "bias_ih_l0"), ("bias_hh", "bias_hh_l0")):
            getattr(rnn, theirs).copy_(getattr(cell, mine))
    return lambda x: rnn(x)[0]


def _best_time(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, Any]:
    """Best wall-clock time of `repeats` calls, and the last call's result."""
    best = float("inf")
    out = None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)
