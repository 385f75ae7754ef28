"""Evaluation that records the answer after every segment.

Each example runs `segments` deep-supervision segments. From the per-segment record
we read both the accuracy-vs-thinking-steps curve (every example runs every segment)
and the result of halting (each example's answer at the first segment whose halting
logit is positive, or the last one), so the two are always consistent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class EvalResult:
    n: int
    segments: int
    exact_accuracy: float  # whole answer right after the last segment
    cell_accuracy: float  # cells right after the last segment
    accuracy_by_segment: list[float]  # exact accuracy after segment 1..segments
    halting_accuracy: float  # exact accuracy at each example's halting segment
    mean_segments: float  # mean halting segment (1-based)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def run_segments(model, inputs: torch.Tensor, segments: int, batch_size: int = 256, autocast: str = "none", progress: bool = False):
    """Predictions and halting logits after each segment.

    Returns preds (N, S, L) int64 and halt_logits (N, S) float, on the CPU."""
    device = next(model.parameters()).device
    preds, halts = [], []
    starts = range(0, inputs.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"evaluating {inputs.shape[0]} examples x {segments} segments", unit="batch", leave=False)
    for start in starts:
        tokens = inputs[start : start + batch_size].to(device)
        state, seg_preds, seg_halts = None, [], []
        for _ in range(segments):
            with _autocast(device, autocast):
                out = model(tokens, state)
            state = out.state
            seg_preds.append(out.logits.argmax(-1).cpu())
            seg_halts.append(out.halt_logits.float().cpu())
        preds.append(torch.stack(seg_preds, dim=1))
        halts.append(torch.stack(seg_halts, dim=1))
    return torch.cat(preds), torch.cat(halts)


def first_halt(halt_logits: torch.Tensor) -> torch.Tensor:
    """(N, S) halting logits -> (N,) index of the first segment with a positive logit,
    or the last segment when none is positive."""
    S = halt_logits.shape[1]
    positive = halt_logits > 0
    idx = torch.where(positive.any(dim=1), positive.float().argmax(dim=1), torch.full_like(positive[:, 0], S - 1, dtype=torch.long))
    return idx.long()


def evaluate(model, inputs: torch.Tensor, labels: torch.Tensor, segments: int, batch_size: int = 256, autocast: str = "none", progress: bool = False) -> EvalResult:
    was_training = model.training
    model.eval()
    preds, halts = run_segments(model, inputs, segments, batch_size, autocast, progress)
    model.train(was_training)
    correct_cells = preds == labels.cpu()[:, None, :]  # (N, S, L)
    exact = correct_cells.all(dim=-1)  # (N, S)
    stop = first_halt(halts)  # (N,)
    return EvalResult(
        n=int(inputs.shape[0]),
        segments=segments,
        exact_accuracy=float(exact[:, -1].float().mean()),
        cell_accuracy=float(correct_cells[:, -1].float().mean()),
        accuracy_by_segment=[round(float(a), 6) for a in exact.float().mean(dim=0)],
        halting_accuracy=float(exact.gather(1, stop[:, None]).float().mean()),
        mean_segments=float((stop + 1).float().mean()),
    )


def _autocast(device: torch.device, mode: str):
    if mode == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)
