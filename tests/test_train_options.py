"""Each training option runs end to end on a tiny problem and learns something."""

import json

import pytest

from conftest import TINY
from ponder import api


@pytest.mark.parametrize(
    "options",
    [
        ["model.mixer=mlp"],
        ["train.optimizer=adamw", "train.loss=stablemax", "train.lr_schedule=constant"],
        ["train.autocast=bfloat16"],
        ["model.attention_mask=task", "model.positions=learned"],
        ["model.puzzle_prefix=3", "model.mixer=mlp", "model.positions=none", "model.halting=act_q", "train.ema_ramp=false", "train.decay_vectors=true"],
        ["model.halting=none", "train.ema=0", "task.augment=false"],
        ["model.family=hrm", "model.halting=act_q"],
        ["model.family=transformer"],
        ["model.family=looped", "model.cycles=3"],
        ["model.family=looped", "model.cycles=3", "model.loop_halting=pondernet"],
        ["model.family=looped", "model.cycles=3", "model.mlp_conv=2", "model.grad_mode=truncated", "model.truncate_steps=2"],
        ["model.family=depthrec", "model.cycles=3", "model.truncate_steps=2", "train.max_segments=1"],
        ["model.family=looped", "model.score_dt=0.5", "model.loop_halting=none", "model.halting=act_q"],
        ["model.grad_mode=truncated", "model.truncate_steps=2"],
        ["model.norm=pre"],
        ["model.family=transformer", "model.norm=pre", "model.positions=learned"],
    ],
)
def test_option_trains(tmp_path, options):
    run = tmp_path / "run"
    result = api.train(TINY + ["train.steps=6"] + options, out=str(run), progress=False)
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert losses[-1] < losses[0]
    assert 0 <= result["exact_accuracy"] <= 1 and len(result["accuracy_by_segment"]) == 3


def test_time_budget_stops_checkpoints_and_resumes(tmp_path):
    """train.max_minutes limits one invocation: the run checkpoints, logs a stop line,
    skips the test, and --resume carries on to the end."""
    from ponder.train.checkpoint import read_checkpoint

    run = tmp_path / "run"
    result = api.train(TINY + ["train.steps=12", "train.max_minutes=0.0001"], out=str(run), progress=False)
    assert result["stopped"] == "time" and 1 <= result["step"] < 12
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "stop" and log[-1]["step"] == result["step"]
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["step"] == result["step"]
    assert not (run / "results.json").exists()
    final = api.train(["train.max_minutes=0"], resume=str(run), progress=False)
    assert final["step"] == 12 and "exact_accuracy" in final
    events = [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "stop" not in events and events[-1] == "test"


def test_time_budget_ends_the_run_with_a_test(tmp_path):
    """train.budget_minutes: training time over the whole run; when it is spent the run
    validates, checkpoints and tests as at its last step."""
    run = tmp_path / "run"
    result = api.train(TINY + ["train.steps=100000", "train.budget_minutes=0.0001"], out=str(run), progress=False)
    assert 1 <= result["step"] < 100000 and "exact_accuracy" in result
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log[-3:]] == ["val", "checkpoint", "test"] and log[-3]["step"] == log[-2]["step"] == result["step"]


@pytest.mark.parametrize("limit", ["train.max_minutes", "train.budget_minutes"])
def test_progress_estimate_ends_at_the_time_limit(tmp_path, limit):
    """The progress bar's total is the step the run will stop at: train.steps without a
    time limit, else the steps this pace fits into the time left."""
    import time

    from ponder.config import build_config, parse_overrides
    from ponder.train.loop import Trainer

    def trainer(extra):
        cfg = build_config(overrides=parse_overrides(TINY + ["train.steps=100000", *extra]))
        t = Trainer(cfg, tmp_path / str(len(extra)), progress=False, quiet=True)
        t.invocation_start = time.time() - 10.0  # 10 s into this invocation
        return t

    assert trainer([]).expected_last_step(50) == 100000
    t = trainer([f"{limit}=1"])  # 60 s allowed, 10 s used for 50 steps: 250 more
    assert abs(t.expected_last_step(50) - 300) <= 2
    assert trainer([f"{limit}=0.1"]).expected_last_step(200) == 200  # out of time: stops now
