"""Looped / Universal Transformer with per-position halting inside a segment (ACT or
PonderNet), and SCORE's contractive update as an option.

Within one segment, one shared stack is applied up to K = `cycles` times:

    h_k = net(h_{k-1} + x)                              # dt = 0
    h_k = (1 - dt) h_{k-1} + dt net(h_{k-1} + x)        # SCORE, 0 < dt < 1
    p_k = sigmoid(act_head(h_k))                        # (B, L): "halt here" probability

The loop rule (`act_head`, `ponder.models.halting`: ACT, PonderNet or none) turns the
K states into the segment's new state and an extra loss (ACT's ponder cost, PonderNet's
KL to its prior); the heads read that state like any other family's.
"""

from __future__ import annotations

import torch

from ponder.models.base import RecurrentModel, SegmentOutput, State
from ponder.models.halting import loop_halting as make_loop_halting
from ponder.solvers import grad_steps


class LoopedTransformer(RecurrentModel):
    def __init__(
        self,
        vocab: int,
        seq_len: int,
        cycles: int = 8,  # K: most loop steps per segment
        loop_halting: str = "act",  # act, pondernet or none (always K steps)
        ponder_cost: float = 0.01,  # weight of ACT's N + R or PonderNet's KL
        pondernet_prior: float = 0.2,  # rate of PonderNet's geometric prior
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
        self.score_dt = score_dt
        self.net = self.make_stack()
        self.act_head = make_loop_halting(loop_halting, self.hidden, ponder_cost, pondernet_prior)  # the rule over loop steps
        self.add_heads(latents=1)  # state = (h,)

    def loop_step(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        new = self.net(h + x)
        return new if self.score_dt == 0 else (1 - self.score_dt) * h + self.score_dt * new

    def forward(self, tokens: torch.Tensor, state: State | None = None, puzzle_ids: torch.Tensor | None = None) -> SegmentOutput:
        B, L = tokens.shape
        x = self.embed(tokens, puzzle_ids)  # (B, P + L, D)
        h = self.init_state(B, L)[0] if state is None else state[0]
        K = self.cycles
        first_grad = K - grad_steps(self.grad_mode, K, 1, self.truncate_steps)
        states, probs = [], []
        for k in range(K):
            with torch.set_grad_enabled(torch.is_grad_enabled() and k >= first_grad):
                h = self.loop_step(h, x)
                states.append(h)
                probs.append(self.act_head.probs(h))  # (B, L)
        y, aux_loss, step_probs = self.act_head.combine(states, probs)  # (B, L, D), (B,) or None, (K, B, L) or None
        out = self.heads((y,), aux_loss=aux_loss)
        if step_probs is not None:  # the token loss is the expected loss over the loop steps
            out.step_logits = self.head(torch.stack(states)[:, :, self.prefix :])  # (K, B, L, V)
            out.step_probs = step_probs[:, :, self.prefix :]  # (K, B, L)
        return out

    def readout(self, state: State) -> torch.Tensor:
        return state[0]
