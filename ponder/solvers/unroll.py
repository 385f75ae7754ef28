"""Run a recurrence for a number of steps, choosing which steps carry gradient.

A family's segment is a *schedule*: the flat list of its network calls in order (TRM:
n latent updates then one answer update, T times; HRM: L_cycles low-level updates then
one high-level update, H_cycles times). A gradient mode names how many of the last
calls of that schedule record gradient; the calls before them run under
`torch.no_grad()`, so they keep no activations and pass no gradient to any parameter.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch

State = TypeVar("State")

GRAD_MODES = ("full", "last_cycle", "one_step", "truncated")


def grad_steps(mode: str, total: int, per_cycle: int, truncate: int = 1) -> int:
    """How many trailing calls of a `total`-call schedule carry gradient.

    full: all of them. last_cycle: the last cycle's `per_cycle` calls (TRM).
    one_step: the last call of each of the two updates, i.e. the last 2 calls (HRM's
    one-step approximation). truncated: the last `truncate` calls."""
    if mode == "full":
        return total
    if mode == "last_cycle":
        return min(per_cycle, total)
    if mode == "one_step":
        return min(2, total)
    if mode == "truncated":
        if truncate < 1:
            raise ValueError(f"truncated gradient needs truncate >= 1, got {truncate}")
        return min(truncate, total)
    raise ValueError(f"gradient mode: expected one of {', '.join(GRAD_MODES)}, got {mode!r}")


def run_schedule(schedule: Sequence[Callable[[State], State]], state: State, grad_last: int) -> State:
    """Apply `schedule` in order; only the last `grad_last` calls record gradient."""
    if not 0 <= grad_last <= len(schedule):
        raise ValueError(f"grad_last must be in [0, {len(schedule)}], got {grad_last}")
    free = len(schedule) - grad_last
    if free:
        with torch.no_grad():
            for step in schedule[:free]:
                state = step(state)
    for step in schedule[free:]:
        state = step(state)
    return state
