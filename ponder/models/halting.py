"""Halting rules: when an example stops thinking. Each rule is one object that owns its
head (a linear layer on the latent the answer head reads), its loss and its stop
decision, so a new rule is one class here and nothing else.

Between segments (`model.halting`, any family):

    none    no head decision: every example runs the segment limit
    bce     TRM: a per-position "this cell is settled" logit, the least sure position
            decides; trained with BCE against "is the whole answer right?"
    act_q   HRM: Q-values (halt, continue) of the pooled state, trained by Q-learning;
            the continue target is bootstrapped from the next segment

Inside one segment (`model.loop_halting`, the looped family), over its K loop steps:

    act        Graves's ACT: halt where the cumulative probability reaches 1 - eps; the
               output is the probability-weighted state; the ponder cost N + R
    pondernet  a halting distribution over the K steps, the expected loss under it,
               a KL to a geometric prior; the answer at its median step
    none       always K steps

The heads start at "never halt" (weight 0, bias -5 between segments; bias -1 inside a
segment), as HRM/TRM do, so early training explores every segment.

What a head between segments reads (`model.halt_readout`): `pooled`, the rule's own
pooling over the answer positions (bce: the least sure position; act_q: the mean state),
or `first`, the state at position 0, a prefix position that holds the puzzle vector (as
the HRM/TRM code reads it); `auto` is `first` when the model has prefix positions.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

ACT_EPS = 0.01


# ----------------------------------------------------------------- between segments

READOUTS = ("auto", "pooled", "first")


class SegmentHalting(nn.Linear):
    """A halting rule between segments. It is its own head (`nn.Linear`, so a
    checkpoint's `halt_head.weight` / `halt_head.bias` name it)."""

    name = ""
    outputs = 1
    bootstraps = False  # True: `loss` needs the next segment's output

    def __init__(self, hidden: int, readout: str = "pooled"):
        if readout not in ("pooled", "first"):
            raise ValueError(f"halt_readout: expected pooled or first, got {readout!r}")
        super().__init__(hidden, self.outputs)
        nn.init.zeros_(self.weight)
        nn.init.constant_(self.bias, -5.0)
        self.readout = readout

    def logits(self, y: torch.Tensor, prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """y (B, P + L, D), the first `prefix` positions being prefix positions ->
        halting logits (B,) (> 0 means stop) and any Q-values (B, 2)."""
        raise NotImplementedError

    def position_logit(self, y: torch.Tensor, prefix: int) -> torch.Tensor:
        """(B,): the logit at position 0, or the least sure answer position's: the whole
        answer is right only if every position is."""
        if self.readout == "first":
            return self.forward(y[:, 0]).squeeze(-1)
        return self.forward(y[:, prefix:]).squeeze(-1).amin(dim=1)  # (B, L) -> (B,)

    def loss(self, halt_logits: torch.Tensor, q_logits: torch.Tensor | None, correct: torch.Tensor,
             next_q: Callable[[], torch.Tensor] | None = None, is_last: bool = False) -> torch.Tensor:
        """Per-example loss (B,) given whether each whole answer is right (B,)."""
        raise NotImplementedError

    def stop(self, halt_logits: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the examples this rule stops after the segment."""
        return halt_logits > 0


class NoHalting(SegmentHalting):
    """Fixed segments. The head is kept (and recorded at evaluation) but never decides,
    and no loss trains it: its weights are frozen."""

    name = "none"

    def __init__(self, hidden: int, readout: str = "pooled"):
        super().__init__(hidden, readout)
        self.requires_grad_(False)

    def logits(self, y, prefix=0):
        return self.position_logit(y, prefix), None

    def loss(self, halt_logits, q_logits, correct, next_q=None, is_last=False):
        return torch.zeros_like(correct, dtype=torch.float32)

    def stop(self, halt_logits):
        return torch.zeros_like(halt_logits, dtype=torch.bool)


class BCEHalting(SegmentHalting):
    """TRM's rule: the whole answer is right only if every position is, so the least
    sure position's logit decides."""

    name = "bce"

    def logits(self, y, prefix=0):
        return self.position_logit(y, prefix), None

    def loss(self, halt_logits, q_logits, correct, next_q=None, is_last=False):
        return F.binary_cross_entropy_with_logits(halt_logits.float(), correct.float(), reduction="none")


class ACTQHalting(SegmentHalting):
    """HRM's ACT Q-learning on the pooled state: halt when Q(halt) > Q(continue)."""

    name = "act_q"
    outputs = 2
    bootstraps = True

    def logits(self, y, prefix=0):
        q = self.forward(y[:, 0] if self.readout == "first" else y.mean(dim=1))  # (B, 2): halt, continue
        return q[:, 0] - q[:, 1], q

    def loss(self, halt_logits, q_logits, correct, next_q=None, is_last=False):
        """Halting is rewarded by correctness: BCE(q_halt, correct). Continuing is worth
        what the best action of the next segment is worth (only halting, if the next
        segment is the last): BCE(q_continue, sigmoid(max(next q_halt, next q_continue))).
        `next_q()` gives the next segment's (B, 2) Q logits, computed without gradient."""
        if next_q is None:
            raise ValueError("act_q halting needs the next segment's Q values (next_q)")
        return act_q_loss(q_logits, correct, next_q(), is_last)


def act_q_loss(q_logits: torch.Tensor, correct: torch.Tensor, next_q_logits: torch.Tensor, is_last: bool | torch.Tensor) -> torch.Tensor:
    """q_logits, next_q_logits (B, 2) as (halt, continue); correct (B,); is_last: a bool,
    or (B,) per example (a refilled batch mixes examples at different segments)."""
    q_halt, q_continue = q_logits.float().unbind(-1)
    next_halt, next_continue = next_q_logits.detach().float().unbind(-1)
    target = torch.sigmoid(torch.where(torch.as_tensor(is_last, device=q_halt.device), next_halt, torch.maximum(next_halt, next_continue)))
    halt_term = F.binary_cross_entropy_with_logits(q_halt, correct.float(), reduction="none")
    continue_term = F.binary_cross_entropy_with_logits(q_continue, target, reduction="none")
    return halt_term + continue_term


SEGMENT_HALTING: dict[str, type[SegmentHalting]] = {cls.name: cls for cls in (NoHalting, BCEHalting, ACTQHalting)}


def segment_halting(name: str, hidden: int, readout: str = "pooled") -> SegmentHalting:
    if name not in SEGMENT_HALTING:
        raise ValueError(f"halting: expected one of {', '.join(SEGMENT_HALTING)}, got {name!r}")
    return SEGMENT_HALTING[name](hidden, readout)


# ----------------------------------------------------------------- inside a segment

class LoopHalting(nn.Linear):
    """A halting rule over the K loop steps of one segment: a per-position halting
    probability head (`act_head` in a checkpoint), and `combine`, which turns the K step
    states into the segment's output state and a per-example extra loss."""

    name = ""

    def __init__(self, hidden: int, cost: float = 0.01, prior: float = 0.2):
        super().__init__(hidden, 1)
        nn.init.zeros_(self.weight)
        nn.init.constant_(self.bias, -1.0)  # start by pondering a few steps
        self.cost, self.prior = cost, prior

    def probs(self, h: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L) probability of halting at this step."""
        return torch.sigmoid(self.forward(h).squeeze(-1))

    def combine(self, states: list[torch.Tensor], probs: list[torch.Tensor]):
        """K states (B, L, D) and halting probabilities (B, L) -> (output (B, L, D),
        extra loss (B,) or None, step distribution (K, B, L) or None: with one, the
        token loss is the expected loss over steps)."""
        raise NotImplementedError


class NoLoopHalting(LoopHalting):
    """Always K steps; the head is kept but nothing reads it, so it is frozen."""

    name = "none"

    def __init__(self, hidden: int, cost: float = 0.01, prior: float = 0.2):
        super().__init__(hidden, cost, prior)
        self.requires_grad_(False)

    def combine(self, states, probs):
        return states[-1], None, None


class ACTLoop(LoopHalting):
    """Graves's ACT over the steps already computed: a position halts at the first step
    N whose cumulative probability reaches 1 - eps (or at step K); its output is
    sum_{k<N} p_k h_k + R h_N with remainder R = 1 - sum_{k<N} p_k, and it pays the
    ponder cost N + R, whose gradient (through R) pushes towards halting sooner."""

    name = "act"

    def combine(self, states, probs):
        y, ponder = act_combine(states, probs)  # (B, L, D), (B, L)
        return y, self.cost * ponder.mean(dim=1), None


class PonderNetLoop(LoopHalting):
    """PonderNet: p_k = lambda_k prod_{j<k} (1 - lambda_j) over the K steps (the last
    takes the rest); the loss is the expected token loss sum_k p_k loss(h_k) plus
    `cost` * KL(p || truncated geometric prior); a position answers with the step
    where the cumulative p first reaches 1/2."""

    name = "pondernet"

    def combine(self, states, probs):
        p = pondernet_distribution(torch.stack(probs))  # (K, B, L)
        q = geometric_prior(len(states), self.prior, p)[:, None, None]  # (K, 1, 1)
        kl = (p * (p.clamp_min(1e-12).log() - q.log())).sum(dim=0)  # (B, L)
        stop = (p.cumsum(dim=0) >= 0.5).float().argmax(dim=0)  # (B, L): the median step
        stacked = torch.stack(states)  # (K, B, L, D)
        y = stacked.gather(0, stop[None, :, :, None].expand(1, *stacked.shape[1:]))[0]  # (B, L, D)
        return y, self.cost * kl.mean(dim=1), p


LOOP_HALTING: dict[str, type[LoopHalting]] = {cls.name: cls for cls in (ACTLoop, PonderNetLoop, NoLoopHalting)}


def loop_halting(name: str, hidden: int, cost: float, prior: float) -> LoopHalting:
    if name not in LOOP_HALTING:
        raise ValueError(f"loop_halting: expected one of {', '.join(LOOP_HALTING)}, got {name!r}")
    return LOOP_HALTING[name](hidden, cost, prior)


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
    """Graves's ACT. states: K tensors (B, L, D); probs: K tensors (B, L) halting
    probabilities. Returns the weighted output (B, L, D) and the ponder cost N + R (B, L)."""
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
