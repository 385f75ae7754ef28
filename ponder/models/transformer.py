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
from ponder.nn.blocks import InputEmbedding, Stack


class Transformer(RecurrentModel):
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
        mlp_multiple: int = 16,
        attention_mask: torch.Tensor | None = None,
        halting: str = "bce",
        grad_mode: str = "full",
        truncate_steps: int = 1,
        num_tasks: int = 0,
    ):
        super().__init__(grad_mode, truncate_steps, calls_per_cycle=1, halting=halting)
        self.calls_per_segment = 1
        use_rope = rope and mixer == "attention"
        self.embed = InputEmbedding(vocab, hidden, seq_len, learned_positions=not use_rope, num_tasks=num_tasks)
        self.net = Stack(hidden, heads, layers, expansion, mixer, seq_len, rope=use_rope, mask=attention_mask, mlp_multiple=mlp_multiple)
        self.add_heads(hidden, vocab, latents=1)  # state = (h,)

    def schedule(self, x: torch.Tensor):
        return [lambda s: (self.net(x),)]

    def readout(self, state: State) -> torch.Tensor:
        return state[0]
