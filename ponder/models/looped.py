"""Looped / Universal Transformer with per-position adaptive computation time (ACT),
and SCORE's contractive update as an option.

Within one segment, one shared stack is applied up to K = `cycles` times:

    h_k = net(h_{k-1} + x)                              # dt = 0
    h_k = (1 - dt) h_{k-1} + dt net(h_{k-1} + x)        # SCORE, 0 < dt < 1
    p_k = sigmoid(act_head(h_k))                        # (B, L): "halt here" probability

ACT ("Adaptive Computation Time", as in Universal Transformers): a position halts at
the first step N whose cumulative probability reaches 1 - eps (or at step K). Its
output is sum_{k<N} p_k h_k + R h_N with remainder R = 1 - sum_{k<N} p_k, and it pays
the ponder cost N + R, whose gradient (through R) pushes towards halting sooner. The
output is the segment's new state; heads read it like any other family.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ponder.models.base import RecurrentModel, SegmentOutput, State
from ponder.solvers import grad_steps

ACT_EPS = 0.01


def act_combine(states: list[torch.Tensor], probs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Graves's ACT over steps already computed.

    states: K tensors (B, L, D); probs: K tensors (B, L) halting probabilities.
    Returns the weighted output (B, L, D) and the ponder cost N + R (B, L)."""
    B, L, _ = states[0].shape
    cum = states[0].new_zeros(B, L)  # sum of p over steps taken so far
    remainder = states[0].new_zeros(B, L)
    steps = states[0].new_zeros(B, L)
    running = torch.ones(B, L, dtype=torch.bool, device=states[0].device)
    out = torch.zeros_like(states[0])
    K = len(states)
    for k, (h, p) in enumerate(zip(states, probs)):
        halt_now = running & ((cum + p >= 1 - ACT_EPS) | (k == K - 1))
        weight = torch.where(halt_now, 1 - cum, torch.where(running, p, torch.zeros_like(p)))
        out = out + weight.unsqueeze(-1) * h
        remainder = torch.where(halt_now, 1 - cum, remainder)
        steps = steps + running.to(steps.dtype)
        cum = cum + torch.where(running & ~halt_now, p, torch.zeros_like(p))
        running = running & ~halt_now
    return out, steps + remainder


class LoopedTransformer(RecurrentModel):
    def __init__(
        self,
        vocab: int,
        seq_len: int,
        cycles: int = 8,  # K: most loop steps per segment
        act: bool = True,
        ponder_cost: float = 0.01,
        score_dt: float = 0.0,
        grad_mode: str = "full",
        **arch,
    ):
        """`arch`: the shared architecture arguments of `RecurrentModel`."""
        super().__init__(vocab, seq_len, grad_mode=grad_mode, **arch)
        if not 0.0 <= score_dt < 1.0:
            raise ValueError(f"score_dt must be in [0, 1), got {score_dt}")
        self.cycles = cycles
        self.calls_per_segment = cycles
        self.act = act
        self.ponder_cost = ponder_cost
        self.score_dt = score_dt
        self.net = self.make_stack()
        self.act_head = nn.Linear(self.hidden, 1)
        nn.init.zeros_(self.act_head.weight)
        nn.init.constant_(self.act_head.bias, -1.0)  # start by pondering a few steps
        self.add_heads(latents=1)  # state = (h,)

    def loop_step(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        new = self.net(h + x)
        return new if self.score_dt == 0 else (1 - self.score_dt) * h + self.score_dt * new

    def forward(self, tokens: torch.Tensor, state: State | None = None, task_ids: torch.Tensor | None = None) -> SegmentOutput:
        B, L = tokens.shape
        x = self.embed(tokens, task_ids)  # (B, L, D)
        h = self.init_state(B, L)[0] if state is None else state[0]
        K = self.cycles
        first_grad = K - grad_steps(self.grad_mode, K, 1, self.truncate_steps)
        states, probs = [], []
        for k in range(K):
            with torch.set_grad_enabled(torch.is_grad_enabled() and k >= first_grad):
                h = self.loop_step(h, x)
                states.append(h)
                probs.append(torch.sigmoid(self.act_head(h).squeeze(-1)))  # (B, L)
        if self.act:
            y, ponder = act_combine(states, probs)  # (B, L, D), (B, L)
            aux = self.ponder_cost * ponder.mean(dim=1)  # (B,)
        else:
            y, aux = h, None
        return self.heads((y,), aux_loss=aux)

    def readout(self, state: State) -> torch.Tensor:
        return state[0]
