"""When to stop thinking, chosen on the validation split.

A trained halting head stops an example when its logit is positive; that threshold was
never chosen for accuracy, and on the default Sudoku run it gives up about six points
to save segments. A `StopRule` stops an example after the first segment where any of
its signals fires, all read from the per-segment record that evaluation keeps anyway
(`SegmentRecord`), so no labels and no extra network calls are needed:

    halt_threshold   the halting head's logit exceeds this
    confidence       the answer is the same as after the previous segment and every
                     position's top probability exceeds this ("stable and sure")
    exit_tol         the relative state change over the segment is below this
    max_segments     the segment limit

`calibrate` tries a grid of rules on the validation record and keeps the one with the
fewest mean segments whose validation accuracy is at least a target minus `tolerance`:
the all-segments accuracy (`target="last"`), or the best accuracy any rule of the grid
reaches (`target="best"`, for models that lose accuracy when run past the segments they
trained with); the test split is only ever scored with the rule already chosen.
The Pareto frontier of the grid (mean segments vs validation accuracy) is the
trade-off curve a user picks from.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from ponder.train.losses import answer_correct

HALT_THRESHOLDS = (None, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)  # halting logits
CONFIDENCES = (None, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)  # least top-probability over positions
EXIT_TOLS = (None, 0.003, 0.01, 0.03, 0.1)  # relative state change
TARGETS = ("last", "best")  # what calibrate aims at: the all-segments accuracy, or the grid's best


class SegmentRecord(NamedTuple):
    """What evaluation keeps of every example after every segment, on the CPU."""

    preds: torch.Tensor  # (N, S, L) int64 answer
    halts: torch.Tensor  # (N, S) float halting logit (> 0: the head would stop)
    changes: torch.Tensor  # (N, S) float relative state change over the segment
    confidence: torch.Tensor  # (N, S) float least top-probability over positions

    @property
    def stable(self) -> torch.Tensor:
        """(N, S) bool: the whole answer equals the previous segment's (never at segment 1)."""
        same = (self.preds[:, 1:] == self.preds[:, :-1]).all(dim=-1)  # (N, S - 1)
        return torch.cat([same.new_zeros(same.shape[0], 1), same], dim=1)

    @staticmethod
    def cat(parts: list["SegmentRecord"]) -> "SegmentRecord":
        return SegmentRecord(*(torch.cat(fields) for fields in zip(*parts)))


def first_true(stop: torch.Tensor) -> torch.Tensor:
    """(N, S) bool -> (N,) index of each row's first True, or S - 1 when it has none."""
    last = torch.full_like(stop[:, 0], stop.shape[1] - 1, dtype=torch.long)
    return torch.where(stop.any(dim=1), stop.float().argmax(dim=1).long(), last)


def least_confidence(logits: torch.Tensor) -> torch.Tensor:
    """(B, L, V) logits -> (B,) the smallest, over positions, of the top softmax probability."""
    return logits.float().softmax(dim=-1).amax(dim=-1).amin(dim=-1)


@dataclass(frozen=True)
class StopRule:
    halt_threshold: float | None = 0.0  # stop when the halting logit is above this (None: ignore the head)
    confidence: float | None = None  # stop when the answer is unchanged and every position is surer than this
    exit_tol: float | None = None  # stop when the relative state change is below this
    max_segments: int | None = None  # stop here at the latest (None: the record's last segment)

    def fires(self, record: SegmentRecord, stable: torch.Tensor | None = None) -> torch.Tensor:
        """(N, S) bool: the segments after which this rule stops an example (`stable`:
        the record's, when already computed)."""
        stop = torch.zeros_like(record.halts, dtype=torch.bool)
        if self.halt_threshold is not None:
            stop |= record.halts > self.halt_threshold
        if self.confidence is not None:
            stop |= (record.stable if stable is None else stable) & (record.confidence > self.confidence)
        if self.exit_tol is not None:
            stop |= record.changes < self.exit_tol
        if self.max_segments is not None:
            stop[:, self.max_segments - 1 :] = True
        return stop

    def first_stop(self, record: SegmentRecord, stable: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) 0-based index of each example's stopping segment (the last one if none fires)."""
        return first_true(self.fires(record, stable))

    def describe(self) -> str:
        parts = []
        if self.halt_threshold is not None:
            parts.append(f"halting logit > {self.halt_threshold:g}")
        if self.confidence is not None:
            parts.append(f"answer unchanged and every position p > {self.confidence:g}")
        if self.exit_tol is not None:
            parts.append(f"state change < {self.exit_tol:g}")
        limit = "the segment limit" if self.max_segments is None else f"at most {self.max_segments} segment{'s' if self.max_segments > 1 else ''}"
        return (" or ".join(parts) + f"; {limit}") if parts else limit

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "StopRule":
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"stop rule: unknown keys {', '.join(sorted(unknown))}; expected {', '.join(sorted(known))}")
        return cls(**values)


