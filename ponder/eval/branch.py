"""Test-time branching: guess one cell every way its rules allow, and let the model finish.

Commitment (`ponder.eval.commit`) writes the model's surest answers into the puzzle, but
on the hardest puzzles the model's surest cell is often wrong, and a wrong commit is
never undone. Yet a few right cells go a long way: on forum-hardest Sudoku a model that
solves 4% of the puzzles solves most of them once a handful of random right cells are
given. Branching finds those cells by trying every candidate, breadth first:

    level 0: run `segments` segments on the puzzle
    level d: every node of level d-1 whose answer did not pass the check picks one blank
             cell (the fewest candidates; on a tie, the cell the model is least sure
             of) and becomes one child per candidate digit, that digit written in as a
             given; each child runs `branch_segments` segments from its parent's state
    stop a puzzle at the first level where some node's answer passes the check

A node whose written digits are right has exactly one child whose new digit is right too,
so level d always holds a node with d right cells (unless `width` cut it). A child whose puzzle has a blank cell that no
digit fits has contradicted itself and is dropped before it runs; where a puzzle's
level would exceed `width` nodes, the ones whose written digits the model rated most
likely (the sum of their log-probabilities) are kept. No label is read: an answer that
passes the task's check (Sudoku: a valid grid keeping the original givens) is the
answer, else the level-0 answer.

Cost is counted in segment-runs per puzzle, as in the breadth tables: every node run,
times its segments, up to and including the level where the puzzle stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ponder.eval.commit import contradicted
from ponder.eval.evaluate import progress_bar
from ponder.models.driver import think
from ponder.train.losses import answer_correct


@dataclass
class BranchResult:
    n: int
    segments: int  # level 0
    branch_segments: int  # every later level, from the parent's state
    depth: int  # the deepest level
    width: int  # the most nodes a puzzle keeps at one level
    accuracy: list[float]  # [depth limit 0..D] exact accuracy: the first answer that passes by that level, else level 0's
    passed: list[float]  # [depth limit] share of puzzles with a passing answer by then
    segment_runs: list[float]  # [depth limit] mean segment-runs per puzzle
    nodes: list[float]  # [depth limit] mean nodes run per puzzle
    calls_per_segment: int

    def to_dict(self) -> dict:
        return asdict(self)


def branch_cell(tokens: torch.Tensor, allowed: torch.Tensor, sure: torch.Tensor, blank: int) -> torch.Tensor:
    """(B, L) puzzles, (B, L, V) allowed answers, (B, L) the model's top probability
    among them -> (B,) the cell to branch on: a blank one with the fewest candidates,
    on a tie the one the model is least sure of (lowest index on a full tie)."""
    count = allowed.sum(-1).float()  # (B, L)
    score = (count + 0.5 * sure).masked_fill(tokens != blank, float("inf"))
    return score.argmin(dim=1)


@torch.no_grad()
def run_branch(
    model, inputs: torch.Tensor, check, blank: int, candidates, segments: int, branch_segments: int, depth: int,
    width: int = 64, batch_size: int = 256, autocast: str = "none", ids: torch.Tensor | None = None, progress: bool = False,
    **options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Branching search on (N, L) puzzles; `candidates` maps (B, L) puzzles to the (B, L,
    V) bool answers each cell may take. Returns answers (N, D+1, L) int64 (at each level,
    the first passing answer, else level 0's), passed_at (N,) int64 (the level where an
    answer first passed, D+1 if none), segment_runs (N, D+1) and nodes (N, D+1) run at
    each level; on the CPU."""
    if min(segments, branch_segments, width, batch_size) < 1 or depth < 0:
        raise ValueError(f"segments, branch_segments, width and batch_size must be >= 1 and depth >= 0, "
                         f"got {segments}, {branch_segments}, {width}, {batch_size}, {depth}")
    device = next(model.parameters()).device
    n, length = inputs.shape
    answers = torch.zeros(n, depth + 1, length, dtype=torch.long)
    passed_at = torch.full((n,), depth + 1, dtype=torch.long)
    segment_runs = torch.zeros(n, depth + 1)
    nodes_run = torch.zeros(n, depth + 1)
    bar = progress_bar(n * (depth + 1), f"branching to depth {depth}", progress, "puzzle-level")  # every puzzle passes every level
    for begin in range(0, n, batch_size):
        puzzles = inputs[begin : begin + batch_size].to(device)  # (b, L)
        owner = torch.arange(puzzles.shape[0], device=device)  # (m,) each node's puzzle (chunk index)
        tokens, state = puzzles.clone(), None  # (m, L) each node's puzzle with its written digits
        path = torch.zeros(puzzles.shape[0], device=device)  # (m,) log-probability of the written digits
        allowed = candidates(puzzles).to(device)  # (m, L, V) the answers each node's cells may take (never the blank)
        for level in range(depth + 1):
            steps = segments if level == 0 else branch_segments
            bar.set_postfix(level=level, nodes=len(owner))
            logits, state = _run_nodes(model, tokens, state, owner, ids, begin, steps, batch_size, autocast, options)
            bar.update(puzzles.shape[0])
            pred = logits.argmax(-1)  # (m, L)
            ok = torch.as_tensor(check(puzzles[owner], pred), device=device)  # (m,) bool
            node_puzzle = owner.cpu() + begin  # (m,) row in inputs
            segment_runs[:, level].index_add_(0, node_puzzle, torch.full((len(node_puzzle),), float(steps)))
            nodes_run[:, level].index_add_(0, node_puzzle, torch.ones(len(node_puzzle)))
            if level == 0:
                answers[begin : begin + puzzles.shape[0]] = pred.cpu()[:, None]
            none = len(owner)  # no node passed
            first_pass = torch.full((puzzles.shape[0],), none, dtype=torch.long, device=device)  # (b,) the lowest passing node wins
            first_pass.scatter_reduce_(0, owner[ok], ok.nonzero().flatten(), reduce="amin")
            won = (first_pass < none).nonzero().flatten()
            answers[won.cpu() + begin, level:] = pred[first_pass[won]].cpu()[:, None]
            passed_at[won.cpu() + begin] = level
            if level == depth:
                break
            live = first_pass[owner] == none  # (m,) the node's puzzle is still unsolved
            if not bool(live.any()):
                break
            probs = logits.float().softmax(-1) * allowed  # (m, L, V)
            cell = branch_cell(tokens, allowed, probs.max(-1).values, blank)  # (m,)
            live &= (tokens == blank).any(dim=1)
            node_rows = torch.arange(len(owner), device=device)
            branches = allowed[node_rows, cell] & live[:, None]  # (m, V) the digits each node branches into
            parent, digit = branches.nonzero(as_tuple=True)  # (c,) children, parents in order, digits ascending
            rank = probs[parent, cell[parent], digit]
            order = torch.argsort(-rank, stable=True)
            order = order[torch.argsort(parent[order], stable=True)]  # by parent, then most likely digit first
            parent, digit = parent[order], digit[order]
            child = tokens[parent].clone()
            child[torch.arange(len(parent), device=device), cell[parent]] = digit
            child_path = path[parent] + probs[parent, cell[parent], digit].clamp_min(1e-12).log()
            child_allowed = candidates(child).to(device)  # (c, L, V)
            fits = ~contradicted(child, child_allowed, blank)
            keep = fits & _within_width(owner[parent].masked_fill(~fits, -1), child_path.masked_fill(~fits, -float("inf")), width)
            if not bool(keep.any()):
                break
            owner, tokens, path, allowed = owner[parent[keep]], child[keep], child_path[keep], child_allowed[keep]
            state = tuple(s[parent[keep]] for s in state)
        bar.update(puzzles.shape[0] * (depth - level))  # the levels this chunk skipped
    bar.close()
    return answers, passed_at, segment_runs, nodes_run


