"""Iteration drivers shared by the model families, fixed-point solvers in depth, and
Newton-in-time solvers for nonlinear recurrences (parallel over the sequence)."""

from ponder.solvers.bench_time import FIELDS as BENCH_FIELDS
from ponder.solvers.bench_time import benchmark
from ponder.solvers.cells import CELLS, DiagGRUCell, DiagLSTMCell, GRUCell, LSTMCell, RecurrentCell, make_cell, run_parallel, run_sequential
from ponder.solvers.fixed_point import METHODS, SolverResult, SolverTrace, solve
from ponder.solvers.implicit import BACKWARDS, Equilibrium, fixed_point
from ponder.solvers.newton import METHODS as NEWTON_METHODS
from ponder.solvers.newton import NewtonResult, NewtonTrace, solve_recurrence
from ponder.solvers.scan import (
    adjoint_recurrence, block_adjoint_recurrence, block_linear_recurrence, linear_recurrence, linear_recurrence_sequential,
)
from ponder.solvers.unroll import GRAD_MODES, grad_steps, run_schedule

__all__ = [
    "BACKWARDS", "BENCH_FIELDS", "CELLS", "GRAD_MODES", "METHODS", "NEWTON_METHODS",
    "DiagGRUCell", "DiagLSTMCell", "Equilibrium", "GRUCell", "LSTMCell", "NewtonResult", "NewtonTrace", "RecurrentCell",
    "SolverResult", "SolverTrace",
    "adjoint_recurrence", "benchmark", "block_adjoint_recurrence", "block_linear_recurrence", "fixed_point", "grad_steps",
    "linear_recurrence", "linear_recurrence_sequential", "make_cell", "run_parallel", "run_schedule", "run_sequential",
    "solve", "solve_recurrence",
]
