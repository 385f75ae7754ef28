"""Iteration drivers shared by the model families."""

from ponder.solvers.unroll import unroll

__all__ = ["unroll"]