def score_rule(rule: StopRule, record: SegmentRecord, labels: torch.Tensor) -> tuple[float, float]:
    """(exact accuracy, mean segments used) of `rule` on a record with (N, L) labels."""
    return _score(rule.first_stop(record), answer_correct(record.preds, labels.cpu()[:, None, :]))


def _score(stop: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """(N,) stopping segments and (N, S) whole-answer correctness -> (accuracy, mean segments)."""
    return float(exact.gather(1, stop[:, None]).double().mean()), float((stop + 1).double().mean())


@dataclass
class Calibration:
    rule: StopRule  # the chosen rule
    val_accuracy: float  # its validation accuracy
    val_segments: float  # its mean segments on validation
    val_all_segments: float  # validation accuracy after every segment
    val_n: int  # validation examples it was chosen on
    tolerance: float
    target: str  # "last" or "best" (TARGETS)
    val_target: float  # the validation accuracy aimed at, before the tolerance
    frontier: list[dict]  # the Pareto frontier on validation: rule, val accuracy, val segments (ascending)

    def to_dict(self) -> dict:
        return {**asdict(self), "rule": self.rule.to_dict(), "describe": self.rule.describe()}


def candidate_rules(segments: int) -> list[StopRule]:
    """The grid `calibrate` searches: every combination of the signals' settings and limits."""
    limits = sorted({m for m in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32) if m < segments} | {segments})
    return [StopRule(h, c, e, m) for h, c, e, m in itertools.product(HALT_THRESHOLDS, CONFIDENCES, EXIT_TOLS, limits)]


def calibrate(record: SegmentRecord, labels: torch.Tensor, tolerance: float = 0.0, target: str = "last") -> Calibration:
    """Choose a rule on a validation record: the fewest mean segments whose accuracy is
    at least the target (the all-segments accuracy, or with target="best" the highest
    any candidate rule reaches) minus `tolerance` (ties: the higher accuracy)."""
    if target not in TARGETS:
        raise ValueError(f"calibrate: target {target!r}; expected one of {', '.join(TARGETS)}")
    segments = record.preds.shape[1]
    exact = answer_correct(record.preds, labels.cpu()[:, None, :])  # (N, S)
    full = float(exact[:, -1].double().mean())
    stable = record.stable
    scored = []
    for rule in candidate_rules(segments):
        accuracy, mean_segments = _score(rule.first_stop(record, stable), exact)
        scored.append((mean_segments, accuracy, rule))
    scored.sort(key=lambda t: (t[0], -t[1]))
    frontier, best = [], -1.0
    for segs, acc, rule in scored:
        if acc > best:
            best = acc
            frontier.append({"rule": rule.to_dict(), "describe": rule.describe(), "val_accuracy": round(acc, 6), "val_segments": round(segs, 4)})
    aim = full if target == "last" else best  # best: the frontier's last, the grid's highest accuracy
    segs, acc, rule = next(t for t in scored if t[1] >= aim - tolerance - 1e-9)
    return Calibration(rule, acc, segs, full, int(record.preds.shape[0]), tolerance, target, aim, frontier)


def apply_calibration(calibration: Calibration, record: SegmentRecord, labels: torch.Tensor) -> dict:
    """The chosen rule and its frontier scored on another split (the test split): what
    `ponder train` and `ponder eval --calibrate-halting` report."""
    exact, stable = answer_correct(record.preds, labels.cpu()[:, None, :]), record.stable  # once for every rule
    accuracy, segments = _score(calibration.rule.first_stop(record, stable), exact)
    frontier = []
    for point in calibration.frontier:
        acc, segs = _score(StopRule.from_dict(point["rule"]).first_stop(record, stable), exact)
        frontier.append({**point, "accuracy": round(acc, 6), "segments": round(segs, 4)})
    return {**calibration.to_dict(), "frontier": frontier, "accuracy": accuracy, "mean_segments": segments}
