"""Evaluation that records the answer after every segment.

Each example runs `segments` deep-supervision segments. From the per-segment record
we read both the accuracy-vs-thinking-steps curve (every example runs every segment)
and the result of halting (each example's answer at the first segment whose halting
logit is positive, or the last one), so the two are always consistent.

Any family can also stop on convergence instead of on its halting head: an example
exits after the first segment whose relative state change (`state_change`) falls
below a tolerance. It needs no trained halting head, only a recurrence that settles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ponder.models.driver import state_change, think  # noqa: F401 (state_change: part of this module's API)
from ponder.tasks.grids import IGNORE
from ponder.train.losses import answer_correct


@dataclass
class EvalResult:
    n: int
    segments: int
    exact_accuracy: float  # whole answer right after the last segment
    cell_accuracy: float  # cells right after the last segment
    accuracy_by_segment: list[float]  # exact accuracy after segment 1..segments
    halting_accuracy: float  # exact accuracy at each example's halting segment
    mean_segments: float  # mean halting segment (1-based)
    converged_accuracy: float | None = None  # exact accuracy when each example exits once its state change < exit_tol
    converged_segments: float | None = None  # mean exit segment (1-based) under that rule
    accuracy_by_depth: dict[str, list[float]] | None = None  # depth -> exact accuracy after segment 1..segments (tasks with a depth dial)
    cell_accuracy_by_depth: dict[str, float] | None = None  # depth -> scored positions right after the last segment
    task_metrics: dict | None = None  # the task's own scoring of the last segment's answers (e.g. ARC pass@k, valid maze paths)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@torch.no_grad()
def run_segments(
    model, inputs: torch.Tensor, segments: int, batch_size: int = 256, autocast: str = "none", progress: bool = False,
    ids: torch.Tensor | None = None, **options,
):
    """Predictions, halting logits and state changes after each segment. `ids`: (N,)
    puzzle identifiers for a model with a puzzle embedding; `options` go to every model
    call (e.g. an attractor's `solver_iters`).

    Returns preds (N, S, L) int64, halt_logits (N, S) float and changes (N, S) float
    (`state_change` over each segment; the first is measured from the initial state),
    on the CPU."""
    device = next(model.parameters()).device
    preds, halts, changes = [], [], []
    starts = range(0, inputs.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"evaluating {inputs.shape[0]} examples x {segments} segments", unit="batch", leave=False)
    for start in starts:
        tokens = inputs[start : start + batch_size].to(device)
        puzzle_ids = None if ids is None else ids[start : start + batch_size].to(device)
        record = [(seg.out.logits.argmax(-1), seg.out.halt_logits.float(), seg.change)
                  for seg in think(model, tokens, segments, ids=puzzle_ids, measure_change=True, autocast=autocast, **options)]
        seg_preds, seg_halts, seg_changes = (torch.stack(parts, dim=1).cpu() for parts in zip(*record))
        preds.append(seg_preds)
        halts.append(seg_halts)
        changes.append(seg_changes)
    return torch.cat(preds), torch.cat(halts), torch.cat(changes)


@torch.no_grad()
def run_early_exit(
    model, inputs: torch.Tensor, max_segments: int, batch_size: int = 256, autocast: str = "none", halting: bool = True,
    ids: torch.Tensor | None = None, exit_tol: float = 0.0, **options,
):
    """Real per-example early exit: after each segment, rows that the model's halting
    rule stops (with `halting`), or whose `state_change` over the segment is below
    `exit_tol` (> 0), keep their answer and leave the batch, so later segments cost only
    the rows still thinking. A halted row's answer is the one it gets when run alone.
    `halting=False, exit_tol=0` runs every row for `max_segments`.

    Returns preds (N, L) int64 and segments used (N,) int64, on the CPU."""
    device = next(model.parameters()).device
    preds = torch.zeros(inputs.shape, dtype=torch.long)
    used = torch.zeros(inputs.shape[0], dtype=torch.long)
    for start in range(0, inputs.shape[0], batch_size):
        tokens = inputs[start : start + batch_size].to(device)
        puzzle_ids = None if ids is None else ids[start : start + batch_size].to(device)
        for seg in think(model, tokens, max_segments, ids=puzzle_ids, measure_change=exit_tol > 0, autocast=autocast, **options):
            done = torch.full_like(seg.rows, seg.index + 1 == max_segments, dtype=torch.bool)
            if halting:
                done |= model.halt_head.stop(seg.out.halt_logits)
            if exit_tol > 0:
                done |= seg.change < exit_tol
            finished = (start + seg.rows[done]).cpu()
            preds[finished] = seg.out.logits.argmax(-1)[done].cpu()
            used[finished] = seg.index + 1
            seg.leave(done)
    return preds, used


def first_halt(halt_logits: torch.Tensor) -> torch.Tensor:
    """(N, S) halting logits -> (N,) index of the first segment with a positive logit,
    or the last segment when none is positive."""
    return first_true(halt_logits > 0)


def first_true(stop: torch.Tensor) -> torch.Tensor:
    """(N, S) bool -> (N,) index of each row's first True, or S - 1 when it has none."""
    last = torch.full_like(stop[:, 0], stop.shape[1] - 1, dtype=torch.long)
    return torch.where(stop.any(dim=1), stop.float().argmax(dim=1).long(), last)


def evaluate(
    model, inputs: torch.Tensor, labels: torch.Tensor, segments: int, batch_size: int = 256, autocast: str = "none",
    progress: bool = False, ids: torch.Tensor | None = None, depths: torch.Tensor | None = None,
    score: Callable[[torch.Tensor, torch.Tensor], dict] | None = None, exit_tol: float | None = None, **options,
) -> EvalResult:
    """Accuracy of (N, L) labels' scored positions (not IGNORE) after each segment;
    with (N,) `depths`, also per depth; `score(preds (N, L), halting probability (N,))`
    adds the task's own metrics for the last segment's answers; `exit_tol` adds the
    accuracy of exiting on convergence (state change below it). `options` go to every
    model call."""
    was_training = model.training
    model.eval()
    preds, halts, changes = run_segments(model, inputs, segments, batch_size, autocast, progress, ids, **options)
    model.train(was_training)
    return score_segments(preds, halts, changes, labels, depths, score, exit_tol)


def score_segments(
    preds: torch.Tensor, halts: torch.Tensor, changes: torch.Tensor, labels: torch.Tensor, depths: torch.Tensor | None = None,
    score: Callable[[torch.Tensor, torch.Tensor], dict] | None = None, exit_tol: float | None = None,
) -> EvalResult:
    """The metrics of `evaluate` from the per-segment record of `run_segments` (so a
    record gathered from several processes is scored the same way)."""
    segments = preds.shape[1]
    labels = labels.cpu()[:, None, :]  # (N, 1, L)
    exact = answer_correct(preds, labels)  # (N, S)
    scored = labels[:, 0] != IGNORE  # (N, L)
    right = (preds[:, -1] == labels[:, 0]) & scored  # (N, L)
    cells_right = right.sum()
    stop = first_halt(halts)  # (N,)
    settled = None if exit_tol is None else first_true(changes < exit_tol)  # (N,)
    by_depth = {} if depths is None else {str(int(d)): depths.cpu() == d for d in depths.unique()}  # depth -> (N,) rows
    return EvalResult(
        n=int(preds.shape[0]),
        segments=segments,
        exact_accuracy=float(exact[:, -1].float().mean()),
        cell_accuracy=float(cells_right / scored.sum().clamp_min(1)),
        accuracy_by_segment=[round(float(a), 6) for a in exact.float().mean(dim=0)],
        halting_accuracy=float(exact.gather(1, stop[:, None]).float().mean()),
        mean_segments=float((stop + 1).float().mean()),
        converged_accuracy=None if settled is None else float(exact.gather(1, settled[:, None]).float().mean()),
        converged_segments=None if settled is None else float((settled + 1).float().mean()),
        accuracy_by_depth={d: [round(float(a), 6) for a in exact[rows].float().mean(dim=0)] for d, rows in by_depth.items()} or None,
        cell_accuracy_by_depth={d: round(float(right[rows].sum() / scored[rows].sum().clamp_min(1)), 6) for d, rows in by_depth.items()} or None,
        task_metrics=None if score is None else score(preds[:, -1], torch.sigmoid(halts[:, -1])),
    )
