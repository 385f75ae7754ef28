"""Tiny Recursive Model ("Less is More: Recursive Reasoning with Tiny Networks").

Two latents share one small network:

    repeat T cycles:                 # the first T-1 without gradient
        repeat n times: z = net(z + y + x)   # reason in latent z
        y = net(y + z)                       # refine the answer state y
    logits = head(y);  halt_logit = min over positions of halt_head(y)

One call of `forward` is one deep-supervision segment; the driver in
`ponder.train.loop` runs segments, takes a loss after each and detaches the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ponder.nn.blocks import InputEmbedding, Stack
from ponder.solvers import unroll


@dataclass
class SegmentOutput:
    state: tuple[torch.Tensor, torch.Tensor]  # (y, z), each (B, L, D)
    logits: torch.Tensor  # (B, L, V)
    halt_logits: torch.Tensor  # (B,) > 0 means "my whole answer is right, stop"


class TRM(nn.Module):
    def __init__(
        self,
        vocab: int,
        seq_len: int,
        hidden: int = 128,
        heads: int = 4,
        layers: int = 2,
        expansion: float = 4.0,
        mixer: str = "attention",
        rope: bool = True,
        latent_steps: int = 2,
        cycles: int = 2,
        grad_cycles: int = 1,
        num_tasks: int = 0,
        attention_mask: torch.Tensor | None = None,
    ):
        super().__init__()
        self.latent_steps = latent_steps
        self.cycles = cycles
        self.grad_cycles = grad_cycles
        use_rope = rope and mixer == "attention"
        self.embed = InputEmbedding(vocab, hidden, seq_len, learned_positions=not use_rope, num_tasks=num_tasks)
        self.net = Stack(hidden, heads, layers, expansion, mixer, seq_len, rope=use_rope, mask=attention_mask)
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.halt_head = nn.Linear(hidden, 1)  # per-position "this cell is settled" logit
        # Start by never halting, as HRM/TRM do, so early training explores all segments.
        nn.init.zeros_(self.halt_head.weight)
        nn.init.constant_(self.halt_head.bias, -5.0)
        # Fixed (not learned) initial latents, one vector broadcast over positions.
        self.register_buffer("y_init", torch.randn(hidden) * 1.0)
        self.register_buffer("z_init", torch.randn(hidden) * 1.0)

    def init_state(self, batch: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.y_init.expand(batch, seq_len, -1).clone()  # (B, L, D)
        z = self.z_init.expand(batch, seq_len, -1).clone()  # (B, L, D)
        return y, z

    def cycle(self, state: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One cycle: n latent updates then one answer update."""
        y, z = state
        for _ in range(self.latent_steps):
            z = self.net(z + y + x)
        y = self.net(y + z)
        return y, z

    def forward(self, tokens: torch.Tensor, state=None, task_ids: torch.Tensor | None = None) -> SegmentOutput:
        """tokens: (B, L) ints. Runs one segment from `state` (None: the initial state)."""
        B, L = tokens.shape
        x = self.embed(tokens, task_ids)  # (B, L, D)
        if state is None:
            state = self.init_state(B, L)
        state = unroll(lambda s: self.cycle(s, x), state, self.cycles, self.grad_cycles)
        y = state[0]
        logits = self.head(y)  # (B, L, V)
        # The whole answer is right only if every position is: halt on the least sure one.
        halt_logits = self.halt_head(y).squeeze(-1).amin(dim=1)  # (B, L) -> (B,)
        return SegmentOutput(state=state, logits=logits, halt_logits=halt_logits)
