"""Test-time breadth: start 0 is the plain run, noise makes the other starts differ,
and the selection rules pick what they say they pick."""

import torch

from ponder.eval.breadth import breadths_up_to, evaluate_breadth, run_starts, select
from ponder.eval.evaluate import evaluate, run_segments
from ponder.models import TRM


def tiny():
    torch.manual_seed(0)
    return TRM(vocab=10, seq_len=9, hidden=16, heads=2, layers=1, latent_steps=1, cycles=2).eval()


def test_breadths():
    assert breadths_up_to(1) == [1]
    assert breadths_up_to(8) == [1, 2, 4, 8]
    assert breadths_up_to(6) == [1, 2, 4, 6]


def test_start_zero_is_the_plain_run_and_noise_moves_the_others():
    model = tiny()
    tokens = torch.randint(0, 10, (5, 9))
    preds, residuals, halts = run_starts(model, tokens, segments=3, starts=4, init_noise=2.0, langevin=0.5, batch_size=8)
    assert preds.shape == (5, 4, 3, 9) and residuals.shape == (5, 4, 3) == halts.shape
    plain, plain_halts, changes, _ = run_segments(model, tokens, 3)
    assert torch.equal(preds[:, 0], plain) and torch.allclose(residuals[:, 0], changes) and torch.allclose(halts[:, 0], plain_halts)
    assert not torch.equal(preds[:, 1:], preds[:, :1].expand(-1, 3, -1, -1))
    again, _, _ = run_starts(model, tokens, segments=3, starts=4, init_noise=2.0, langevin=0.5, batch_size=8)
    assert torch.equal(again, preds)  # seeded


def test_selection_rules():
    a, b, c = torch.zeros(3), torch.ones(3), torch.full((3,), 2)
    preds = torch.stack([
        torch.stack([a, b, b, c]),  # b twice: vote picks start 1 or 2, the lower residual (2)
        torch.stack([a, b, c, a]),  # a twice: starts 0 and 3, the lower residual (0)
    ]).long()  # (2, 4, 3)
    residuals = torch.tensor([[0.1, 0.5, 0.3, 0.01], [0.2, 0.05, 0.3, 0.4]])
    assert select(preds, residuals, "vote").tolist() == [2, 0]
    assert select(preds, residuals, "residual").tolist() == [3, 1]


def test_breadth_table_against_direct_counts():
    model = tiny()
    tokens = torch.randint(0, 10, (6, 9))
    preds, residuals, _ = run_starts(model, tokens, segments=2, starts=3, init_noise=2.0)
    labels = preds[:, 2, 1].clone()  # start 2's final answers are "right"
    labels[3:] = preds[3:, 0, 1]  # ... except for the last 3 puzzles, where start 0's are
    result = evaluate_breadth(model, tokens, labels, segments=2, starts=3, init_noise=2.0)
    plain = evaluate(model, tokens, labels, segments=2)
    assert [row[0] for row in result.accuracy["residual"]] == plain.accuracy_by_segment
    right = (preds == labels[:, None, None]).all(-1)  # (N, K, S)
    assert result.accuracy["oracle"][1] == [round(float(right[:, :k, 1].any(1).float().mean()), 6) for k in (1, 2, 3)]
    assert result.accuracy["oracle"][1][-1] == 1.0
    pick = residuals[:, :, 1].argmin(1)
    assert result.accuracy["residual"][1][-1] == round(float(right[torch.arange(6), pick, 1].float().mean()), 6)


def test_first_to_halt_picks_the_earliest_halting_start():
    from ponder.eval.breadth import first_to_halt

    halts = torch.tensor([
        [[-1.0, 2.0, 3.0], [-1.0, -1.0, 5.0], [-1.0, 1.0, 0.5]],  # starts 0 and 2 halt at segment 1: 0 is surer
        [[-3.0, -2.0, -1.0], [-4.0, -3.0, -0.5], [-2.0, -2.0, -2.0]],  # none halts: the highest last logit (start 1)
    ])  # (N=2, k=3, s=3)
    when, pick = first_to_halt(halts)
    assert when.tolist() == [1, 2] and pick.tolist() == [0, 1]


def test_first_halt_with_one_start_is_the_plain_halting_rule():
    """k = 1: the first start to halt is the plain run stopped by its own head, capped
    at each segment limit, which is StopRule(halt_threshold=0, max_segments=s)."""
    from ponder.eval.stopping import StopRule, score_rule

    model = tiny()
    with torch.no_grad():
        model.halt_head.bias.fill_(0.0)
        model.halt_head.weight.normal_(0, 0.5)
    tokens = torch.randint(0, 10, (12, 9))
    record = run_segments(model, tokens, 4)
    labels = record.preds[:, 2].clone()
    result = evaluate_breadth(model, tokens, labels, segments=4, starts=2, init_noise=1.0)
    for s in range(4):
        accuracy, used = score_rule(StopRule(halt_threshold=0.0, max_segments=s + 1), record, labels)
        assert result.accuracy["first_halt"][s][0] == round(accuracy, 6)
        assert result.first_halt_segments[s][0] == round(used, 4)
        assert result.first_halt_segments[s][1] <= s + 1


def test_first_verified_picks_the_earliest_segment_then_the_lowest_start():
    from ponder.eval.breadth import first_verified

    passed = torch.tensor([
        [[False, False, True], [False, True, True], [False, True, False]],  # segment 1: starts 1 and 2 pass, 1 is lower
        [[False, False, False], [False, False, False], [False, False, False]],  # none passes: the last segment
    ])  # (N=2, k=3, s=3)
    when, pick, found = first_verified(passed)
    assert when.tolist() == [1, 2] and pick.tolist() == [1, 0] and found.tolist() == [True, False]


def test_verified_rule_against_a_direct_count():
    """The verified rule with a label-free check (here: the answer's first token is
    even) takes the first start passing at the first segment any passes, else the vote;
    without a check it is not reported."""
    from ponder.eval.breadth import select

    model = tiny()
    tokens = torch.randint(0, 10, (16, 9))
    preds, residuals, _ = run_starts(model, tokens, segments=3, starts=4, init_noise=2.0)
    labels = preds[:, 3, 2].clone()
    check = lambda inputs, answers: answers[:, 0] % 2 == 0  # noqa: E731
    result = evaluate_breadth(model, tokens, labels, segments=3, starts=4, init_noise=2.0, check=check)
    assert "verified" not in evaluate_breadth(model, tokens, labels, segments=3, starts=4, init_noise=2.0).accuracy
    for s in range(3):
        for j, k in enumerate(result.breadths):
            right, used = [], []
            for n in range(16):
                hit = next(((t, i) for t in range(s + 1) for i in range(k) if int(preds[n, i, t, 0]) % 2 == 0), None)
                if hit is None:
                    i = int(select(preds[n : n + 1, :k, s], residuals[n : n + 1, :k, s], "vote")[0])
                    hit = (s, i)
                right.append(bool(torch.equal(preds[n, hit[1], hit[0]], labels[n])))
                used.append(hit[0] + 1)
            assert result.accuracy["verified"][s][j] == round(sum(right) / 16, 6)
            assert result.verified_segments[s][j] == round(sum(used) / 16, 4)
