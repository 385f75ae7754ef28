"""Test-time branching: the batched level-by-level search (nodes in batches, children in
parallel, a width cut) against a one-node-at-a-time reference, and the table's counts."""

import math

import pytest
import torch

from ponder.eval.branch import _within_width, branch_cell, evaluate_branch, run_branch
from ponder.eval.evaluate import run_segments
from test_commit import BLANK, check, row_candidates, tiny


@torch.no_grad()
def reference(model, puzzle, segments, branch_segments, depth, width, candidates):
    """One puzzle, written out node by node: -> (D+1, L) answers, the level it passed
    (D+1: never), segment-runs and nodes run at each level."""
    length = puzzle.shape[0]
    nodes = [(puzzle.clone(), model.init_state(1, length), 0.0)]  # (puzzle with written digits, state, path score)
    plain, answers, passed_at = None, [], depth + 1
    runs, counts = [0.0] * (depth + 1), [0.0] * (depth + 1)
    for level in range(depth + 1):
        steps = segments if level == 0 else branch_segments
        ran = []
        for tokens, state, path in nodes:
            for _ in range(steps):
                out = model(tokens[None], state, None)
                state = out.state
            ran.append((tokens, state, path, out.logits[0].float()))
            runs[level] += steps
            counts[level] += 1
        preds = [logits.argmax(-1) for *_, logits in ran]
        plain = preds[0] if level == 0 else plain
        passing = [p for p in preds if bool(check(puzzle[None], p[None])[0])]
        if passing:
            passed_at = level
            answers += [passing[0]] * (depth + 1 - level)
            break
        answers.append(plain)
        if level == depth:
            break
        children = []
        for tokens, state, path, logits in ran:
            open_cells = [i for i in range(length) if tokens[i] == BLANK]
            if not open_cells:
                continue
            allowed = candidates(tokens[None])[0].clone()
            allowed[:, BLANK] = False
            probs = logits.softmax(-1) * allowed
            cell = min(open_cells, key=lambda i: (int(allowed[i].sum()) + 0.5 * float(probs[i].max()), i))
            digits = sorted((d for d in range(allowed.shape[1]) if allowed[cell, d]), key=lambda d: -float(probs[cell, d]))
            for d in digits:
                child = tokens.clone()
                child[cell] = d
                left = candidates(child[None])[0]
                if any(child[i] == BLANK and not bool(left[i].any()) for i in range(length)):
                    continue  # contradicted: never runs
                children.append((child, state, path + math.log(max(float(probs[cell, d]), 1e-12))))
        kept = sorted(sorted(range(len(children)), key=lambda j: -children[j][2])[:width])
        nodes = [children[j] for j in kept]
        if not nodes:
            answers += [plain] * (depth - level)
            break
    return torch.stack(answers), passed_at, runs, counts


@pytest.mark.parametrize("width,batch_size", [(64, 256), (2, 3)])
def test_batched_branching_matches_the_reference(width, batch_size):
    model = tiny()
    torch.manual_seed(2)
    puzzles = torch.randint(0, 6, (10, 9)) * (torch.rand(10, 9) < 0.3)  # mostly blank, digits 1..5 as row_candidates allows
    answers, passed_at, runs, nodes = run_branch(model, puzzles, check, BLANK, row_candidates, segments=2, branch_segments=1,
                                                 depth=3, width=width, batch_size=batch_size)
    assert answers.shape == (10, 4, 9) and passed_at.shape == (10,) and runs.shape == nodes.shape == (10, 4)
    for n in range(10):
        want, when, want_runs, want_nodes = reference(model, puzzles[n], 2, 1, 3, width, row_candidates)
        assert torch.equal(answers[n], want) and int(passed_at[n]) == when
        assert runs[n].tolist() == want_runs and nodes[n].tolist() == want_nodes
    assert set(passed_at.tolist()) >= {1, 2, 4}  # passes after branching, and a puzzle that never passes
    assert float(nodes[:, 3].sum()) > 0 and bool(((passed_at == 4) & (nodes[:, 3] == 0)).any())  # some ran to depth 3, some ran out of nodes
    if width == 2:
        assert float(nodes.max()) <= 2 and float(nodes[:, 1:].max()) == 2  # the cut bit


