"""Apply a step function repeatedly, choosing which iterations carry gradient."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

State = TypeVar("State")


def unroll(step: Callable[[State], State], state: State, iterations: int, grad_iterations: int | None = None) -> State:
    """Run `state = step(state)` `iterations` times.

    Only the last `grad_iterations` iterations record gradient (None: all of them);
    the earlier ones run under `torch.no_grad()`, so no activation memory is kept and
    no parameter receives gradient through them. `grad_iterations=1` over TRM's cycles
    is its "last cycle" rule; HRM's one-step gradient applies the same rule to modules.
    """
    if grad_iterations is None:
        grad_iterations = iterations
    if not 0 <= grad_iterations <= iterations:
        raise ValueError(f"grad_iterations must be in [0, {iterations}], got {grad_iterations}")
    free = iterations - grad_iterations
    if free:
        with torch.no_grad():
            for _ in range(free):
                state = step(state)
    for _ in range(grad_iterations):
        state = step(state)
    return state
