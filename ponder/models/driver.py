"""The thinking loop: the one driver of segments, for training (shrinking batches),
evaluation, early exit, exit on convergence and test-time breadth.

    for segment in think(model, tokens, segments):
        segment.out           # the SegmentOutput of the rows still thinking
        segment.rows          # (b,) which rows of `tokens` those are
        segment.leave(done)   # (b,) bool: these rows stop here and leave the batch

After each segment the state is detached (no gradient flows between segments), rows
that left are dropped from the batch, and the rest run the next segment, so later
segments cost only the rows still thinking. A caller that trains runs its backward
pass and optimizer step on `segment.out` before asking for the next segment.

Training with a fixed-shape batch, where a halted row is refilled with a new example
instead of leaving, is `ponder.train.carry.Carry`; it calls the same model segment.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ponder.models.base import SegmentOutput, State


@dataclass
class Segment:
    index: int  # 0-based segment number
    rows: torch.Tensor  # (b,) int64 rows of the batch this output is for, on the tokens' device
    out: SegmentOutput  # b rows
    change: torch.Tensor | None = None  # (b,) relative state change over this segment (`state_change`), when measured
    leaving: torch.Tensor | None = field(default=None, repr=False)  # (b,) bool set by `leave`

    def leave(self, done: torch.Tensor) -> None:
        """Rows (b,) bool that stop after this segment."""
        self.leaving = done if self.leaving is None else self.leaving | done


def autocast_context(device: torch.device, mode: str):
    """Mixed precision for `mode == "bfloat16"` (weights stay float32), full precision
    for "none"; "auto" is bfloat16 on CUDA and full precision elsewhere."""
    if mode == "auto":
        mode = "bfloat16" if device.type == "cuda" else "none"
    if mode == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def state_change(old: State, new: State) -> torch.Tensor:
    """Relative change of each example's state over one segment: the largest, over the
    latents, of ||new - old|| / ||new||. Tuples of (B, ...) tensors -> (B,) float."""
    changes = [
        (n.float() - o.float()).flatten(1).norm(dim=1) / n.float().flatten(1).norm(dim=1).clamp_min(1e-12)
        for o, n in zip(old, new)
    ]
    return torch.stack(changes).amax(dim=0)


def think(
    model, tokens: torch.Tensor, segments: int, *, ids: torch.Tensor | None = None, state: State | None = None,
    measure_change: bool = False, perturb: Callable[[State, torch.Tensor], State] | None = None, autocast: str = "none",
    **options,
) -> Iterator[Segment]:
    """Run up to `segments` segments of `model` on (B, L) `tokens` (with (B,) puzzle
    `ids` if the model has a puzzle table), from `state` (None: the model's initial
    state), yielding each segment. `measure_change` fills `Segment.change`;
    `perturb(state, rows)` changes the carried state between segments (breadth's
    Langevin noise; the change is measured before it). `options` go to every model call
    (e.g. an attractor's `solver_iters`)."""
    device = tokens.device
    if state is None:
        state = model.init_state(*tokens.shape)
    rows = torch.arange(tokens.shape[0], device=device)
    for index in range(segments):
        with autocast_context(device, autocast):
            out = model(tokens, state, ids, **options)
        segment = Segment(index, rows, out, state_change(state, out.state) if measure_change else None)
        yield segment
        if index + 1 == segments:
            return
        state = tuple(s.detach() for s in out.state)
        if perturb is not None:
            state = perturb(state, rows)
        if segment.leaving is not None:
            keep = ~segment.leaving
            if not bool(keep.any()):
                return
            rows, tokens = rows[keep], tokens[keep]
            ids = None if ids is None else ids[keep]
            state = tuple(s[keep] for s in state)