def test_level_zero_is_plain_evaluation_and_the_table_counts():
    model = tiny()
    torch.manual_seed(3)
    puzzles = torch.randint(0, 6, (8, 9)) * (torch.rand(8, 9) < 0.3)
    labels = torch.randint(1, 10, (8, 9))
    answers, passed_at, runs, nodes = run_branch(model, puzzles, check, BLANK, row_candidates, 3, 2, 2)
    plain = run_segments(model, puzzles, 3).preds[:, -1]  # (N, L)
    unsolved = passed_at > 0
    assert torch.equal(answers[unsolved, 0], plain[unsolved]) and torch.equal(answers[~unsolved, 0], plain[~unsolved])
    labels[0] = answers[0, -1]  # make one answer right, so accuracy is not trivially 0
    result = evaluate_branch(model, puzzles, labels, check, BLANK, row_candidates, 3, 2, 2)
    assert result.accuracy[-1] == float((answers[:, -1] == labels).all(dim=1).float().mean())
    assert result.passed == [float((passed_at <= d).float().mean()) for d in range(3)]
    assert result.segment_runs[0] == 3.0 and result.segment_runs == [round(float(runs[:, : d + 1].sum(1).mean()), 4) for d in range(3)]
    assert result.nodes[0] == 1.0 and result.nodes[-1] >= result.nodes[0]


def test_branch_cell_and_width_rules():
    tokens = torch.tensor([[0, 0, 0, 5]])
    allowed = torch.zeros(1, 4, 10, dtype=torch.bool)
    allowed[0, 0, [1, 2, 3]] = allowed[0, 1, [1, 2]] = allowed[0, 2, [3, 4]] = allowed[0, 3, 5] = True
    sure = torch.tensor([[0.9, 0.8, 0.6, 1.0]])
    assert int(branch_cell(tokens, allowed, sure, 0)[0]) == 2  # two candidates each for cells 1, 2: the less sure one
    owner = torch.tensor([0, 0, 0, 1, 1])
    score = torch.tensor([-1.0, -0.5, -0.5, -3.0, -2.0])
    assert _within_width(owner, score, 2).tolist() == [False, True, True, True, True]
    assert _within_width(owner, score, 1).tolist() == [False, True, False, False, True]


def test_branching_rejects_bad_settings():
    with pytest.raises(ValueError, match="must be >= 1"):
        run_branch(tiny(), torch.zeros(1, 9, dtype=torch.long), check, BLANK, row_candidates, 1, 1, 1, width=0)


class CountingBar:
    """Stands in for the progress bar: records what the search reports."""

    def __init__(self, total, desc, enabled, unit="example"):
        self.total, self.enabled, self.done, self.closed = total, enabled, 0, False

    def update(self, n):
        self.done += n

    def set_postfix(self, **values):
        pass

    def close(self):
        self.closed = True


@pytest.mark.parametrize("method", ["branch", "commit", "breadth", "segments"])
def test_progress_reaches_its_total_and_changes_nothing(monkeypatch, method):
    import ponder.eval.branch as branch_module
    import ponder.eval.breadth as breadth_module
    import ponder.eval.commit as commit_module
    import ponder.eval.evaluate as evaluate_module

    bars = []

    def counting_bar(*args, **kwargs):
        bars.append(CountingBar(*args, **kwargs))
        return bars[-1]

    for module in (branch_module, breadth_module, commit_module, evaluate_module):
        monkeypatch.setattr(module, "progress_bar", counting_bar)
    model = tiny()
    torch.manual_seed(2)
    puzzles = torch.randint(0, 6, (10, 9)) * (torch.rand(10, 9) < 0.3)
    run = {  # each with a batch size that splits the 10 puzzles unevenly
        "branch": lambda progress: run_branch(model, puzzles, check, BLANK, row_candidates, 2, 1, 3, batch_size=3, progress=progress),
        "commit": lambda progress: commit_module.run_commit(model, puzzles, check, BLANK, 2, 2, 4, starts=2, batch_size=8,
                                                            candidates=row_candidates, progress=progress),
        "breadth": lambda progress: breadth_module.run_starts(model, puzzles, 2, 2, 0.5, batch_size=6, progress=progress),
        "segments": lambda progress: (run_segments(model, puzzles, 2, batch_size=4, progress=progress).preds,),
    }[method]
    quiet, shown = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(quiet, shown))
    assert [bar.enabled for bar in bars] == [False, True] and all(bar.closed for bar in bars)
    assert all(bar.done == bar.total for bar in bars) and bars[0].total == (40 if method == "branch" else 10)
