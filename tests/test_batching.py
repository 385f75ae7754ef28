"""Shrinking and refilling batches train the same examples: under a fixed halting
schedule each stream position gets the same number of segments in both modes, the
refill batch takes positions in order without gaps or repeats, and its shapes never
change."""

import torch

from conftest import TINY
from ponder.config import build_config, parse_overrides
from ponder.train.loop import Meter, Trainer


class Recorder(Meter):
    """Keeps (stream position, segments run) of every example that finishes."""

    def reset(self):
        super().reset()
        self.finished = getattr(self, "finished", {})

    def add_finished(self, done, correct, segments, positions):
        super().add_finished(done, correct, segments, positions)
        for pos, seg in zip(positions[done].tolist(), segments[done].tolist()):
            assert pos not in self.finished, f"position {pos} trained twice"
            self.finished[pos] = seg


def schedule(out, positions, segments):
    """Stop example p after 1 + (7 p mod 4) segments, whatever the model says."""
    return segments >= 1 + (positions * 7) % 4


def trainer(tmp_path, batching, extra=()):
    overrides = TINY + ["train.max_segments=4", "train.halt_explore_prob=0.5", f"train.batching={batching}", *extra]
    t = Trainer(build_config(overrides=parse_overrides(overrides)), tmp_path / batching, progress=False, quiet=True)
    t.meter = Recorder(t.device)
    t.halts = schedule
    return t


def test_both_modes_train_the_same_examples_for_the_same_segments(tmp_path):
    shrink, refill = trainer(tmp_path, "shrink"), trainer(tmp_path, "refill")
    for step in range(3):  # 3 batches of 8 examples
        shrink.set_lr(step)
        shrink.train_batch(step)
    for step in range(12):  # 12 single segments of the 8-row carry
        refill.set_lr(step)
        refill.train_segment(step)
    a, b = shrink.meter.finished, refill.meter.finished
    assert sorted(a) == list(range(24))
    in_flight = refill.carry.position[~refill.carry.halted].tolist()
    taken = int(refill.carry.next_position)
    assert sorted(list(b) + in_flight) == list(range(taken)) and len(b) >= 16  # each position once, in stream order
    common = [p for p in b if p in a]
    assert len(common) >= 16 and all(a[p] == b[p] for p in common), {p: (a[p], b[p]) for p in common if a[p] != b[p]}
    explored = [p for p in a if a[p] > 1 + (p * 7) % 4]  # held past the schedule by the exploration minimum
    assert explored, "no example was held by exploration: the test would not see it"
    assert len(set(a.values())) > 2  # a real mix of segment counts


def test_refill_keeps_shapes_and_state_of_running_rows(tmp_path):
    t = trainer(tmp_path, "refill")
    carry = t.carry
    shapes = set()
    for step in range(6):
        t.set_lr(step)
        t.train_segment(step)
        shapes.add((carry.tokens.shape, tuple(s.shape for s in carry.state)))
    assert len(shapes) == 1
    carried = [s.clone() for s in carry.state]
    carry.refill()  # a row that goes on thinking keeps its state; a refilled row starts afresh
    init = t.model.init_state(carry.rows, carry.tokens.shape[1])
    fresh = carry.segment == 0
    assert fresh.any() and (~fresh).any()
    for now, before, start in zip(carry.state, carried, init):
        assert torch.equal(now[fresh], start[fresh]) and torch.equal(now[~fresh], before[~fresh])


def test_refill_step_reads_nothing_back_from_the_device(tmp_path):
    """After warm-up, a refill step asks the device for no value: no .item(), no
    bool() of a tensor, no boolean-mask indexing (each a host synchronisation on a GPU).
    Every operator is watched at dispatch; the one read allowed is of the optimizer's
    step counters, which live on the CPU by design. The metrics are read once per
    logging interval, outside the step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    t = trainer(tmp_path, "refill", ["model.halting=act_q", "train.halt_explore_prob=0.5"])
    for step in range(2):
        t.set_lr(step)
        t.train_segment(step)
    allowed = {id(s["step"]) for s in t.optimizer.state.values()}
    syncing = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default, torch.ops.aten.is_nonzero.default,
               torch.ops.aten.masked_select.default}
    reads = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in syncing and not (args and id(args[0]) in allowed):
                reads.append(str(func))
            return func(*args, **(kwargs or {}))

    with Watch():
        for step in range(2, 6):
            t.set_lr(step)
            t.train_segment(step)
    assert not reads, reads
    shrink = trainer(tmp_path / "s", "shrink")
    shrink.halts = schedule
    shrink.set_lr(0)
    with Watch():  # the watch itself works: a shrinking batch reads back which rows leave
        shrink.train_batch(0)
    assert reads
