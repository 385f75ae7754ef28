"""A run killed with SIGKILL and resumed logs exactly what the uninterrupted run logs, in
both batching modes (refill: the in-flight batch is in the checkpoint)."""

import json
import signal
import subprocess
import time

import pytest
from safetensors import safe_open

from conftest import TINY

ARGS = TINY + ["train.steps=40", "train.checkpoint_every=3", "train.eval_every=5", "task.train_size=32"]


def logged(run):
    keep = ("train", "val", "test")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timing = ("train_seconds", "total_seconds", "speed")  # wall-clock figures differ from run to run
    return [{k: v for k, v in r.items() if k not in timing} for r in rows if r["event"] in keep]


def checkpoint_step(run):
    try:
        with safe_open(str(run / "checkpoint.safetensors"), framework="pt") as f:
            return json.loads(f.metadata()["ponder"])["step"]
    except Exception:
        return 0


def train_then_sigkill(ponder_cmd, out, args, after_step):
    """Start `ponder train --out out args` and SIGKILL it once its checkpoint has reached
    `after_step` (or it ended, or two minutes passed)."""
    proc = subprocess.Popen(ponder_cmd + ["train", "--out", str(out), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while checkpoint_step(out) < after_step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("batching", ["shrink", "refill"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, ponder_cmd, batching):
    args = ARGS + [f"train.batching={batching}"]
    full = tmp_path / "full"
    subprocess.run(ponder_cmd + ["train", "--out", str(full), *args], check=True, capture_output=True)

    killed = tmp_path / "killed"
    train_then_sigkill(ponder_cmd, killed, args, after_step=6)
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    step = checkpoint_step(killed)
    assert 6 <= step < 40

    subprocess.run(ponder_cmd + ["train", "--resume", str(killed)], check=True, capture_output=True)
    assert logged(killed) == logged(full)
    assert not list(killed.glob("*.tmp"))


def test_sigterm_checkpoints_and_stops_cleanly(tmp_path, ponder_cmd):
    """What a scheduler sends before it takes the machine: the run finishes its step,
    checkpoints, logs a stop line, skips the test, exits 0; --resume finishes it."""
    run = tmp_path / "run"
    args = [a for a in ARGS if not a.startswith("train.steps")] + ["train.steps=4000"]
    proc = subprocess.Popen(ponder_cmd + ["train", "--out", str(run), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while checkpoint_step(run) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped by a signal" in out
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "stop" and lines[-1]["stopped"] == "signal"
    assert checkpoint_step(run) == lines[-1]["step"] and not (run / "results.json").exists()
    subprocess.run(ponder_cmd + ["train", "--resume", str(run), "train.steps=" + str(lines[-1]["step"] + 2)], check=True, capture_output=True)
    assert (run / "results.json").exists()


def test_ctrl_c_before_the_first_checkpoint_keeps_the_work(tmp_path, ponder_cmd):
    """A first Ctrl-C (SIGINT) finishes the step, checkpoints and stops, even before the
    first periodic checkpoint; --resume goes on from there."""
    run = tmp_path / "run"
    args = [a for a in ARGS if not a.startswith(("train.steps", "train.checkpoint_every"))] + ["train.steps=4000", "train.checkpoint_every=4000"]
    proc = subprocess.Popen(ponder_cmd + ["train", "--out", str(run), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    log = run / "metrics.jsonl"
    while (not log.exists() or log.read_text().count('"event": "train"') < 3) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped by a signal" in out and "Ctrl-C: checkpointing" in err
    stop = json.loads(log.read_text().splitlines()[-1])
    assert stop["event"] == "stop" and checkpoint_step(run) == stop["step"] >= 3
    subprocess.run(ponder_cmd + ["train", "--resume", str(run), f"train.steps={stop['step'] + 2}"], check=True, capture_output=True)
    assert (run / "results.json").exists()


def test_resume_of_an_empty_folder_says_what_to_do(tmp_path):
    from ponder import api
    from ponder.errors import PonderInputError

    (tmp_path / "run").mkdir()
    with pytest.raises(PonderInputError, match="empty, not a run folder .* starts again with 'ponder train --out"):
        api.train(resume=str(tmp_path / "run"), progress=False)

