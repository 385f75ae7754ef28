"""Test-time commitment: the batched decoder (rows leave as they pass, fill up or contradict
themselves) against a one-puzzle-at-a-time reference, round 1 against plain evaluation, the
table's counts, and Sudoku's candidates against a direct count."""

import pytest
import torch

from ponder.eval.commit import evaluate_commit, run_commit
from ponder.eval.evaluate import run_segments
from ponder.models import TRM
from ponder.tasks import sudoku

BLANK = 0


def tiny():
    torch.manual_seed(0)
    return TRM(vocab=10, seq_len=9, hidden=16, heads=2, layers=1, latent_steps=1, cycles=2).double().eval()


def check(puzzles, answers):  # a label-free stand-in that an untrained model passes now and then
    return answers.sum(dim=1) % 4 == 0


def row_candidates(puzzles):  # the 9 cells as one row: a blank cell may take any digit of 1..5 the row lacks
    used = torch.zeros(puzzles.shape[0], 10, dtype=torch.bool).scatter_(1, puzzles, True)  # (B, V)
    used[:, BLANK] = False
    used[:, 6:] = True  # so five commits leave the other blanks stuck: contradictions happen
    filled = torch.nn.functional.one_hot(puzzles, 10).bool()  # (B, L, V)
    allowed = torch.where((puzzles == BLANK)[..., None], ~used[:, None, :], filled)
    allowed[..., BLANK] = False
    return allowed


@torch.no_grad()
def reference(model, puzzle, segments, per_round, rounds, restart, candidates=None):
    """One puzzle, one start, written out: -> (R, L) answers, the round it passed (R: never),
    (L) the puzzle with its commits, the rounds it ran."""
    tokens = puzzle.clone()[None]  # (1, L)
    state = model.init_state(1, puzzle.shape[0])
    answers, passed_at = [], rounds
    for r in range(rounds):
        ran = r + 1
        if restart:
            state = model.init_state(1, puzzle.shape[0])
        for _ in range(segments):
            out = model(tokens, state, None)
            state = out.state
        pred = out.logits.argmax(-1)  # (1, L)
        answers.append(pred[0])
        open_cells = [i for i in range(tokens.shape[1]) if tokens[0, i] == BLANK]
        if bool(check(puzzle[None], pred)[0]):
            passed_at = r
        probs = out.logits.softmax(-1)[0]  # (L, V)
        probs[:, BLANK] = 0
        if candidates is not None:
            allowed = candidates(tokens)[0]  # (L, V)
            probs = probs * allowed
            stuck = any(not bool(allowed[i].any()) for i in open_cells)
        if passed_at < rounds or not open_cells or (candidates is not None and stuck):
            answers += [pred[0]] * (rounds - r - 1)
            break
        surest = sorted((i for i in open_cells if float(probs[i].max()) > 0), key=lambda i: -float(probs[i].max()))[:per_round]
        for i in surest:
            tokens[0, i] = int(probs[i].argmax())
    return torch.stack(answers), passed_at, tokens[0], ran


@pytest.mark.parametrize("restart,candidates", [(False, None), (True, None), (False, row_candidates)])
def test_batched_commitment_matches_the_reference(restart, candidates):
    model = tiny()
    torch.manual_seed(1)
    puzzles = torch.randint(0, 10, (12, 9)) * (torch.rand(12, 9) < 0.4)  # mostly blank
    answers, passed_at, filled, ran = run_commit(model, puzzles, check, BLANK, segments=2, per_round=2, rounds=5, starts=1,
                                         init_noise=0.0, restart=restart, batch_size=5, candidates=candidates)
    assert answers.shape == (12, 1, 5, 9) and passed_at.shape == (12, 1) and ran.shape == (12, 1)
    for n in range(12):
        want, when, tokens, rounds_run = reference(model, puzzles[n], 2, 2, 5, restart, candidates)
        assert torch.equal(answers[n, 0], want) and int(passed_at[n, 0]) == when and torch.equal(filled[n, 0], tokens)
        assert int(ran[n, 0]) == rounds_run
    assert 0 < int((passed_at[:, 0] < 5).sum()) < 12  # some pass, some never do: both paths ran
    assert int((passed_at[:, 0] > 0).sum()) > 0  # and some pass only after committing
    if candidates is not None:
        committed = filled[:, 0] != puzzles
        assert torch.equal(row_candidates(filled[:, 0])[committed.nonzero(as_tuple=True) + (filled[:, 0][committed],)],
                           torch.ones(int(committed.sum()), dtype=torch.bool))  # every commit was allowed
        stuck = ((filled[:, 0] == BLANK) & ~row_candidates(filled[:, 0]).any(-1)).any(dim=1)
        assert bool(stuck.any()) and bool((ran[stuck, 0] < 5).all())  # a contradiction stops a start before the limit


