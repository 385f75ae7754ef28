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

from ponder.eval.stopping import Calibration, SegmentRecord, StopRule, apply_calibration, first_true, least_confidence
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
    calibrated_halting: dict | None = None  # a stop rule chosen on validation, scored here (`ponder.eval.stopping`)
    identifier_ablation: dict | None = None  # models with a puzzle table: the scores with a blank and with a random identifier

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@torch.no_grad()
def run_segments(
    model, inputs: torch.Tensor, segments: int, batch_size: int = 256, autocast: str = "none", progress: bool = False,
    ids: torch.Tensor | None = None, **options,
) -> SegmentRecord:
    """Predictions, halting logits, state changes and confidence after each segment.
    `ids`: (N,) puzzle identifiers for a model with a puzzle embedding; `options` go to
    every model call (e.g. an attractor's `solver_iters`).

    Returns a `SegmentRecord` on the CPU: preds (N, S, L), halting logits (N, S), state
    changes (N, S; the first is measured from the initial state) and the least top
    probability over positions (N, S)."""
    device = next(model.parameters()).device
    parts = []
    bar = progress_bar(inputs.shape[0], f"evaluating {inputs.shape[0]} examples x {segments} segments", progress)
    for start in range(0, inputs.shape[0], batch_size):
        tokens = inputs[start : start + batch_size].to(device)
        puzzle_ids = None if ids is None else ids[start : start + batch_size].to(device)
        record = [(seg.out.logits.argmax(-1), seg.out.halt_logits.float(), seg.change, least_confidence(seg.out.logits))
                  for seg in think(model, tokens, segments, ids=puzzle_ids, measure_change=True, autocast=autocast, **options)]
        parts.append(SegmentRecord(*(torch.stack(fields, dim=1).cpu() for fields in zip(*record))))
        bar.update(tokens.shape[0])
    bar.close()
    return SegmentRecord.cat(parts)


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "example"):
    """A tqdm bar on stderr when `enabled` (it vanishes when done), else one that does nothing."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not enabled)


@torch.no_grad()
def run_early_exit(
    model, inputs: torch.Tensor, max_segments: int, batch_size: int = 256, autocast: str = "none", halting: bool = True,
    ids: torch.Tensor | None = None, exit_tol: float = 0.0, rule: StopRule | None = None, **options,
):
    """Real per-example early exit: after each segment, rows that the stop rule stops
    keep their answer and leave the batch, so later segments cost only the rows still
    thinking. A stopped row's answer is the one it gets when run alone. The rule is
    `rule` if given (e.g. one calibrated on validation, `ponder.eval.stopping`), else
    the model's halting head (with `halting`) or a state change below `exit_tol` (> 0);
    `halting=False, exit_tol=0` runs every row for `max_segments`.

    Returns preds (N, L) int64 and segments used (N,) int64, on the CPU."""
    if rule is None:
        rule = StopRule(halt_threshold=0.0 if halting else None, exit_tol=exit_tol if exit_tol > 0 else None)
    limit = min(max_segments, rule.max_segments or max_segments)
    device = next(model.parameters()).device
    preds = torch.zeros(inputs.shape, dtype=torch.long)
    used = torch.zeros(inputs.shape[0], dtype=torch.long)
    for start in range(0, inputs.shape[0], batch_size):
        tokens = inputs[start : start + batch_size].to(device)
        puzzle_ids = None if ids is None else ids[start : start + batch_size].to(device)
        previous = None  # (b, L) every row's answer after the last segment, by row of `tokens`
        for seg in think(model, tokens, limit, ids=puzzle_ids, measure_change=rule.exit_tol is not None, autocast=autocast, **options):
            answer = seg.out.logits.argmax(-1)  # (b, L)
            done = torch.full_like(seg.rows, seg.index + 1 == limit, dtype=torch.bool)
            if rule.halt_threshold is not None:
                done |= seg.out.halt_logits.float() > rule.halt_threshold
            if rule.confidence is not None and previous is not None:
                done |= (answer == previous[seg.rows]).all(dim=-1) & (least_confidence(seg.out.logits) > rule.confidence)
            if rule.exit_tol is not None:
                done |= seg.change < rule.exit_tol
            if previous is None:
                previous = answer.clone()
            previous[seg.rows] = answer
            finished = (start + seg.rows[done]).cpu()
            preds[finished] = answer[done].cpu()
            used[finished] = seg.index + 1
            seg.leave(done)
    return preds, used


def first_halt(halt_logits: torch.Tensor) -> torch.Tensor:
    """(N, S) halting logits -> (N,) index of the first segment with a positive logit,
    or the last segment when none is positive."""
    return first_true(halt_logits > 0)


def evaluate(
    model, inputs: torch.Tensor, labels: torch.Tensor, segments: int, batch_size: int = 256, autocast: str = "none",
    progress: bool = False, ids: torch.Tensor | None = None, depths: torch.Tensor | None = None,
    score: Callable[[torch.Tensor, torch.Tensor], dict] | None = None, exit_tol: float | None = None,
    calibration: Calibration | None = None, **options,
) -> EvalResult:
    """Accuracy of (N, L) labels' scored positions (not IGNORE) after each segment;
    with (N,) `depths`, also per depth; `score(preds (N, L), halting probability (N,))`
    adds the task's own metrics for the last segment's answers; `exit_tol` adds the
    accuracy of exiting on convergence (state change below it); `calibration` (a stop
    rule chosen on the validation split) adds that rule's accuracy here. `options` go
    to every model call."""
    was_training = model.training
    model.eval()
    record = run_segments(model, inputs, segments, batch_size, autocast, progress, ids, **options)
    model.train(was_training)
    return score_segments(record, labels, depths, score, exit_tol, calibration)


def score_segments(
    record: SegmentRecord, labels: torch.Tensor, depths: torch.Tensor | None = None,
    score: Callable[[torch.Tensor, torch.Tensor], dict] | None = None, exit_tol: float | None = None,
    calibration: Calibration | None = None,
) -> EvalResult:
    """The metrics of `evaluate` from the per-segment record of `run_segments` (so a
    record gathered from several processes is scored the same way)."""
    preds, halts, changes = record.preds, record.halts, record.changes
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
        exact_accuracy=float(exact[:, -1].double().mean()),
        cell_accuracy=float(cells_right.double() / scored.sum().clamp_min(1)),
        accuracy_by_segment=[round(float(a), 6) for a in exact.double().mean(dim=0)],
        halting_accuracy=float(exact.gather(1, stop[:, None]).double().mean()),
        mean_segments=float((stop + 1).double().mean()),
        converged_accuracy=None if settled is None else float(exact.gather(1, settled[:, None]).double().mean()),
        converged_segments=None if settled is None else float((settled + 1).double().mean()),
        accuracy_by_depth={d: [round(float(a), 6) for a in exact[rows].double().mean(dim=0)] for d, rows in by_depth.items()} or None,
        cell_accuracy_by_depth={d: round(float(right[rows].sum() / scored[rows].sum().clamp_min(1)), 6) for d, rows in by_depth.items()} or None,
        task_metrics=None if score is None else score(preds[:, -1], torch.sigmoid(halts[:, -1])),
        calibrated_halting=None if calibration is None else apply_calibration(calibration, record, labels[:, 0]),
    )


def ablation_ids(ids: torch.Tensor, table_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The identifiers an ablation substitutes for (N,) `ids`: "blank" (0, which adds
    nothing) and "random" (uniform over the table's learned rows 1..table_size-1,
    seeded), to measure how much of a score the identifier alone carries."""
    gen = torch.Generator().manual_seed(seed)
    random = torch.randint(1, max(table_size, 2), ids.shape, generator=gen) if table_size > 1 else torch.zeros_like(ids)
    return {"blank": torch.zeros_like(ids), "random": random.to(ids.dtype)}


def ablation_scores(result: EvalResult) -> dict:
    """What an identifier ablation keeps of an evaluation: exact and cell accuracy and the task's own scores."""
    scores = {"exact_accuracy": result.exact_accuracy, "cell_accuracy": result.cell_accuracy}
    return {**scores, **({"task_metrics": result.task_metrics} if result.task_metrics else {})}
