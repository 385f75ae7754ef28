"""torchrun on the CPU (gloo): two ranks train exactly what one process trains with the
same global batch, a run with one rank killed resumes exactly (with another number of
ranks), and launches ponder cannot honour are refused."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

from conftest import TINY
from test_resume import checkpoint_step

ARGS = TINY + [
    "train.steps=20", "train.max_segments=3", "train.batching=refill", "train.dtype=float64", "train.threads=1",
    "train.eval_every=10", "train.checkpoint_every=2", "train.lr_schedule=constant",
]


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "ponder.cli"]


def logged(run, keep=("train", "val", "test")):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timing = ("train_seconds", "total_seconds", "speed")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows if r["event"] in keep]


def losses(run):
    return [r["loss"] for r in logged(run, ("train",))]


def env():
    return dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp") / "one"
    subprocess.run([sys.executable, "-m", "ponder.cli", "train", "--out", str(run), *ARGS], check=True, capture_output=True, env=env())
    return run


def test_two_ranks_equal_one_process(single, tmp_path):
    run = tmp_path / "two"
    done = subprocess.run(torchrun(2) + ["train", "--out", str(run), *ARGS], capture_output=True, text=True, env=env())
    if done.returncode != 0 and "Signal 6 (SIGABRT)" in done.stderr:
        # A rank aborting inside gloo has been seen about once in 30 launches on a loaded
        # 2-core machine and never reproduced on demand: say so loudly and launch once more
        # (a failure of the second launch, or any other failure, fails the test).
        warnings.warn(f"torchrun: a rank aborted; launching again once. First launch:\n{failure(done)}")
        run = tmp_path / "two-again"
        done = subprocess.run(torchrun(2) + ["train", "--out", str(run), *ARGS], capture_output=True, text=True, env=env())
    assert done.returncode == 0, failure(done)
    one, two = losses(single), losses(run)
    assert len(one) == len(two) == 20
    assert max(abs(a - b) for a, b in zip(one, two)) <= 1.0001e-6  # the log keeps 6 decimals
    assert logged(run, ("val", "test")) == logged(single, ("val", "test"))  # sharded evaluation, gathered
    assert done.stdout.count("test split") == 1  # rank 0 alone speaks
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert start["world"] == 2 and start["batching"] == "refill"


def failure(done: subprocess.CompletedProcess) -> str:
    """A failed launch's story: the ranks' own messages come first in torchrun's stderr,
    its summary last; keep both ends."""
    err = done.stderr
    return err if len(err) <= 6000 else err[:4000] + "\n[...]\n" + err[-2000:]


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_sigkill_one_rank_then_resume_on_one_process(single, tmp_path):
    run = tmp_path / "killed"
    args = [a for a in ARGS if not a.startswith("train.steps")] + ["train.steps=400"]  # slow enough to be caught mid-run
    launcher = subprocess.Popen(torchrun(2) + ["train", "--out", str(run), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.time() + 120
    while checkpoint_step(run) < 6 and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    workers = children(launcher.pid)
    assert workers, "no worker processes found"
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies; torchrun takes the other down
    launcher.wait(timeout=60)
    step = checkpoint_step(run)
    assert launcher.returncode != 0 and 6 <= step < 400 and not (run / "results.json").exists()
    # the same run, 20 steps in all, continued by one process
    done = subprocess.run([sys.executable, "-m", "ponder.cli", "train", "--resume", str(run), "train.steps=20"], capture_output=True, text=True, env=env())
    assert done.returncode == 0, failure(done)
    if step >= 20:
        pytest.skip(f"the run reached step {step} before it was killed")
    assert logged(run) == logged(single)


def test_launches_that_cannot_be_honoured(tmp_path):
    for extra, message in [
        (["train.batching=shrink"], "shrinking batches put ranks out of step"),
        (["train.batch_size=7"], "does not split over 2 ranks"),
    ]:
        done = subprocess.run(torchrun(2) + ["train", "--out", str(tmp_path / "x"), *ARGS, *extra], capture_output=True, text=True, env=env())
        assert done.returncode != 0 and message in done.stderr
    done = subprocess.run(torchrun(2) + ["train", *ARGS], capture_output=True, text=True, env=env())
    assert done.returncode != 0 and "pass --out" in done.stderr


def test_puzzle_embedding_rows_gathered_from_every_rank(fake_benchmarks, tmp_path):
    """The sparse sign-SGD table: two ranks move the same rows by the same amounts as one
    process (each rank looked up only its own puzzles)."""
    from ponder.train.checkpoint import read_checkpoint

    model = [a for a in TINY if a.startswith("model.")]
    args = model + [
        "task.name=sudoku-extreme-1k", "task.val_size=2", "task.test_size=2", "task.augmentations=0", "model.puzzle_embedding=true",
        "train.steps=6", "train.batch_size=4", "train.max_segments=2", "train.eval_segments=2", "train.batching=refill",
        "train.dtype=float64", "train.threads=1", "train.lr_warmup=1", "train.eval_every=6", "train.checkpoint_every=6",
    ]
    runs = {1: tmp_path / "one", 2: tmp_path / "two"}
    for n, run in runs.items():
        command = (torchrun(2) if n == 2 else [sys.executable, "-m", "ponder.cli"]) + ["train", "--out", str(run), *args]
        done = subprocess.run(command, capture_output=True, text=True, env=env())
        assert done.returncode == 0, failure(done)
    tables = {n: read_checkpoint(run / "checkpoint.safetensors")[0]["model.embed.puzzles.weight"] for n, run in runs.items()}
    moved = (tables[1].abs().sum(1) > 0).sum()
    assert moved >= 4  # several puzzles' rows were trained
    assert (tables[1] - tables[2]).abs().max() < 1e-9
    assert losses(runs[1]) == losses(runs[2])
