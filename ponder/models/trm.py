"""Tiny Recursive Model ("Less is More: Recursive Reasoning with Tiny Networks").

Two latents share one small network:

    repeat T cycles:                 # gradient: the last cycle only (grad_mode=last_cycle)
        repeat n times: z = net(z + y + x)   # reason in latent z
        y = net(y + z)                       # refine the answer state y
    logits = head(y);  halt_logit = min over positions of halt_head(y)

One call of `forward` is one deep-supervision segment; the driver in
`ponder.train.loop` runs segments, takes a loss after each and detaches the state.
"""

from __future__ import annotations

import torch

from ponder.models.base import RecurrentModel, SegmentOutput, State
from ponder.nn.blocks import InputEmbedding, Stack

__all__ = ["TRM", "SegmentOutput"]


class TRM(RecurrentModel):
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
        grad_mode: str = "last_cycle",
        truncate_steps: int = 1,
        mlp_multiple: int = 16,
        num_tasks: int = 0,
        attention_mask: torch.Tensor | None = None,
        separate_answer_network: bool = False,
        halting: str = "bce",
    ):
        super().__init__(grad_mode, truncate_steps, calls_per_cycle=latent_steps + 1, halting=halting)
        self.latent_steps = latent_steps
        self.cycles = cycles
        self.calls_per_segment = cycles * (latent_steps + 1)
        use_rope = rope and mixer == "attention"
        self.embed = InputEmbedding(vocab, hidden, seq_len, learned_positions=not use_rope, num_tasks=num_tasks)
        stack = dict(dim=hidden, heads=heads, layers=layers, expansion=expansion, mixer=mixer, seq_len=seq_len, rope=use_rope, mask=attention_mask, mlp_multiple=mlp_multiple)
        self.net = Stack(**stack)  # updates z (and y too, unless a separate answer network is asked for)
        self.answer_net = Stack(**stack) if separate_answer_network else None
        self.add_heads(hidden, vocab, latents=2)  # state = (y, z)

    def schedule(self, x: torch.Tensor):
        def reason(s: State) -> State:
            y, z = s
            return y, self.net(z + y + x)

        answer_net = self.net if self.answer_net is None else self.answer_net

        def answer(s: State) -> State:
            y, z = s
            return answer_net(y + z), z

        return ([reason] * self.latent_steps + [answer]) * self.cycles

    def readout(self, state: State) -> torch.Tensor:
        return state[0]  # y
