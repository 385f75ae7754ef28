"""Tasks: turn puzzles into fixed-length token sequences with labels.

`load_task(cfg)` returns the train / validation / test splits of a task as tensors.
Validation is for watching a run (and for choosing settings); test is run once at the
end and must never be used to choose anything.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ponder.config import TaskConfig
from ponder.tasks import sudoku

CHUNK = 500  # generated puzzles per independently seeded chunk


@dataclass
class Split:
    inputs: torch.Tensor  # (N, L) int64 tokens
    labels: torch.Tensor  # (N, L) int64 target tokens

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass
class TaskData:
    name: str
    vocab: int
    seq_len: int
    train: Split
    val: Split
    test: Split
    attention_mask: torch.Tensor | None = None  # (L, L) bool structure, if the task has one


def _chunk(args: tuple[int, int, str]) -> tuple[np.ndarray, np.ndarray]:
    n, blanks, seed = args
    return sudoku.generate(n, blanks, seed=seed)


def generate_split(n: int, blanks: int, seed: int, split: str, workers: int = 2, progress: bool = False) -> Split:
    """`n` generated puzzles in chunks of CHUNK, chunk k seeded by (seed, split, k):
    the bytes depend only on (n, blanks, seed, split), not on the worker count."""
    jobs = [(min(CHUNK, n - start), blanks, f"sudoku-{split}-{seed}-{k}") for k, start in enumerate(range(0, n, CHUNK))]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"generating {split} puzzles", unit="puzzle", leave=False)
    parts = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(_chunk, jobs):
                parts.append(part)
                if bar is not None:
                    bar.update(len(part[0]))
    else:
        for job in jobs:
            parts.append(_chunk(job))
            if bar is not None:
                bar.update(job[0])
    if bar is not None:
        bar.close()
    puzzles = np.concatenate([p for p, _ in parts])
    solutions = np.concatenate([s for _, s in parts])
    return Split(torch.from_numpy(puzzles).long(), torch.from_numpy(solutions).long())


def file_split(path: str) -> Split:
    puzzles, solutions = sudoku.read_puzzles(path)
    return Split(torch.from_numpy(puzzles).long(), torch.from_numpy(solutions).long())


def load_split(cfg: TaskConfig, split: str, progress: bool = False) -> Split:
    """One split: a file named in the config, or generated puzzles."""
    file = {"train": cfg.train_file, "test": cfg.test_file}.get(split, "")
    if file:
        return file_split(file)
    size = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}[split]
    return generate_split(size, cfg.blanks, cfg.seed, split, progress=progress)


def load_task(cfg: TaskConfig, progress: bool = False) -> TaskData:
    """Build the three splits; files named in the config replace generated splits."""
    train, val, test = (load_split(cfg, s, progress) for s in ("train", "val", "test"))
    return TaskData(name=cfg.name, vocab=sudoku.VOCAB, seq_len=sudoku.SIZE, train=train, val=val, test=test, attention_mask=sudoku.peer_mask())
