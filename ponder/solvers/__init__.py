"""Iteration drivers shared by the model families."""

from ponder.solvers.unroll import GRAD_MODES, grad_steps, run_schedule

__all__ = ["GRAD_MODES", "grad_steps", "run_schedule"]
