"""Newton-in-time (DEER, quasi-DEER, ELK) and the recurrent cells, against the plain loop.

Tolerances are absolute max-abs differences: 1e-8 in float64 (the brief allows 1e-5),
and 1e-3 relative to max(1, max |reference|) in float32.
"""

from __future__ import annotations

import math
import random
import time
import warnings

import pytest
import torch

from ponder.solvers.bench_time import FIELDS, benchmark
from ponder.solvers.cells import (
    CELLS,
    DiagGRUCell,
    DiagLSTMCell,
    GRUCell,
    LSTMCell,
    RecurrentCell,
    blocks_to_dense,
    make_cell,
    run_parallel,
    run_sequential,
)
from ponder.solvers.newton import METHODS, solve_recurrence

BATCH, INPUT, HIDDEN, STEPS = 2, 3, 4, 50


class TanhCell(RecurrentCell):
    """f(h, x) = tanh(W h + U x + b) with no analytic Jacobian: exercises the torch.func path."""

    def __init__(self, dim: int, gain: float) -> None:
        super().__init__()
        self.state_size = dim
        self.w = torch.nn.Parameter(torch.randn(dim, dim) * gain / math.sqrt(dim))
        self.u = torch.nn.Linear(INPUT, dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(x)

    def update(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(h @ self.w.T + u)


class SineCell(RecurrentCell):
    """f(h, x) = 2 sin(2 h) + x: bounded but chaotic, |df/dh| up to 4, so Newton's linear
    recurrences overflow in float32 over a few hundred steps."""

    jacobian_structure = "diagonal"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.state_size = dim

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def update(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return 2 * torch.sin(2 * h) + u


def setup(name: str, dtype: torch.dtype, seed: int = 0, steps: int = STEPS) -> tuple[RecurrentCell, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    cell = make_cell(name, INPUT, HIDDEN).to(dtype)
    x = torch.randn(BATCH, steps, INPUT, dtype=dtype, requires_grad=True)
    h0 = (0.5 * torch.randn(BATCH, cell.state_size, dtype=dtype)).requires_grad_()
    return cell, x, h0


def grads_of(out: torch.Tensor, weights: torch.Tensor, wrt: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad((out * weights).sum(), wrt))


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    err = float((got - want).detach().abs().max())
    if dtype == torch.float64:
        assert err < 1e-8, err
    else:
        assert err < 1e-3 * max(1.0, float(want.detach().abs().max())), err


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(CELLS))
def test_parallel_matches_sequential_float64(name: str, method: str) -> None:
    cell, x, h0 = setup(name, torch.float64)
    wrt = [x, h0, *cell.parameters()]
    weights = torch.randn(BATCH, STEPS, cell.state_size, dtype=torch.float64)
    ref = run_sequential(cell, x, h0)
    result = run_parallel(cell, x, h0, method=method)
    assert result.trace.converged and not result.trace.fell_back
    assert result.trace.iterations < STEPS  # contracting cells converge long before T
    assert_close(result.h, ref, torch.float64)
    for got, want in zip(grads_of(result.h, weights, wrt), grads_of(ref, weights, wrt)):
        assert_close(got, want, torch.float64)


@pytest.mark.parametrize(("name", "method"), [("gru", "deer"), ("lstm", "quasi_deer"), ("diag_gru", "quasi_deer"), ("diag_lstm", "elk")])
def test_parallel_matches_sequential_float32(name: str, method: str) -> None:
    cell, x, h0 = setup(name, torch.float32, seed=1, steps=200)
    wrt = [x, h0, *cell.parameters()]
    weights = torch.randn(BATCH, 200, cell.state_size)
    ref = run_sequential(cell, x, h0)
    result = run_parallel(cell, x, h0, method=method)
    assert result.trace.converged
    assert_close(result.h, ref, torch.float32)
    for got, want in zip(grads_of(result.h, weights, wrt), grads_of(ref, weights, wrt)):
        assert_close(got, want, torch.float32)


def test_cells_match_torch_nn_cells() -> None:
    """Independent check of the cell equations: same parameters as torch.nn.GRUCell / LSTMCell."""
    torch.manual_seed(0)
    x = torch.randn(5, INPUT, dtype=torch.float64)
    gru, ref_gru = GRUCell(INPUT, HIDDEN).double(), torch.nn.GRUCell(INPUT, HIDDEN).double()
    ref_gru.load_state_dict(gru.state_dict())
    h = torch.randn(5, HIDDEN, dtype=torch.float64)
    torch.testing.assert_close(gru.step(h, x), ref_gru(x, h), rtol=0, atol=1e-12)
    lstm, ref_lstm = LSTMCell(INPUT, HIDDEN).double(), torch.nn.LSTMCell(INPUT, HIDDEN).double()
    ref_lstm.load_state_dict(lstm.state_dict())
    s = torch.randn(5, 2 * HIDDEN, dtype=torch.float64)
    h_new, c_new = ref_lstm(x, (s[:, :HIDDEN], s[:, HIDDEN:]))
    torch.testing.assert_close(lstm.step(s, x), torch.cat([h_new, c_new], dim=-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(CELLS))
def test_analytic_jacobians_match_jacrev(name: str) -> None:
    cell, _, _ = setup(name, torch.float64)
    h = torch.randn(BATCH, 5, cell.state_size, dtype=torch.float64)
    x = torch.randn(BATCH, 5, INPUT, dtype=torch.float64)
    flat = torch.func.vmap(torch.func.jacrev(cell.step))(h.reshape(-1, cell.state_size), x.reshape(-1, INPUT))
    want = flat.reshape(BATCH, 5, cell.state_size, cell.state_size)  # (B, T, D, D)
    torch.testing.assert_close(cell.jacobian(h, x), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(cell.jacobian_diag(h, x), want.diagonal(dim1=-2, dim2=-1), rtol=0, atol=1e-12)
    if cell.jacobian_structure == "diagonal":  # the diagonal is the whole Jacobian
        torch.testing.assert_close(torch.diag_embed(cell.jacobian_diag(h, x)), want, rtol=0, atol=1e-12)
    if cell.jacobian_structure == "blocks":
        blocks = cell.linearise(h, cell.project(x), "blocks")[1]
        assert blocks.shape == (BATCH, 5, 2, 2, HIDDEN)
        torch.testing.assert_close(blocks_to_dense(blocks), want, rtol=0, atol=1e-12)


def test_generic_cell_uses_torch_func_and_matches() -> None:
    torch.manual_seed(3)
    cell = TanhCell(5, gain=0.8).double()
    x = torch.randn(BATCH, 40, INPUT, dtype=torch.float64, requires_grad=True)
    wrt = [x, *cell.parameters()]
    weights = torch.randn(BATCH, 40, 5, dtype=torch.float64)
    ref = run_sequential(cell, x)
    ref_grads = grads_of(ref, weights, wrt)
    for method in ("deer", "quasi_elk"):
        result = run_parallel(cell, x, method=method)
        assert_close(result.h, ref, torch.float64)
        for got, want in zip(grads_of(result.h, weights, wrt), ref_grads):
            assert_close(got, want, torch.float64)


@pytest.mark.parametrize("method", ["deer", "quasi_deer"])
def test_exact_after_t_iterations_even_when_not_contracting(method: str) -> None:
    """Iterate k reproduces h_1..h_k exactly, so max_iter = T is exact for any cell."""
    torch.manual_seed(4)
    cell = TanhCell(4, gain=6.0).double()  # strongly expanding linearisation
    x = 3 * torch.randn(1, 5, INPUT, dtype=torch.float64)
    ref = run_sequential(cell, x)
    result = run_parallel(cell, x, method=method, max_iter=5, tol=1e-300)
    torch.testing.assert_close(result.h, ref, rtol=0, atol=1e-12)
    assert result.trace.converged  # T undamped steps are exact whatever the tolerance
    with pytest.warns(RuntimeWarning, match="max_iter=2 without converging"):
        partial = run_parallel(cell, x, method=method, max_iter=2, tol=1e-300)
    assert not partial.trace.converged
    torch.testing.assert_close(partial.h[:, :2], ref[:, :2], rtol=0, atol=1e-12)
    assert partial.trace.iterations == 2


def test_diag_cells_quasi_deer_is_exact_newton() -> None:
    cell, x, h0 = setup("diag_gru", torch.float64)
    deer = run_parallel(cell, x, h0, method="deer")
    quasi = run_parallel(cell, x, h0, method="quasi_deer")
    assert quasi.trace.iterations == deer.trace.iterations
    dense_gru, _, _ = setup("gru", torch.float64)
    assert run_parallel(dense_gru, x, h0, method="quasi_deer").trace.iterations > run_parallel(dense_gru, x, h0, method="deer").trace.iterations


def test_unstable_case_stays_finite_and_flags() -> None:
    torch.manual_seed(5)
    cell = SineCell(4)
    x = torch.randn(2, 400, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # it may stop unconverged; that is flagged below
        result = run_parallel(cell, x, method="deer", max_iter=30)
    assert torch.isfinite(result.h).all()
    assert result.trace.fell_back
    assert any(math.isnan(c) for c in result.trace.changes)  # the rejected non-finite step
    ref = run_sequential(cell, x)
    assert torch.isfinite(ref).all()
    if result.trace.converged:  # wherever it stopped, a converged answer must be the real one
        assert float((result.h - ref).abs().max()) < 1e-2


def test_elk_adapts_damping_and_warm_start_skips_work() -> None:
    cell, x, h0 = setup("gru", torch.float64)
    result = run_parallel(cell, x, h0, method="elk", damping=100.0)
    assert result.trace.converged and result.trace.damping < 100.0
    with torch.no_grad():
        ref = run_sequential(cell, x, h0)
        warm = solve_recurrence(cell, x, h0, init=ref)
    assert warm.trace.iterations == 0 and warm.trace.converged


def test_invalid_arguments() -> None:
    cell, x, h0 = setup("gru", torch.float32)
    with pytest.raises(ValueError, match="method"):
        run_parallel(cell, x, h0, method="newton")
    with pytest.raises(ValueError, match="h0"):
        run_parallel(cell, x, torch.zeros(BATCH, 7))
    with pytest.raises(ValueError, match="damping"):
        run_parallel(cell, x, h0, damping=-1.0)
    with pytest.raises(ValueError, match="kind"):
        cell.linearise(h0, cell.project(x[:, 0]), "blocks")
    with pytest.raises(ValueError, match="cell"):
        make_cell("rnn", 2, 2)


def test_cell_classes_declare_their_structure() -> None:
    assert GRUCell.jacobian_structure == LSTMCell.jacobian_structure == "dense"
    assert DiagGRUCell.jacobian_structure == "diagonal"
    assert DiagLSTMCell.jacobian_structure == "blocks" and DiagLSTMCell.block_size == 2


def test_benchmark_rows_on_a_tiny_size() -> None:
    start = time.perf_counter()
    rows = benchmark(lengths=(64,), sizes=(4,), methods=("quasi_deer", "deer", "elk"), cell="gru", repeats=1, progress=False)
    assert time.perf_counter() - start < 2.0
    assert [row["method"] for row in rows] == ["quasi_deer", "deer", "elk"]
    for row in rows:
        assert set(FIELDS) <= set(row)
        assert row["T"] == 64 and row["D"] == 4 and row["dtype"] == "float32"
        assert row["seconds_parallel"] > 0 and row["seconds_sequential"] > 0
        assert row["speedup"] == pytest.approx(row["seconds_sequential"] / row["seconds_parallel"])
        assert 1 <= row["iterations"] <= 64
        assert row["max_abs_err"] < 1e-3
    # diagonal cell: deer is the same computation as quasi_deer and is left out
    diag = benchmark(lengths=(64,), sizes=(4,), methods=("quasi_deer", "deer"), cell="diag_gru", repeats=1, progress=False)
    assert [row["method"] for row in diag] == ["quasi_deer"]


def test_default_cap_converges_on_short_sequences_for_every_cell_and_method() -> None:
    """Property sweep: random cells (all four kinds, random sizes and weight scales),
    lengths 1-64, every method, float64, the default max_iter: every solve converges
    without a warning and matches the sequential loop within 1e-8."""
    rng = random.Random(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for case in range(48):
            name = rng.choice(sorted(CELLS))
            method = rng.choice(METHODS)
            steps = rng.choice([1, 2, 3, 4, 5, rng.randint(6, 64)])
            hidden, batch = rng.randint(1, 6), rng.randint(1, 3)
            torch.manual_seed(case)
            cell = make_cell(name, INPUT, hidden).double()
            with torch.no_grad():
                for p in cell.parameters():
                    p.mul_(rng.choice([0.5, 1.0, 2.0, 3.0]))
            x = 2 * torch.randn(batch, steps, INPUT, dtype=torch.float64)
            h0 = torch.randn(batch, cell.state_size, dtype=torch.float64)
            with torch.no_grad():
                result = run_parallel(cell, x, h0, method=method)
                ref = run_sequential(cell, x, h0)
            label = f"case {case}: {name} {method} T={steps} H={hidden}"
            assert result.trace.converged, label
            assert float((result.h - ref).abs().max()) < 1e-8, label


def test_elk_on_short_sequences_was_unconverged_at_t_iterations() -> None:
    """The old default (max_iter = T) stopped damped solves early on short sequences;
    it now warns and flags instead of returning the wrong states silently."""
    cell, x, h0 = setup("gru", torch.float64)
    x = x[:, :3]
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="elk"):
            capped = run_parallel(cell, x, h0, method="elk", max_iter=3)
        ref = run_sequential(cell, x, h0)
        default = run_parallel(cell, x, h0, method="elk")
    assert not capped.trace.converged and default.trace.converged
    assert float((capped.h - ref).abs().max()) > 1e-6
    assert float((default.h - ref).abs().max()) < 1e-10


@pytest.mark.parametrize("name,method", [("gru", "deer"), ("diag_lstm", "elk")])
def test_compiled_path_equals_eager_outputs_and_gradients(name: str, method: str) -> None:
    """compile=True (fused torch.compile'd evaluate / step / adjoint programs, the
    elementwise dense scan, lambda as a tensor) against the eager path, float64."""
    cell, x, h0 = setup(name, torch.float64)
    eager = run_parallel(cell, x, h0, method=method)
    compiled = run_parallel(cell, x, h0, method=method, compile=True)
    assert compiled.trace.converged and compiled.trace.iterations == eager.trace.iterations
    assert_close(compiled.h, eager.h, torch.float64)
    weights = torch.randn_like(eager.h)
    wrt = [x, h0, *cell.parameters()]
    for got, want in zip(grads_of(compiled.h, weights, wrt), grads_of(eager.h, weights, wrt)):
        assert_close(got, want, torch.float64)
    with pytest.raises(ValueError, match="chunk"):
        run_parallel(cell, x, h0, method=method, compile=True, chunk=4)


def test_sequential_baselines_equal_the_plain_loop() -> None:
    """The benchmark's baselines compute the same states as `run_sequential`: torch.nn.GRU
    with the cell's weights, and the loop compiled as one scan program."""
    from ponder.solvers.bench_time import compiled_sequential, torch_rnn

    cell, x, _ = setup("gru", torch.float32, steps=20)
    with torch.no_grad():
        reference = run_sequential(cell, x)
        torch.testing.assert_close(torch_rnn(cell)(x), reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(compiled_sequential(cell)(x), reference, atol=1e-5, rtol=0)
    assert torch_rnn(make_cell("diag_gru", 3, 3)) is None and torch_rnn(make_cell("lstm", 3, 3)) is None
    rows = benchmark(lengths=(32,), sizes=(4,), methods=("deer",), cell="gru", repeats=1, progress=False, baselines=("eager", "torch"))
    assert rows[0]["speedup_torch"] == pytest.approx(rows[0]["seconds_torch"] / rows[0]["seconds_parallel"])
    with pytest.raises(ValueError, match="baselines"):
        benchmark(lengths=(32,), sizes=(4,), cell="gru", baselines=("jax",))
