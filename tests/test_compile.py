"""`train.compile=true` with refill batching: after warm-up no step compiles anything
again (the shapes never change), whatever the halting rule decides; a shrinking batch,
whose shapes follow the rows still thinking, does. Dynamo's own counters tell. The
compiler back end here is dynamo's "eager" one, so the test measures graph capture
and guards (what makes a recompile), not code generation."""

import functools

import pytest
import torch

from conftest import TINY
from ponder.config import build_config, parse_overrides
from ponder.train.loop import Trainer


@pytest.fixture
def eager_compile(monkeypatch):
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    from torch._dynamo.utils import counters

    counters.clear()
    yield counters
    torch._dynamo.reset()


def frames(counters) -> int:
    return counters["frames"]["total"]


def schedule(out, positions, segments):
    """Halting decisions that stop examples after 1 to 4 segments (the untrained head
    would never stop one)."""
    return segments >= 1 + (positions * 7) % 4


def run(tmp_path, batching, extra, steps):
    overrides = TINY + ["train.max_segments=4", "train.compile=true", f"train.batching={batching}", *extra]
    t = Trainer(build_config(overrides=parse_overrides(overrides)), tmp_path / batching, progress=False, quiet=True)
    t.halts = schedule
    step = t.train_segment if batching == "refill" else t.train_batch
    for k in range(steps):
        t.set_lr(k)
        step(k)
        yield k


@pytest.mark.parametrize("extra", [["model.halting=bce"], ["model.family=hrm", "model.halting=act_q"]])
def test_refill_compiles_once(tmp_path, eager_compile, extra):
    warm = None
    for k in run(tmp_path, "refill", ["train.halt_explore_prob=0.5", *extra], steps=12):
        if k == 2:
            warm = frames(eager_compile)
    assert warm and frames(eager_compile) == warm, dict(eager_compile["frames"])


def test_shrinking_batches_recompile(tmp_path, eager_compile):
    """The contrast that shows the counter can move: the same model compiled on a
    batch whose rows leave as they halt captures more frames (a recompile for the new
    shapes) than the refill batch does in all its steps."""
    for _ in run(tmp_path, "refill", ["train.halt_explore_prob=0.5"], steps=12):
        pass
    refill = frames(eager_compile)
    torch._dynamo.reset()
    eager_compile.clear()
    for _ in run(tmp_path, "shrink", ["train.halt_explore_prob=0.5"], steps=3):
        pass
    assert frames(eager_compile) > refill
