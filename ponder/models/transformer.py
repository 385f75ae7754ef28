"""Transformer baseline: the same blocks stacked once, no recurrence.

    h = net(x);  logits = head(h)

It runs through the same segment driver as the recurrent families, but ignores the
carried state, so every segment gives the same answer: extra segments buy nothing. With
the same `layers` and `hidden` as a recurrent family's network it has the same
parameter count, which isolates what the recurrence adds.
"""

from __future__ import annotations

import torch

from ponder.models.base import RecurrentModel, State


class Transformer(RecurrentModel):
    def __init__(self, vocab: int, seq_len: int, grad_mode: str = "full", **arch):
        """`arch`: the shared architecture arguments of `RecurrentModel`."""
        super().__init__(vocab, seq_len, grad_mode=grad_mode, **arch)
        self.calls_per_segment = 1
        self.net = self.make_stack()
        self.add_heads(latents=1)  # state = (h,)

    def schedule(self, x: torch.Tensor):
        return [lambda s: (self.net(x),)]

    def readout(self, state: State) -> torch.Tensor:
        return state[0]