def test_round_one_is_plain_evaluation_and_noise_moves_other_starts():
    model = tiny()
    puzzles = torch.randint(0, 10, (6, 9)) * (torch.rand(6, 9) < 0.4)
    answers, _, _, _ = run_commit(model, puzzles, check, BLANK, segments=3, per_round=1, rounds=3, starts=3, init_noise=2.0)
    plain = run_segments(model, puzzles, 3).preds  # (N, S, L)
    assert torch.equal(answers[:, 0, 0], plain[:, -1])
    assert not torch.equal(answers[:, 1:, 0], answers[:, :1, 0].expand(-1, 2, -1))
    again, _, _, _ = run_commit(model, puzzles, check, BLANK, segments=3, per_round=1, rounds=3, starts=3, init_noise=2.0)
    assert torch.equal(again, answers)  # seeded


def test_commit_table_against_direct_counts():
    model = tiny()
    torch.manual_seed(3)  # a seed where start 0 contradicts itself on one puzzle
    puzzles = torch.randint(0, 10, (10, 9)) * (torch.rand(10, 9) < 0.4)
    answers, passed_at, filled, ran = run_commit(model, puzzles, check, BLANK, segments=2, per_round=3, rounds=4, starts=3,
                                         init_noise=1.0, candidates=row_candidates)
    labels = answers[:, 2, 3].clone()  # start 2's last answers are "right"
    result = evaluate_commit(model, puzzles, labels, check, BLANK, segments=2, per_round=3, rounds=4, starts=3, init_noise=1.0,
                             candidates=row_candidates)
    assert result.breadths == [1, 2, 3]
    for r in range(4):
        for j, k in enumerate(result.breadths):
            right, passed, runs = [], [], []
            for n in range(10):
                first = min(int(passed_at[n, i]) for i in range(k))
                if first <= r:
                    start, at = min(i for i in range(k) if int(passed_at[n, i]) == first), first
                else:
                    start, at = 0, r
                right.append(bool(torch.equal(answers[n, start, at], labels[n])))
                passed.append(first <= r)
                runs.append(sum(min(int(ran[n, i]), at + 1) for i in range(k)) * 2)
            assert result.accuracy[r][j] == round(sum(right) / 10, 6)
            assert result.passed[r][j] == round(sum(passed) / 10, 6)
            assert result.segment_runs[r][j] == round(sum(runs) / 10, 4)
    commits = filled[:, 0] != puzzles
    assert result.committed == round(float(commits.sum()) / 10, 4)
    assert result.spoiled == round(sum(bool((filled[n, 0] != labels[n])[commits[n]].any()) for n in range(10)) / 10, 6)
    stuck = [BLANK in filled[n, 0].tolist() and not set(range(1, 6)) - set(filled[n, 0].tolist()) for n in range(10)]
    assert result.contradicted == round(sum(stuck) / 10, 6) and result.filtered and any(stuck)
    assert int((ran < 4).sum()) > 0 and result.segment_runs[3][2] < 4 * 2 * 3  # stopped starts cost less than the limit


def test_sudoku_candidates_against_a_direct_count():
    puzzles, _ = sudoku.generate(3, blanks=50, seed=4)
    grids = torch.from_numpy(puzzles).long()
    grids[2, 0], grids[2, 1] = 0, 0
    grids[2, 2] = 7  # a blank corner whose row, column and box hold every digit: a contradiction
    grids[2, 9:18] = 0
    allowed = sudoku.candidates(grids)  # (3, 81, 10)
    for n in range(3):
        for i in range(81):
            if grids[n, i]:
                want = {int(grids[n, i])}
            else:
                peers = [j for j in range(81) if j != i and (j // 9 == i // 9 or j % 9 == i % 9
                         or (j // 27, j % 9 // 3) == (i // 27, i % 9 // 3))]
                want = set(range(1, 10)) - {int(grids[n, j]) for j in peers}
            assert set(allowed[n, i].nonzero().flatten().tolist()) == want, (n, i)


def test_commit_rejects_bad_settings():
    with pytest.raises(ValueError, match="per_round"):
        run_commit(tiny(), torch.zeros(2, 9, dtype=torch.long), check, BLANK, segments=1, per_round=0, rounds=2)
