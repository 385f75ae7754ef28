"""Looped / Universal Transformer with per-position halting (ACT or PonderNet), and
SCORE's contractive update as an option.

Within one segment, one shared stack is applied up to K = `cycles` times:

    h_k = net(h_{k-1} + x)                              # dt = 0
    h_k = (1 - dt) h_{k-1} + dt net(h_{k-1} + x)        # SCORE, 0 < dt < 1
    p_k = sigmoid(act_head(h_k))                        # (B, L): "halt here" probability

ACT ("Adaptive Computation Time", as in Universal Transformers): a position halts at
the first step N whose cumulative probability reaches 1 - eps (or at step K). Its
output is sum_{k<N} p_k h_k + R h_N with remainder R = 1 - sum_{k<N} p_k, and it pays
the ponder cost N + R, whose gradient (through R) pushes towards halting sooner. The
output is the segment's new state; heads read it like any other family.

PonderNet (`loop_halting=pondernet`): p_k = lambda_k prod_{j<k} (1 - lambda_j) is a
distribution over steps (the last step takes what is left); the loss is the expected
token loss sum_k p_k loss(h_k) plus `ponder_cost` * KL(p || truncated geometric prior),
and a position answers with the step where the cumulative p first reaches 1/2.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ponder.models.base import RecurrentModel, SegmentOutput, State
from ponder.solvers import grad_steps

ACT_EPS = 0.01


def pondernet_distribution(lambdas: torch.Tensor) -> torch.Tensor:
    """(K, B, L) per-step halting probabilities -> (K, B, L) halting distribution:
    p_k = lambda_k prod_{j<k} (1 - lambda_j), the last step taking the rest."""
    K = lambdas.shape[0]
    survive = torch.cumprod(torch.cat([torch.ones_like(lambdas[:1]), 1 - lambdas[:-1]]), dim=0)  # prod_{j<k}
    halt_here = torch.cat([lambdas[:-1], torch.ones_like(lambdas[:1])]) if K > 1 else torch.ones_like(lambdas)
    return survive * halt_here


def geometric_prior(K: int, rate: float, like: torch.Tensor) -> torch.Tensor:
    """(K,) geometric distribution q_k = rate (1 - rate)^k truncated to K steps and renormalised."""
    q = rate * (1 - rate) ** torch.arange(K, dtype=like.dtype, device=like.device)
    return q / q.sum()


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
        if loop_halting not in ("act", "pondernet", "none"):
            raise ValueError(f"loop_halting: expected act, pondernet or none, got {loop_halting!r}")
        self.cycles = cycles
        self.calls_per_segment = cycles
        self.loop_halting = loop_halting
        self.ponder_cost = ponder_cost
        self.pondernet_prior = pondernet_prior
        self.score_dt = score_dt
        self.net = self.make_stack()
        self.act_head = nn.Linear(self.hidden, 1)
        nn.init.zeros_(self.act_head.weight)
        nn.init.constant_(self.act_head.bias, -1.0)  # start by pondering a few steps
        self.add_heads(latents=1)  # state = (h,)

    def loop_step(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        new = self.net(h + x)
        return new if self.score_dt == 0 else (1 - self.score_dt) * h + self.score_dt * new

    def forward(self, tokens: torch.Tensor, state: State | None = None, puzzle_ids: torch.Tensor | None = None) -> SegmentOutput:
        B, L = tokens.shape
        x = self.embed(tokens, puzzle_ids)  # (B, L, D)
        h = self.init_state(B, L)[0] if state is None else state[0]
        K = self.cycles
        first_grad = K - grad_steps(self.grad_mode, K, 1, self.truncate_steps)
        states, probs = [], []
        for k in range(K):
            with torch.set_grad_enabled(torch.is_grad_enabled() and k >= first_grad):
                h = self.loop_step(h, x)
                states.append(h)
                probs.append(torch.sigmoid(self.act_head(h).squeeze(-1)))  # (B, L)
        if self.loop_halting == "act":
            y, ponder = act_combine(states, probs)  # (B, L, D), (B, L)
            return self.heads((y,), aux_loss=self.ponder_cost * ponder.mean(dim=1))
        if self.loop_halting == "pondernet":
            return self.pondernet_output(states, probs)
        return self.heads((h,))

    def pondernet_output(self, states: list[torch.Tensor], lambdas: list[torch.Tensor]) -> SegmentOutput:
        p = pondernet_distribution(torch.stack(lambdas))  # (K, B, L)
        q = geometric_prior(len(states), self.pondernet_prior, p)[:, None, None]  # (K, 1, 1)
        kl = (p * (p.clamp_min(1e-12).log() - q.log())).sum(dim=0)  # (B, L)
        stop = (p.cumsum(dim=0) >= 0.5).float().argmax(dim=0)  # (B, L): the median step
        stacked = torch.stack(states)  # (K, B, L, D)
        y = stacked.gather(0, stop[None, :, :, None].expand(1, *stacked.shape[1:]))[0]  # (B, L, D)
        out = self.heads((y,), aux_loss=self.ponder_cost * kl.mean(dim=1))
        out.step_logits = self.head(stacked)  # (K, B, L, V)
        out.step_probs = p
        return out

    def readout(self, state: State) -> torch.Tensor:
        return state[0]
