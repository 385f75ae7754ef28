"""Training examples as one endless stream, kept on the training device.

Position p of the stream is example `order_e[p mod N]` of epoch `e = p // N`, where
`order_e` is a permutation of the N training examples drawn from (seed, e), and it is
augmented by a random symmetry drawn from the key of (seed, p). Everything about an
example, its identity, its augmentation and its exploration draw, is a pure function
of its position. That is what makes

- a resumed run repeat the uninterrupted one (the checkpoint stores a position, no
  generator state);
- a run on several GPUs equal a run on one (each rank takes its positions of the same
  stream);
- the shrinking and the refilling batch train the same examples (they consume the
  same positions in the same order, just on different schedules).

Tokens and labels live on the device as uint8 when the vocabulary allows (labels
shifted by one so that IGNORE fits), the epoch permutations are computed on the device
(an argsort of per-example hashes, the same on every device), and augmentation runs
there too, vectorised; nothing is copied from the host per step.

With a curriculum (`curriculum_examples` P > 0) position p < P instead draws, with
replacement and from the key of (seed, p), one of the easiest
ceil(N * (start + (1 - start) * p / P)) examples by the split's difficulty; from P on
the epochs above take over. Still a pure function of the position.
"""

from __future__ import annotations

from typing import Callable

import torch

from ponder.tasks import Split
from ponder.tasks.grids import IGNORE
from ponder.tasks.keyed import example_keys, integers, mix, uniform

EPOCH_SALT = 0x5EED
CURRICULUM_SALT = 0xC0DE
AHEAD = 8  # epochs of permutations computed beyond the ones asked for (each a sort of N)


class ExampleStream:
    def __init__(
        self, split: Split, seed: int, device: torch.device,
        augment: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        curriculum_examples: int = 0, curriculum_start: float = 0.1,
    ):
        """`augment(inputs, labels, keys)`: a random symmetry per row drawn from its
        (B,) int64 key (`ponder.tasks.keyed`), on the device; None: no augmentation.
        `curriculum_examples` > 0: the first that many positions sample from a pool of
        the easiest examples (by `split.difficulty()`) that grows from the fraction
        `curriculum_start` of the split to all of it."""
        self.n = len(split)
        if self.n == 0:
            raise ValueError("the training split is empty")
        self.seed, self.device, self.augment = seed, device, augment
        small = int(split.inputs.max()) < 255 and int(split.labels.max()) < 254
        self.dtype = torch.uint8 if small else torch.int64
        self.inputs = split.inputs.to(device=device, dtype=self.dtype)  # (N, L)
        shifted = torch.where(split.labels == IGNORE, 0, split.labels + 1)  # 0 = IGNORE
        self.labels = shifted.to(device=device, dtype=self.dtype)  # (N, L)
        self.ids = None if split.ids is None else split.ids.to(device)  # (N,)
        self._window: tuple[int, int, torch.Tensor] | None = None  # (first epoch, last epoch, their orders concatenated)
        self.curriculum_examples, self.curriculum_start = curriculum_examples, curriculum_start
        if curriculum_examples > 0:
            difficulty = split.difficulty()
            if difficulty is None:
                raise ValueError("the training split has no difficulty to order a curriculum by")
            self.easiest_first = torch.argsort(difficulty, stable=True).to(device)  # (N,) example indices

    def order(self, epoch: int) -> torch.Tensor:
        """(N,) the permutation of epoch `epoch`: examples sorted by a hash of (seed, epoch,
        index), with ties broken by index, so every device computes the same order."""
        keys = mix(example_keys(self.seed, torch.arange(self.n, device=self.device)), EPOCH_SALT + epoch)
        return torch.argsort(keys, stable=True)

    def indices(self, positions: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Example indices (B,) of stream `positions` (B,), all in [lo, hi): the caller
        states the bounds it knows on the host, so no value is read from the device."""
        first, last = lo // self.n, max(lo, hi - 1) // self.n
        if self._window is None or first < self._window[0] or last > self._window[1]:
            stop = last + AHEAD
            self._window = (first, stop, torch.cat([self.order(e) for e in range(first, stop + 1)]))
        start, _, table = self._window
        return table[positions - start * self.n]

    def curriculum_indices(self, positions: torch.Tensor) -> torch.Tensor:
        """(B,) example indices of `positions` (B,) below `curriculum_examples`: a keyed
        draw from the easiest examples, a pool growing linearly with the position."""
        frac = self.curriculum_start + (1 - self.curriculum_start) * positions.double() / self.curriculum_examples
        pool = torch.ceil(frac.clamp(max=1.0) * self.n).long().clamp(1, self.n)  # (B,)
        u = uniform(example_keys(self.seed, positions), 1, salt=CURRICULUM_SALT)[:, 0].double()  # (B,) in [0, 1)
        rank = torch.minimum((u * pool).long(), pool - 1)
        return self.easiest_first[rank]

    def fetch(self, positions: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(inputs (B, L) int64, labels (B, L) int64 with IGNORE, puzzle ids (B,) or None)
        of stream `positions` (B,) int64 on the device, all in [lo, hi)."""
        idx = self.indices(positions, lo, hi)
        if lo < self.curriculum_examples:
            idx = torch.where(positions < self.curriculum_examples, self.curriculum_indices(positions), idx)
        inputs = self.inputs[idx].long()
        stored = self.labels[idx]
        labels = torch.where(stored == 0, IGNORE, stored.long() - 1)
        if self.augment is not None:
            inputs, labels = self.augment(inputs, labels, example_keys(self.seed, positions))
        return inputs, labels, None if self.ids is None else self.ids[idx]

    def min_segments(self, positions: torch.Tensor, explore_prob: float, max_segments: int) -> torch.Tensor:
        """(B,) the least number of segments each example runs before its halting rule
        may stop it: 1, or, with probability `explore_prob`, uniform in 2..max_segments
        (HRM/TRM's exploration), drawn from the example's key."""
        keys = example_keys(self.seed, positions)
        explore = uniform(keys, 1, salt=1)[:, 0] < explore_prob
        if max_segments < 2:
            return torch.ones_like(positions)
        return torch.where(explore, 2 + integers(keys, max_segments - 1, salt=2), 1)
