"""Exponential moving average of model weights (used for evaluation and saved)."""

from __future__ import annotations

import copy

import torch


class EMA:
    """Shadow copy of a model. With `ramp` the decay ramps up as
    `min(decay, (1 + t) / (10 + t))` over the first updates, so short runs are not
    dominated by the random init; without it the decay is constant from the first
    update (the TRM code's EMA). One multi-tensor update per step
    (`torch._foreach_lerp_`), with no device sync."""

    def __init__(self, model: torch.nn.Module, decay: float, ramp: bool = True):
        self.decay = decay
        self.ramp = ramp
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.ramp else self.decay
        shadow = list(self.model.parameters())
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(shadow, live, 1 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)
