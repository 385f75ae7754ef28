import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# Built datasets are cached between runs; the tests keep theirs apart from the user's,
# in one folder that every test process shares (made by the first, inherited by the rest).
os.environ["PONDER_CACHE"] = os.environ.setdefault("PONDER_TEST_CACHE", tempfile.mkdtemp(prefix="ponder-test-cache-"))
# Under pytest-xdist (`-n N`) each worker gets an equal share of the cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one test process per core, at most 4 (each one imports torch and holds its own datasets)."""
    return max(1, min(4, os.cpu_count() or 1))


@pytest.fixture
def ponder_cmd():
    """The CLI as a subprocess command (the installed entry point's module)."""
    return [sys.executable, "-m", "ponder.cli"]


# Small settings that make a whole training run take seconds.
TINY = [
    "model.hidden=16",
    "model.heads=2",
    "model.layers=1",
    "model.latent_steps=1",
    "model.cycles=2",
    "task.blanks=20",
    "task.train_size=64",
    "task.val_size=16",
    "task.test_size=16",
    "train.steps=4",
    "train.batch_size=8",
    "train.max_segments=2",
    "train.eval_segments=3",
    "train.eval_every=2",
    "train.checkpoint_every=2",
    "train.lr_warmup=2",
]


@pytest.fixture(scope="session")
def fake_benchmark_root(tmp_path_factory):
    """A tiny benchmark folder, written once: 6 'Sudoku-Extreme' training puzzles and a
    'hard set' of 14 puzzles, two of them symmetric copies of training puzzles; a few
    mazes; tiny ARC tasks."""
    from ponder.tasks import sudoku
    from ponder.tasks.builders import HARD_SET

    root = tmp_path_factory.mktemp("benchmarks")
    train_p, train_s = sudoku.generate(6, 50, seed=11)
    hard_p, _ = sudoku.generate(12, 50, seed=12)
    rng = np.random.default_rng(5)
    copies = [sudoku.Symmetry.random(rng).apply(train_p[k]) for k in (0, 3)]
    (root / "sudoku-extreme-1k").mkdir()
    rows = ["source,question,answer,rating"] + [f"x,{sudoku.format_grid(p)},{sudoku.format_grid(s)}," for p, s in zip(train_p, train_s)]
    (root / "sudoku-extreme-1k" / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "sudoku-hard-sets").mkdir()
    lines = [sudoku.format_grid(p) for p in list(hard_p[:5]) + copies[:1] + list(hard_p[5:]) + copies[1:]]
    (root / "sudoku-hard-sets" / HARD_SET).write_text("\n".join(lines) + "\n")
    write_fake_mazes(root / "maze-30x30-hard-1k")
    write_fake_arc(root)
    return root, train_p, train_s


@pytest.fixture
def fake_benchmarks(fake_benchmark_root, monkeypatch):
    """$PONDER_DATA pointed at the tiny benchmark folder; returns the Sudoku training
    puzzles and solutions."""
    root, train_p, train_s = fake_benchmark_root
    monkeypatch.setenv("PONDER_DATA", str(root))
    return train_p, train_s


def write_fake_mazes(folder):
    """Six train and four test mazes in the Maze-Hard CSV layout (short paths: fast)."""
    from ponder.tasks import maze

    folder.mkdir()
    for name, n, seed in (("train", 6, 1), ("test", 4, 2)):
        questions, answers = maze.generate(n, seed=seed, min_path=20)
        rows = [maze.HEADER] + [f"fake,{maze.decode(q)},{maze.decode(a)}," for q, a in zip(questions, answers)]
        (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")


def write_fake_arc(root):
    """Two tiny tasks per ARC split (a colour swap and a flip), and one ConceptARC task."""
    import json

    def task(seed, kind):
        rng = np.random.default_rng(seed)
        pairs = []
        for _ in range(3):
            grid = rng.integers(0, 4, size=(int(rng.integers(2, 5)), int(rng.integers(2, 5))))
            out = np.where(grid == 1, 2, np.where(grid == 2, 1, grid)) if kind == "swap" else grid[:, ::-1]
            pairs.append({"input": grid.tolist(), "output": out.tolist()})
        return {"train": pairs[:2], "test": pairs[2:]}

    for version in ("arc-agi-1", "arc-agi-2"):
        for split, offset in (("training", 0), ("evaluation", 10)):
            folder = root / version / split
            folder.mkdir(parents=True)
            for k, kind in enumerate(("swap", "flip")):
                (folder / f"{version[-1]}{split[0]}{k}.json").write_text(json.dumps(task(offset + k, kind)))
    (root / "concept-arc" / "Copy").mkdir(parents=True)
    (root / "concept-arc" / "Copy" / "Copy1.json").write_text(json.dumps(task(99, "flip")))
