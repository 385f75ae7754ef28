"""The fixed-shape training batch (refill batching), as the reference HRM/TRM code
trains: the batch keeps its B rows; a row whose example halted is refilled with the
next example of the stream and a fresh state; each optimizer step is one segment.

Every shape stays the same from step to step, so CUDA graphs, `torch.compile` (no
recompiles after warm-up) and DDP (ranks never fall out of step) all work, and nothing
is read back to the host: which rows are refilled, and from which stream positions, is
computed on the device. Under torchrun each rank holds B / world rows; the refill order
is computed over the whole global batch (one small all-gather of the "halted" flags),
so the examples each row receives are the ones it gets in a single process.

A row records its example's stream position, the segments it has run and its
exploration minimum, so the same examples get the same segment counts as in the
shrinking batch of `ponder.models.driver.think` under the same halting decisions.
"""

from __future__ import annotations

import torch

from ponder.models.base import State
from ponder.train.distributed import Dist
from ponder.train.stream import ExampleStream


class Carry:
    def __init__(self, model, stream: ExampleStream, rows: int, dist: Dist, max_segments: int, explore_prob: float, seq_len: int, next_position: int = 0):
        """`rows`: the global batch size B (this rank holds B / world of them);
        `next_position`: the stream position of the first example not yet taken."""
        self.model, self.stream, self.dist = model, stream, dist
        self.global_rows, self.rows = rows, rows // dist.world
        self.max_segments, self.explore_prob = max_segments, explore_prob
        device = dist.device
        b = self.rows
        self.tokens = torch.zeros(b, seq_len, dtype=torch.long, device=device)  # (b, L)
        self.labels = torch.zeros(b, seq_len, dtype=torch.long, device=device)  # (b, L)
        self.ids = None if stream.ids is None else torch.zeros(b, dtype=torch.long, device=device)  # (b,)
        self.state: State = model.init_state(b, seq_len)  # each (b, L, D)
        self.position = torch.zeros(b, dtype=torch.long, device=device)  # stream position of each row's example
        self.segment = torch.zeros(b, dtype=torch.long, device=device)  # segments that example has run
        self.min_segments = torch.ones(b, dtype=torch.long, device=device)
        self.halted = torch.ones(b, dtype=torch.bool, device=device)  # True: refill before the next segment
        self.next_position = torch.tensor(next_position, dtype=torch.long, device=device)  # global, the same on every rank
        self.start_position = next_position  # host-side bounds on the positions in use (see `refill`)
        self.steps = 0

    def refill(self) -> None:
        """Give every halted row the next example of the stream and a fresh state.

        Fresh rows take consecutive positions in row order over the global batch. The
        host knows bounds on them without reading the device: each step takes at most B
        new examples, and every row finishes within max_segments steps, so after s steps
        next_position lies in [start + B floor(s / max_segments), start + B s]."""
        B = self.global_rows
        fresh_all = self.dist.all_gather(self.halted)  # (B,) in global row order
        order = torch.cumsum(fresh_all.long(), 0) - 1  # (B,) the k-th fresh row takes next_position + k
        lo_row = self.dist.rank * self.rows
        fresh = self.halted
        positions = torch.where(fresh, self.next_position + order[lo_row : lo_row + self.rows], self.position)  # (b,)
        lo = self.start_position + B * (self.steps // self.max_segments)
        hi = self.start_position + B * (self.steps + 1)
        tokens, labels, ids = self.stream.fetch(positions.clamp(lo, hi - 1), lo, hi)
        column = fresh[:, None]
        self.tokens = torch.where(column, tokens, self.tokens)
        self.labels = torch.where(column, labels, self.labels)
        if ids is not None:
            self.ids = torch.where(fresh, ids, self.ids)
        init = self.model.init_state(self.rows, self.tokens.shape[1])
        self.state = tuple(torch.where(column[..., None], i.to(s.dtype), s) for i, s in zip(init, self.state))
        self.position = positions
        self.segment = torch.where(fresh, 0, self.segment)
        self.min_segments = torch.where(fresh, self.stream.min_segments(positions, self.explore_prob, self.max_segments), self.min_segments)
        self.next_position = self.next_position + fresh_all.sum()
        self.halted = torch.zeros_like(self.halted)

    def advance(self, state: State, stop: torch.Tensor) -> torch.Tensor:
        """After a segment: carry its (detached) state and mark rows that are done,
        either at the segment limit or stopped by the halting rule (`stop` (b,) bool)
        past their exploration minimum. Returns the done rows (b,) bool."""
        self.segment = self.segment + 1
        done = (self.segment >= self.max_segments) | (stop & (self.segment >= self.min_segments))
        self.halted = done
        self.state = tuple(s.detach() for s in state)
        self.steps += 1
        return done

    def is_last(self) -> torch.Tensor:
        """(b,) bool: the coming segment is the row's last allowed one."""
        return self.segment + 1 >= self.max_segments

    # ------------------------------------------------------------- checkpoints

    def bytes(self) -> int:
        """The size of the global latent state (what a checkpoint must hold to resume
        the in-flight examples exactly)."""
        return sum(s.numel() * s.element_size() for s in self.state) * self.dist.world

    def snapshot(self, with_state: bool) -> dict[str, torch.Tensor]:
        """The global carry (every rank's rows, in rank order) for a checkpoint; a
        collective: every rank must call it."""
        out = {
            "carry.position": self.dist.all_gather(self.position),
            "carry.segment": self.dist.all_gather(self.segment),
            "carry.min_segments": self.dist.all_gather(self.min_segments),
            "carry.halted": self.dist.all_gather(self.halted),
            "carry.next_position": self.next_position.reshape(1),
        }
        if with_state:
            for k, s in enumerate(self.state):
                out[f"carry.state.{k}"] = self.dist.all_gather(s.contiguous())
        return out

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take this rank's rows of a global snapshot (saved with any number of ranks).
        Rows whose latent state was not saved restart their example from the initial
        state, keeping their segment count."""
        lo, hi = self.dist.rank * self.rows, (self.dist.rank + 1) * self.rows
        device = self.position.device
        rows = {k: tensors[f"carry.{k}"][lo:hi].to(device) for k in ("position", "segment", "min_segments", "halted")}
        self.position, self.segment, self.min_segments = rows["position"].long(), rows["segment"].long(), rows["min_segments"].long()
        self.halted = rows["halted"].bool()
        self.next_position = tensors["carry.next_position"].to(device).long().reshape(())
        self.start_position = int(tensors["carry.next_position"].reshape(()))  # the host-side bounds restart here
        if "carry.state.0" in tensors:
            self.state = tuple(tensors[f"carry.state.{k}"][lo:hi].to(device=device, dtype=s.dtype) for k, s in enumerate(self.state))
        # the examples in flight: the same rows of the same stream positions
        span = max(1, int(self.position.max()) + 1) if self.position.numel() else 1
        low = int(self.position.min()) if self.position.numel() else 0
        tokens, labels, ids = self.stream.fetch(self.position, low, span)
        self.tokens, self.labels = tokens, labels
        if ids is not None:
            self.ids = ids