def _run_nodes(model, tokens, state, owner, ids, begin, steps, batch_size, autocast, options):
    """Run `steps` segments on every node, `batch_size` rows at a time; returns the last
    segment's logits (m, L, V) and state."""
    logits, states = [], []
    for start in range(0, tokens.shape[0], batch_size):
        part = slice(start, start + batch_size)
        rows_ids = None if ids is None else ids[owner[part].cpu() + begin].to(tokens.device)
        rows_state = None if state is None else tuple(s[part] for s in state)
        for last in think(model, tokens[part], steps, ids=rows_ids, state=rows_state, autocast=autocast, **options):
            pass
        logits.append(last.out.logits)
        states.append(tuple(s.detach() for s in last.out.state))
    return torch.cat(logits), tuple(torch.cat(parts) for parts in zip(*states))


def _within_width(owner: torch.Tensor, score: torch.Tensor, width: int) -> torch.Tensor:
    """(c,) each child's puzzle and score -> (c,) bool: among each puzzle's children, the
    `width` highest scores (ties: the earlier child)."""
    order = torch.argsort(-score, stable=True)
    order = order[torch.argsort(owner[order], stable=True)]  # by puzzle, best first
    sorted_owner = owner[order]
    new_group = torch.ones_like(sorted_owner, dtype=torch.bool)
    new_group[1:] = sorted_owner[1:] != sorted_owner[:-1]
    group_start = torch.cummax(torch.where(new_group, torch.arange(len(order), device=owner.device), 0), dim=0).values
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=owner.device) - group_start
    return rank < width


def evaluate_branch(
    model, inputs: torch.Tensor, labels: torch.Tensor, check, blank: int, candidates, segments: int,
    branch_segments: int, depth: int, width: int = 64, batch_size: int = 256, autocast: str = "none",
    ids: torch.Tensor | None = None, calls_per_segment: int | None = None, progress: bool = False, **options,
) -> BranchResult:
    """Exact accuracy, share passed, segment-runs and nodes for every depth limit 0..D."""
    was_training = model.training
    model.eval()
    answers, passed_at, runs, nodes = run_branch(model, inputs, check, blank, candidates, segments, branch_segments, depth,
                                                 width, batch_size, autocast, ids, progress, **options)
    model.train(was_training)
    correct = answer_correct(answers, labels.cpu()[:, None, :])  # (N, D+1)
    accuracy, passed, segment_runs, nodes_per = [], [], [], []
    for d in range(depth + 1):
        accuracy.append(round(float(correct[:, d].float().mean()), 6))
        passed.append(round(float((passed_at <= d).float().mean()), 6))
        segment_runs.append(round(float(runs[:, : d + 1].sum(dim=1).mean()), 4))
        nodes_per.append(round(float(nodes[:, : d + 1].sum(dim=1).mean()), 4))
    return BranchResult(
        n=int(inputs.shape[0]), segments=segments, branch_segments=branch_segments, depth=depth, width=width,
        accuracy=accuracy, passed=passed, segment_runs=segment_runs, nodes=nodes_per,
        calls_per_segment=calls_per_segment or model.calls_per_segment,
    )
