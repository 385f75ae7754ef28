"""Fault injection: the quick audit of `benchmarks/faults.py` (every file of a run and a
dataset folder damaged six ways, every CLI option and numeric config key fuzzed, kills,
a killed checkpoint write's leftovers, two writers) must find no traceback, no silently
different result and no mixed folder; and the defects it was built to catch, one by one."""

import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "benchmarks"))
import faults  # noqa: E402

from ponder import api  # noqa: E402
from ponder.errors import PonderInputError  # noqa: E402
from ponder.train.checkpoint import read_checkpoint  # noqa: E402


def test_quick_audit_finds_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # fuzzed relative paths land here
    cases = faults.audit(tmp_path / "work", quick=True, seeds=1, kills=2, trials=1)
    categories = {c["category"] for c in cases}
    assert categories == {"run-file", "data-file", "config", "cli", "leftovers", "numerical", "kill", "writers"}
    assert faults.failures(cases) == [], faults.failures(cases)[:5]
    assert sum(c["outcome"] == "error" for c in cases) > 300  # the damage was seen, not missed


def test_classify_flags_tracebacks_and_silent_changes():
    """The audit's judge can fail: an escaped exception, a multi-line error, a changed result."""
    assert faults.classify((None, "", "", "KeyError: 'x'"), None)[0] == "traceback"
    assert faults.classify((2, "", "ponder eval: error: a\nsecond line\n", None), None)[0] == "traceback"
    assert faults.classify((0, '{"accuracy": 0.5}\n', "", None), {"accuracy": 0.9})[0] == "wrong"
    assert faults.classify((0, '{"accuracy": 0.5, "seconds": 3}\n', "", None), {"accuracy": 0.5, "seconds": 9})[0] == "identical"
    assert faults.classify((2, "", "ponder eval: error: one line\n", None), None)[0] == "error"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "run"
    api.train(TINY + ["train.steps=4", "train.checkpoint_every=2"], out=str(run), progress=False)
    return run


def nan_weight(tensors, meta):
    """A NaN in the first floating weight of the group evaluation reads."""
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    next(v for k, v in sorted(tensors.items()) if k.startswith(prefix) and v.is_floating_point()).view(-1)[0] = float("nan")


def drop(prefix):
    return lambda tensors, meta: [tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]]


@pytest.mark.parametrize("verb, change, message", [
    ("eval", nan_weight, "non-finite"),
    ("eval", drop("ema."), "no 'ema.' tensors"),
    ("resume", drop("rng.torch"), "no 'rng.torch' tensors"),
    ("resume", drop("optim."), "no 'optim.' tensors"),
])
def test_checkpoint_missing_groups_or_non_finite_refused(trained, tmp_path, verb, change, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    faults.rewrite_checkpoint(run / "checkpoint.safetensors", change)
    with pytest.raises(PonderInputError, match=message):
        api.evaluate(str(run)) if verb == "eval" else api.train(["train.steps=6"], resume=str(run), progress=False)


def test_flipped_weight_byte_is_caught(trained, tmp_path):
    """One flipped bit in a weight's bytes: the content hash, not a silently worse model."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    path = run / "checkpoint.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 1  # inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(PonderInputError, match="altered or corrupt"):
        api.evaluate(str(run))


def test_resume_refuses_an_edited_config_and_names_the_key(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["lr"] *= 10
    (run / "config.json").write_text(json.dumps(config))
    for call in (lambda: api.train(["train.steps=6"], resume=str(run), progress=False), lambda: api.evaluate(str(run))):
        with pytest.raises(PonderInputError, match="'train.lr' is .* but the checkpoint was trained with"):
            call()


def test_diverged_training_stops_with_one_line_and_keeps_no_bad_checkpoint(tmp_path, ponder_cmd):
    run = tmp_path / "run"
    done = subprocess.run(ponder_cmd + ["train", "--out", str(run), *TINY, "train.optimizer=adamw", "train.lr=1e6", "train.steps=30",
                                        "train.checkpoint_every=1"], capture_output=True, text=True)
    assert done.returncode == 2 and "training diverged at step" in done.stderr, done.stderr[-500:]
    if (run / "checkpoint.safetensors").exists():  # an earlier, finite checkpoint
        tensors, _ = read_checkpoint(run / "checkpoint.safetensors")
        assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


def test_killed_before_the_first_checkpoint_resumes_from_step_0(tmp_path, ponder_cmd):
    args = [*TINY, "train.steps=8", "train.checkpoint_every=100", "train.eval_every=100"]
    full = tmp_path / "full"
    subprocess.run(ponder_cmd + ["train", "--out", str(full), *args], check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(ponder_cmd + ["train", "--out", str(killed), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (killed / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    if (killed / "checkpoint.safetensors").exists():
        pytest.skip("the run checkpointed before it could be killed")
    fresh = subprocess.run(ponder_cmd + ["train", "--out", str(killed), *args], capture_output=True, text=True)
    assert fresh.returncode == 2 and "--resume" in fresh.stderr  # the folder is a run: resume it
    resumed = subprocess.run(ponder_cmd + ["train", "--resume", str(killed)], capture_output=True, text=True)
    assert resumed.returncode == 0 and "starting again from step 0" in resumed.stdout, resumed.stderr[-500:]
    from test_resume import logged

    assert logged(killed) == logged(full)


def test_missing_checkpoint_of_a_run_that_had_one_is_not_restarted(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "checkpoint.safetensors").unlink()
    with pytest.raises(PonderInputError, match="records a checkpoint at step 4"):
        api.train(["train.steps=6"], resume=str(run), progress=False)


def test_solve_says_when_a_puzzle_has_no_solution_or_several(trained):
    # consistent givens (no digit twice in a row, column or box), yet the top-right cell has no candidate
    with pytest.raises(PonderInputError, match="no solution"):
        api.solve("12345678." + "........9" + "." * 63, run=str(trained))
    several = api.solve("." * 81, run=str(trained))
    assert several["unique"] is False


KILL_IN_WRITE = """
import os, signal, sys
import ponder.train.checkpoint as checkpoint
real, count = checkpoint._write_synced, [0]

def write(path, data, written):  # the n-th file a checkpoint write syncs: SIGKILL right after it, before any rename
    real(path, data, written)
    count[0] += 1
    if count[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint._write_synced = write
from ponder.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("nth", [1, 3])
def test_sigkill_during_a_checkpoint_write_resumes_exactly(tmp_path, ponder_cmd, nth):
    """Killed inside the nth checkpoint write (its temporary file synced, not yet renamed):
    the previous checkpoint stands (or none: then from step 0), the leftover is cleared,
    and the resumed log equals an uninterrupted run's."""
    from test_resume import logged

    args = [*TINY, "train.steps=8", "train.checkpoint_every=2", "train.eval_every=4"]
    full = tmp_path / "full"
    subprocess.run(ponder_cmd + ["train", "--out", str(full), *args], check=True, capture_output=True)
    killed = tmp_path / "killed"
    done = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, str(nth), "train", "--out", str(killed), *args], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-500:]
    assert list(killed.glob("*.tmp"))  # killed mid-write: the temporary file is there
    resumed = subprocess.run(ponder_cmd + ["train", "--resume", str(killed)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-500:]
    assert logged(killed) == logged(full) and not list(killed.glob("*.tmp"))
