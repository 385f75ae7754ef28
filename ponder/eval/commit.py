"""Test-time commitment: write the model's surest answers into the puzzle and think again.

A recurrent model carries every deduction in its latent state. On a puzzle whose
chains of deduction are longer than its training puzzles', that state runs out before
the answer is found. Commitment turns one hard puzzle into a sequence of easier ones:

    for round in 1..R:
        run `segments` segments
        if the answer passes the task's label-free check: stop, that is the answer
        copy the `per_round` still-blank cells whose answer the model is surest of
        (highest top probability) into the input as givens

The latent state carries over from round to round (`restart=True` starts each round
from the model's initial state instead). With the task's `candidates` (Sudoku: the
digits no peer holds) a cell only takes an answer the rules still allow, and a start
whose puzzle has a blank cell with no candidate left has contradicted itself: it stops,
without a label. A committed cell is never revised, so a wrong
commit spoils the puzzle (`ponder.eval.branch` tries every candidate of a cell instead);
breadth is the remedy here: K starts (noise of scale `init_noise`
on the initial latents of starts 2..K, as in `ponder.eval.breadth`) commit different
cells, and the first start whose answer passes wins, all starts stopping there (the
`verified` rule). No label is read. Only tasks whose answer fills the input's blank
cells in the input's own vocabulary can commit (`Builder.blank`: Sudoku, blank 0).

Round 1 is plain evaluation at `segments` segments; the cost of a run is counted in
segment-runs per puzzle (segments x the rounds each start ran, summed over starts), the
unit of the breadth tables.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ponder.eval.breadth import breadths_up_to
from ponder.eval.evaluate import progress_bar
from ponder.models.driver import think
from ponder.train.losses import answer_correct


@dataclass
class CommitResult:
    n: int
    segments: int  # per round
    per_round: int  # cells committed per round
    rounds: int  # the most rounds a start runs
    starts: int
    init_noise: float
    restart: bool
    breadths: list[int]  # the k reported
    accuracy: list[list[float]]  # [round limit 1..R][breadth index] exact accuracy, first start to pass (vote-free: start 0's answer where none passes)
    passed: list[list[float]]  # [round limit][breadth index] share of puzzles some start's answer passed the check by then
    segment_runs: list[list[float]]  # [round limit][breadth index] mean segment-runs per puzzle: segments x rounds each start ran, summed over k starts
    calls_per_segment: int
    spoiled: float  # share of puzzles where start 0 committed some wrong cell (reads the label: a diagnostic, not a rule)
    committed: float  # mean cells start 0 committed per puzzle
    contradicted: float  # share of puzzles where start 0 ended with a blank cell no candidate fits (label-free; 0 without candidates)
    filtered: bool  # commits were restricted to the task's candidates

    def to_dict(self) -> dict:
        return asdict(self)


def contradicted(tokens: torch.Tensor, allowed: torch.Tensor, blank: int) -> torch.Tensor:
    """(B, L) puzzles and their (B, L, V) allowed answers -> (B,) bool: some blank cell has
    no answer left, so no valid completion exists."""
    return ((tokens == blank) & ~allowed.any(dim=-1)).any(dim=1)


@torch.no_grad()
def run_commit(
    model, inputs: torch.Tensor, check, blank: int, segments: int, per_round: int, rounds: int, starts: int = 1,
    init_noise: float = 0.5, restart: bool = False, batch_size: int = 256, autocast: str = "none",
    ids: torch.Tensor | None = None, seed: int = 0, candidates=None, progress: bool = False, **options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Commit decoding of (N, L) puzzles from `starts` starting states; `candidates`
    ((B, L) puzzles -> (B, L, V) bool, optional) restricts the commits.

    Returns answers (N, K, R, L) int64, each start's answer after each round (after it
    stopped, its last answer repeats), passed_at (N, K) int64, the round (0-based)
    where its answer first passed `check`, or R where it never did, (N, K, L) each
    start's puzzle with its commits, and ran (N, K) int64, the rounds each start ran
    (it stops when it passes, contradicts itself or has no blank left); on the CPU."""
    if min(segments, per_round, rounds, starts) < 1:
        raise ValueError(f"segments, per_round, rounds and starts must be >= 1, got {segments}, {per_round}, {rounds}, {starts}")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    per_chunk = max(1, batch_size // starts)
    answers, passed_at, puzzles, rounds_run = [], [], [], []
    bar = progress_bar(inputs.shape[0], f"commitment, {starts} starts", progress, "puzzle")
    for begin in range(0, inputs.shape[0], per_chunk):
        original = inputs[begin : begin + per_chunk].to(device).repeat_interleave(starts, dim=0)  # (b K, L)
        puzzle_ids = None if ids is None else ids[begin : begin + per_chunk].to(device).repeat_interleave(starts)
        perturbed = (torch.arange(original.shape[0]) % starts != 0).float()  # (b K,) start 0 stays plain
        init = tuple(
            s + (init_noise * torch.randn(s.shape, generator=gen) * perturbed.view(-1, *[1] * (s.dim() - 1))).to(s.device, s.dtype)
            for s in model.init_state(*original.shape)
        )
        tokens = original.clone()  # (b K, L) the puzzle with this start's commits
        state = init
        answer = torch.zeros(rounds, *original.shape, dtype=torch.long, device=device)  # (R, b K, L)
        when = torch.full((original.shape[0],), rounds, dtype=torch.long, device=device)  # (b K,)
        ran = torch.zeros(original.shape[0], dtype=torch.long, device=device)  # (b K,)
        active = torch.arange(original.shape[0], device=device)  # rows still committing
        for r in range(rounds):
            ran[active] = r + 1
            rows_state = tuple(s[active] for s in init) if restart else state  # a = len(active) rows
            rows_ids = None if puzzle_ids is None else puzzle_ids[active]
            rows = tokens[active]  # (a, L) the puzzles as committed so far
            for last in think(model, rows, segments, ids=rows_ids, state=rows_state, autocast=autocast, **options):
                pass
            logits = last.out.logits.float()  # (a, L, V)
            pred = logits.argmax(-1)  # (a, L)
            answer[r:, active] = pred
            ok = torch.as_tensor(check(original[active], pred), device=device)  # (a,) bool
            when[active[ok]] = r
            probs = logits.softmax(-1)
            probs[..., blank] = 0  # a committed cell gets a real answer, never the blank token
            open_cells = rows == blank  # (a, L)
            keep = ~ok & open_cells.any(dim=1)  # rows with something left to commit
            if candidates is not None:
                allowed = candidates(rows).to(device)  # (a, L, V)
                probs = probs * allowed
                keep &= ~contradicted(rows, allowed, blank)  # a contradiction ends the start
            confidence, choice = probs.max(-1)  # (a, L)
            confidence = confidence.masked_fill(~open_cells, -1.0)
            top = confidence.topk(min(per_round, tokens.shape[1]), dim=1)  # (a, per_round) the surest cells
            chosen = torch.zeros_like(open_cells).scatter_(1, top.indices, top.values > 0)  # open ones with an allowed answer
            chosen &= keep[:, None]  # a row that passed keeps its puzzle as it was
            tokens[active] = torch.where(chosen, choice, rows)
            state = tuple(s[keep] for s in last.out.state)
            active = active[keep]
            if active.numel() == 0:
                break
        b = original.shape[0] // starts
        answers.append(answer.permute(1, 0, 2).reshape(b, starts, rounds, -1).cpu())
        passed_at.append(when.view(b, starts).cpu())
        puzzles.append(tokens.view(b, starts, -1).cpu())
        rounds_run.append(ran.view(b, starts).cpu())
        bar.update(b)
    bar.close()
    return torch.cat(answers), torch.cat(passed_at), torch.cat(puzzles), torch.cat(rounds_run)


def evaluate_commit(
    model, inputs: torch.Tensor, labels: torch.Tensor, check, blank: int, segments: int, per_round: int, rounds: int,
    starts: int = 1, init_noise: float = 0.5, restart: bool = False, batch_size: int = 256, autocast: str = "none",
    ids: torch.Tensor | None = None, seed: int = 0, calls_per_segment: int | None = None, candidates=None,
    progress: bool = False, **options,
) -> CommitResult:
    """Exact accuracy of commit decoding for every round limit 1..R and breadth k in
    `breadths_up_to(starts)`: the answer of the first start to pass the check (lowest
    start on a tie), else start 0's answer at the limit; segment-runs count every start
    running until it stops, the first pass or the limit."""
    was_training = model.training
    model.eval()
    answers, passed_at, filled, ran = run_commit(model, inputs, check, blank, segments, per_round, rounds, starts, init_noise,
                                    restart, batch_size, autocast, ids, seed, candidates, progress, **options)
    model.train(was_training)
    correct = answer_correct(answers, labels.cpu()[:, None, None, :])  # (N, K, R)
    rows = torch.arange(answers.shape[0])
    ks = breadths_up_to(starts)
    accuracy, passed, segment_runs = [], [], []
    for r in range(rounds):
        accuracy.append([]), passed.append([]), segment_runs.append([])
        for k in ks:
            first = passed_at[:, :k].amin(dim=1)  # (N,) the first round any start passed (R if none)
            found = first <= r
            pick = torch.where(found, (passed_at[:, :k] == first[:, None]).float().argmax(dim=1), torch.zeros_like(first))
            at = torch.where(found, first, torch.full_like(first, r))
            won = correct[rows, pick, at]
            accuracy[-1].append(round(float(won.float().mean()), 6))
            passed[-1].append(round(float(found.float().mean()), 6))
            segment_runs[-1].append(round(float((torch.minimum(ran[:, :k], at[:, None] + 1).sum(dim=1) * segments).float().mean()), 4))
    commits = filled[:, 0] != inputs.cpu()  # (N, L) start 0's committed cells
    spoiled = (commits & (filled[:, 0] != labels.cpu())).any(dim=1)
    return CommitResult(
        n=int(inputs.shape[0]), segments=segments, per_round=per_round, rounds=rounds, starts=starts, init_noise=init_noise,
        restart=restart, breadths=ks, accuracy=accuracy, passed=passed, segment_runs=segment_runs,
        calls_per_segment=calls_per_segment or model.calls_per_segment,
        spoiled=round(float(spoiled.float().mean()), 6), committed=round(float(commits.sum(dim=1).float().mean()), 4),
        contradicted=0.0 if candidates is None else round(float(
            contradicted(filled[:, 0], candidates(filled[:, 0]), blank).float().mean()), 6),
        filtered=candidates is not None,
    )
