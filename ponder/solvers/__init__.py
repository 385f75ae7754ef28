"""Iteration drivers shared by the model families, and fixed-point solvers."""

from ponder.solvers.fixed_point import METHODS, SolverResult, SolverTrace, solve
from ponder.solvers.unroll import GRAD_MODES, grad_steps, run_schedule

__all__ = ["GRAD_MODES", "METHODS", "SolverResult", "SolverTrace", "grad_steps", "run_schedule", "solve"]
