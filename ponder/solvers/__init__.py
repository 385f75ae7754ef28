"""Iteration drivers shared by the model families, and fixed-point solvers."""

from ponder.solvers.fixed_point import METHODS, SolverResult, SolverTrace, solve
from ponder.solvers.implicit import BACKWARDS, Equilibrium, fixed_point
from ponder.solvers.unroll import GRAD_MODES, grad_steps, run_schedule

__all__ = [
    "BACKWARDS", "GRAD_MODES", "METHODS", "Equilibrium", "SolverResult", "SolverTrace",
    "fixed_point", "grad_steps", "run_schedule", "solve",
]
