"""Stop rules chosen on validation: the simulated rule on a per-segment record, the
real early exit under the same rule, and the choice itself."""

import json

import pytest
import torch

from ponder.eval.evaluate import run_early_exit, run_segments
from ponder.eval.stopping import SegmentRecord, StopRule, apply_calibration, calibrate, score_rule
from ponder.models import TRM


def hand_record():
    """Three examples, four segments, answers of length 2 (the label is [1, 1])."""
    preds = torch.tensor([
        [[0, 1], [1, 1], [1, 1], [1, 1]],  # right from segment 2, stable from 3
        [[1, 1], [1, 1], [1, 1], [1, 1]],  # right at once, stable from 2
        [[0, 0], [0, 1], [0, 0], [1, 1]],  # right only at the end
    ])
    halts = torch.tensor([[-5.0, 1.5, 4.0, 4.0], [-1.0, 0.5, 0.5, 0.5], [-5.0, -5.0, -5.0, -5.0]])
    changes = torch.tensor([[1.0, 0.2, 0.05, 0.01], [1.0, 0.3, 0.2, 0.1], [1.0, 0.5, 0.5, 0.004]])
    confidence = torch.tensor([[0.3, 0.8, 0.95, 0.99], [0.6, 0.9, 0.9, 0.9], [0.2, 0.2, 0.2, 0.2]])
    return SegmentRecord(preds, halts, changes, confidence), torch.tensor([[1, 1]] * 3)


def test_each_signal_stops_where_it_should():
    record, labels = hand_record()
    assert record.stable.tolist() == [[False, False, True, True], [False, True, True, True], [False, False, False, False]]
    cases = {
        StopRule(halt_threshold=0.0): [1, 1, 3],
        StopRule(halt_threshold=2.0): [2, 3, 3],
        StopRule(halt_threshold=None, confidence=0.85): [2, 1, 3],  # stable and sure
        StopRule(halt_threshold=None, exit_tol=0.06): [2, 3, 3],
        StopRule(halt_threshold=None, max_segments=2): [1, 1, 1],
        StopRule(halt_threshold=2.0, exit_tol=0.25, max_segments=3): [1, 2, 2],
        StopRule(halt_threshold=None): [3, 3, 3],
    }
    for rule, expected in cases.items():
        assert rule.first_stop(record).tolist() == expected, rule
    accuracy, segments = score_rule(StopRule(halt_threshold=0.0), record, labels)
    assert accuracy == pytest.approx(1.0) and segments == pytest.approx((2 + 2 + 4) / 3)
    assert score_rule(StopRule(halt_threshold=None, max_segments=1), record, labels)[0] == pytest.approx(1 / 3)


def test_calibrate_keeps_accuracy_with_fewest_segments_and_reports_a_frontier():
    record, labels = hand_record()
    c = calibrate(record, labels)
    assert c.val_all_segments == pytest.approx(1.0) and c.val_accuracy == pytest.approx(1.0)
    best = min(score_rule(r, record, labels)[1] for r in _all_rules(record) if score_rule(r, record, labels)[0] == 1.0)
    assert c.val_segments == pytest.approx(best) and c.val_segments < 4
    segments = [p["val_segments"] for p in c.frontier]
    accuracy = [p["val_accuracy"] for p in c.frontier]
    assert segments == sorted(segments) and accuracy == sorted(accuracy) and len(set(accuracy)) == len(accuracy)
    loose = calibrate(record, labels, tolerance=0.4)  # may give up one example of three
    assert loose.val_accuracy >= 2 / 3 - 1e-6 and loose.val_segments < c.val_segments
    # scored on another record: the chosen rule is applied as it is, not re-chosen
    other = SegmentRecord(record.preds.flip(0), record.halts.flip(0), record.changes.flip(0), record.confidence.flip(0))
    applied = apply_calibration(c, other, labels)
    assert (applied["accuracy"], applied["mean_segments"]) == pytest.approx(score_rule(c.rule, other, labels))
    assert StopRule.from_dict(applied["rule"]) == c.rule and json.dumps(applied)


def test_calibrate_target_best_keeps_the_accuracy_a_model_loses_by_thinking_longer():
    """Two examples right after segment 2 and wrong after segment 4 (overthinking): the
    all-segments accuracy is 1/3, so "last" stops at once; "best" keeps 3/3."""
    preds = torch.tensor([
        [[0, 1], [1, 1], [1, 1], [0, 1]],
        [[0, 0], [1, 1], [1, 1], [0, 0]],
        [[1, 1], [1, 1], [1, 1], [1, 1]],
    ])
    halts = torch.full((3, 4), -5.0)
    changes = torch.tensor([[1.0, 0.5, 0.001, 0.5]] * 3)
    record = SegmentRecord(preds, halts, changes, torch.full((3, 4), 0.9))
    labels = torch.tensor([[1, 1]] * 3)
    last = calibrate(record, labels)
    assert last.val_all_segments == pytest.approx(1 / 3) and last.val_segments == pytest.approx(1.0)
    best = calibrate(record, labels, target="best")
    assert best.val_accuracy == pytest.approx(1.0) and best.val_target == pytest.approx(1.0)
    assert best.val_segments == pytest.approx(2.0) and best.target == "best"  # at most 2 segments
    assert best.frontier == last.frontier
    with pytest.raises(ValueError, match="expected one of last, best"):
        calibrate(record, labels, target="first")


def _all_rules(record):
    from ponder.eval.stopping import candidate_rules

    return candidate_rules(record.preds.shape[1])


def test_unknown_rule_key_is_named():
    with pytest.raises(ValueError, match="unknown keys halt_treshold"):
        StopRule.from_dict({"halt_treshold": 1.0})


def test_real_early_exit_under_a_rule_matches_the_record_and_running_alone():
    """Every signal at once: rows leave at different segments, each with the answer it
    gets when run alone, and at the segment the simulated rule picks on the record."""
    torch.manual_seed(0)
    model = TRM(vocab=10, seq_len=9, hidden=16, heads=2, layers=1, latent_steps=2, cycles=2).double().eval()
    with torch.no_grad():
        model.halt_head.bias.fill_(0.0)
        model.halt_head.weight.normal_(0, 0.5)
    tokens = torch.randint(0, 10, (16, 9))
    record = run_segments(model, tokens, 6)
    assert record.confidence.shape == (16, 6) and ((record.confidence > 0) & (record.confidence <= 1)).all()
    rule = StopRule(halt_threshold=float(record.halts.median()), confidence=float(record.confidence.median()),
                    exit_tol=float(record.changes[:, 1:].median()), max_segments=5)
    stop = rule.first_stop(record)
    preds, used = run_early_exit(model, tokens, max_segments=6, batch_size=16, rule=rule)
    assert len(set(used.tolist())) > 1 and used.max() <= 5
    assert torch.equal(used, stop + 1)
    assert torch.equal(preds, record.preds[torch.arange(16), stop])
    for i in range(16):
        alone, alone_used = run_early_exit(model, tokens[i : i + 1], max_segments=6, rule=rule)
        assert torch.equal(alone[0], preds[i]) and alone_used[0] == used[i]
