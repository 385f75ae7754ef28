import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
