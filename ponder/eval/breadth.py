"""Test-time breadth: think from K starting states per puzzle and pick one answer.

Depth (segments) is one test-time axis; breadth is the other. Each puzzle runs from K
initial states: start 0 is the model's own fixed initial state, starts 1..K-1 add
Gaussian noise of scale `init_noise` to every latent, and with `langevin` > 0 the
perturbed starts also get fresh noise of that scale added to the state after every
segment (a Langevin-style walk that can leave a wrong attractor). One answer per
puzzle is then selected among the first k starts by one of these rules:

residual    the start whose state changed least over its last segment: the one closest
            to a fixed point of the recurrence (no labels, no extra network calls)
vote        the most frequent whole answer; ties go to the lowest residual
first_halt  the answer of the first start whose halting head fires (ties: the highest
            halting logit), at the segment where it fires, so every start can stop
            there; if none fires, the start with the highest logit at the last segment
            (the rule that pairs with winner-take-all training, `train.wta_starts`)
verified    for tasks whose answers can be checked from the input alone (Sudoku: a
            valid grid that keeps the givens; a maze: a shortest path), the first answer
            the check accepts: at the first segment where any start passes, the lowest
            such start, so every start can stop there; if none passes by the limit, the
            vote. No label is read; where the answer is unique, passing means right
oracle      right if any of the k starts is right: an upper bound, not a usable rule

Because start 0 is the plain run, breadth 1 reproduces ordinary evaluation exactly.
Everything is recorded once for the largest K and every segment, so the whole
accuracy-vs-depth-x-breadth table costs one run of N x K examples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ponder.eval.evaluate import progress_bar
from ponder.eval.stopping import first_true
from ponder.models.driver import think
from ponder.train.losses import answer_correct

RULES = ("residual", "vote", "first_halt", "verified", "oracle")  # verified: only with a task check


@dataclass
class BreadthResult:
    n: int
    segments: int
    starts: int  # K
    init_noise: float
    langevin: float
    breadths: list[int]  # the k reported: 1, 2, 4, ..., K
    accuracy: dict[str, list[list[float]]]  # rule -> [segment 1..S][breadth index] exact accuracy
    first_halt_segments: list[list[float]]  # [segment limit 1..S][breadth index] mean segments first_halt runs each start
    calls_per_segment: int  # network calls of one start in one segment: cost = segment x k x this
    verified_segments: list[list[float]] | None = None  # like first_halt_segments, for the verified rule (None: no task check)

    def to_dict(self) -> dict:
        return asdict(self)


def breadths_up_to(starts: int) -> list[int]:
    """1, 2, 4, ... up to and including `starts`."""
    ks = [1]
    while ks[-1] * 2 < starts:
        ks.append(ks[-1] * 2)
    return ks + [starts] if starts > 1 else ks


@torch.no_grad()
def run_starts(
    model, inputs: torch.Tensor, segments: int, starts: int, init_noise: float, langevin: float = 0.0,
    batch_size: int = 256, autocast: str = "none", ids: torch.Tensor | None = None, seed: int = 0, progress: bool = False,
    **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run every (N, L) puzzle from `starts` initial states for `segments` segments.

    Returns preds (N, K, S, L) int64, residuals (N, K, S) float (the `state_change`
    over each segment, before any Langevin noise) and halting logits (N, K, S), on the CPU. Noise is drawn on the CPU
    from a generator seeded with `seed`, so results do not depend on the device."""
    if starts < 1:
        raise ValueError(f"starts must be >= 1, got {starts}")
    if init_noise < 0 or langevin < 0:
        raise ValueError(f"init_noise and langevin must be >= 0, got {init_noise} and {langevin}")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    per_chunk = max(1, batch_size // starts)  # puzzles per forward pass: per_chunk x K rows
    preds, residuals, halts = [], [], []
    bar = progress_bar(inputs.shape[0], f"breadth, {starts} starts x {segments} segments", progress)
    for begin in range(0, inputs.shape[0], per_chunk):
        tokens = inputs[begin : begin + per_chunk].to(device).repeat_interleave(starts, dim=0)  # (b K, L)
        puzzle_ids = None if ids is None else ids[begin : begin + per_chunk].to(device).repeat_interleave(starts)
        perturbed = (torch.arange(tokens.shape[0]) % starts != 0).float()  # (b K,) start 0 stays plain

        def noise(like: torch.Tensor, scale: float) -> torch.Tensor:
            eps = torch.randn(like.shape, generator=gen) * perturbed.view(-1, *[1] * (like.dim() - 1))
            return (scale * eps).to(device=like.device, dtype=like.dtype)

        def walk(state, rows):  # Langevin: fresh noise on the perturbed starts after every segment
            return tuple(s + noise(s, langevin) for s in state)

        state = tuple(s + noise(s, init_noise) for s in model.init_state(*tokens.shape))
        record = [
            (seg.out.logits.argmax(-1).cpu(), seg.change.cpu(), seg.out.halt_logits.float().cpu())
            for seg in think(model, tokens, segments, ids=puzzle_ids, state=state, measure_change=True,
                             perturb=walk if langevin > 0 else None, autocast=autocast, **options)
        ]
        seg_preds, seg_res, seg_halts = zip(*record)
        b = tokens.shape[0] // starts
        preds.append(torch.stack(seg_preds, dim=1).view(b, starts, segments, -1))
        residuals.append(torch.stack(seg_res, dim=1).view(b, starts, segments))
        halts.append(torch.stack(seg_halts, dim=1).view(b, starts, segments))
        bar.update(b)
    bar.close()
    return torch.cat(preds), torch.cat(residuals), torch.cat(halts)


def first_to_halt(halts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """halts (N, k, s) halting logits of k starts over s segments -> (N,) the segment
    index where the first start halts (s - 1 if none does) and (N,) the start chosen
    there: the highest logit, which is a start that halted if any did."""
    when = first_true((halts > 0).any(dim=1))  # (N,)
    at = halts[torch.arange(halts.shape[0]), :, when]  # (N, k)
    return when, at.argmax(dim=1)


def first_verified(passed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """passed (N, k, s) bool, a start's answer passes the task's check at a segment ->
    (N,) the first segment where any start passes (s - 1 if none does), (N,) the lowest
    start passing there (0 if none) and (N,) whether any passed."""
    any_start = passed.any(dim=1)  # (N, s)
    when = first_true(any_start)
    at = passed[torch.arange(passed.shape[0]), :, when]  # (N, k)
    return when, at.float().argmax(dim=1), any_start.any(dim=1)


def check_starts(check, inputs: torch.Tensor, preds: torch.Tensor, rows: int = 8192) -> torch.Tensor:
    """The task's label-free check of every answer: (N, L) inputs, (N, K, S, L) preds ->
    (N, K, S) bool, about `rows` answers at a time to bound memory."""
    out = []
    chunk = max(1, rows // (preds.shape[1] * preds.shape[2]))  # puzzles per call
    for begin in range(0, preds.shape[0], chunk):
        p = preds[begin : begin + chunk]  # (b, K, S, L)
        x = inputs[begin : begin + chunk, None, None, :].expand_as(p)
        out.append(torch.as_tensor(check(x.reshape(-1, p.shape[-1]), p.reshape(-1, p.shape[-1]))).view(p.shape[:3]))
    return torch.cat(out)


def select(preds: torch.Tensor, residuals: torch.Tensor, rule: str) -> torch.Tensor:
    """Pick one start per puzzle: preds (N, k, L), residuals (N, k) -> (N,) start index."""
    if rule == "residual":
        return residuals.argmin(dim=1)
    if rule == "vote":
        same = (preds[:, :, None, :] == preds[:, None, :, :]).all(dim=-1)  # (N, k, k)
        votes = same.sum(dim=2).float()  # (N, k) how many starts gave this start's answer
        rank = residuals.argsort(dim=1).argsort(dim=1).float()  # (N, k) 0 = lowest residual
        return (votes - rank / (rank.shape[1] + 1)).argmax(dim=1)
    raise ValueError(f"selection rule: expected residual or vote, got {rule!r}")


def evaluate_breadth(
    model, inputs: torch.Tensor, labels: torch.Tensor, segments: int, starts: int, init_noise: float = 0.5,
    langevin: float = 0.0, batch_size: int = 256, autocast: str = "none", ids: torch.Tensor | None = None, seed: int = 0,
    calls_per_segment: int | None = None, check=None, progress: bool = False, **options,
) -> BreadthResult:
    """Exact accuracy of (N, L) `labels` for every segment 1..S, breadth k in
    `breadths_up_to(starts)` and selection rule in RULES. `calls_per_segment`: network
    calls of one start in one segment (default: the model's own); `check`: the task's
    label-free answer check, (inputs, preds) -> bool per row, for the verified rule
    (without it that rule is left out); `options` go to every model call."""
    was_training = model.training
    model.eval()
    preds, residuals, halts = run_starts(model, inputs, segments, starts, init_noise, langevin, batch_size, autocast, ids, seed,
                                         progress, **options)
    model.train(was_training)
    correct = answer_correct(preds, labels.cpu()[:, None, None, :])  # (N, K, S)
    ks = breadths_up_to(starts)
    rows = torch.arange(preds.shape[0])
    passed = None if check is None else check_starts(check, inputs.cpu(), preds)  # (N, K, S)
    rules = [rule for rule in RULES if rule != "verified" or passed is not None]
    accuracy: dict[str, list[list[float]]] = {rule: [] for rule in rules}
    first_halt_segments: list[list[float]] = []
    verified_segments: list[list[float]] | None = None if passed is None else []
    for s in range(segments):
        for rule in rules:
            accuracy[rule].append([])
        first_halt_segments.append([])
        if verified_segments is not None:
            verified_segments.append([])
        for k in ks:
            when, pick = first_to_halt(halts[:, :k, : s + 1])
            accuracy["first_halt"][s].append(round(float(correct[rows, pick, when].float().mean()), 6))
            first_halt_segments[s].append(round(float((when + 1).float().mean()), 4))
            right = correct[:, :k, s]  # (N, k)
            accuracy["oracle"][s].append(round(float(right.any(dim=1).float().mean()), 6))
            picks = {rule: select(preds[:, :k, s], residuals[:, :k, s], rule) for rule in ("residual", "vote")}  # (N,) each
            for rule, pick in picks.items():
                accuracy[rule][s].append(round(float(right[rows, pick].float().mean()), 6))
            if passed is not None:
                when, pick, found = first_verified(passed[:, :k, : s + 1])
                won = torch.where(found, correct[rows, pick, when], right[rows, picks["vote"]])
                accuracy["verified"][s].append(round(float(won.float().mean()), 6))
                verified_segments[s].append(round(float((when + 1).float().mean()), 4))
    return BreadthResult(
        n=int(inputs.shape[0]), segments=segments, starts=starts, init_noise=init_noise, langevin=langevin,
        breadths=ks, accuracy=accuracy, first_halt_segments=first_halt_segments, calls_per_segment=calls_per_segment or model.calls_per_segment,
        verified_segments=verified_segments,
    )
