"""Depth-recurrent Transformer ("Thinking Deeper, Not Longer"; recurrent-depth
language models).

One shared stack refines the state with an identity-biased, LayerScale'd update:

    h = norm(h + gamma * net(h + x))        # gamma: per-channel, initialised small

In training the number of iterations r is random per batch, drawn from a
Poisson-lognormal distribution with mean `cycles` (log-rate ~ N(log(cycles) - s^2/2, s),
r = 1 + Poisson(rate)), and only the last `truncate_steps` iterations carry gradient,
so memory does not grow with r. At evaluation r = `cycles`, and more segments simply
iterate further: the model can think longer at test time than it was trained for.
Presets train with one supervised segment (loss on the final output only).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ponder.models.base import RecurrentModel, State
from ponder.nn.blocks import RMSNorm


def sample_iterations(mean: float, sigma: float, generator: torch.Generator | None = None) -> int:
    """r = 1 + Poisson(exp(tau)), tau ~ N(log(mean) - sigma^2 / 2, sigma): mean about 1 + mean."""
    tau = torch.randn((), generator=generator) * sigma + (math.log(mean) - sigma**2 / 2)
    return 1 + int(torch.poisson(tau.exp().reshape(1), generator=generator).item())


class DepthRecurrent(RecurrentModel):
    def __init__(
        self,
        vocab: int,
        seq_len: int,
        cycles: int = 8,  # mean iterations per segment (exactly this many at evaluation)
        iteration_sigma: float = 0.5,
        layerscale_init: float = 0.1,
        grad_mode: str = "truncated",
        truncate_steps: int = 4,
        **arch,
    ):
        """`arch`: the shared architecture arguments of `RecurrentModel`."""
        super().__init__(vocab, seq_len, grad_mode=grad_mode, truncate_steps=truncate_steps, **arch)
        self.cycles = cycles
        self.calls_per_segment = cycles
        self.iteration_sigma = iteration_sigma
        self.net = self.make_stack()
        self.gamma = nn.Parameter(torch.full((self.hidden,), layerscale_init))  # LayerScale
        self.norm = RMSNorm(self.hidden)
        self.add_heads(latents=1)  # state = (h,)

    def iterations(self) -> int:
        if self.training and self.iteration_sigma > 0:
            return sample_iterations(self.cycles, self.iteration_sigma)
        return self.cycles

    def schedule(self, x: torch.Tensor):
        def refine(s: State) -> State:
            (h,) = s
            return (self.norm(h + self.gamma * self.net(h + x)),)

        return [refine] * self.iterations()

    def readout(self, state: State) -> torch.Tensor:
        return state[0]
