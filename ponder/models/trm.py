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

from ponder.models.base import RecurrentModel, State



class TRM(RecurrentModel):
    def __init__(
        self,
        vocab: int,
        seq_len: int,
        latent_steps: int = 2,
        cycles: int = 2,
        grad_mode: str = "last_cycle",
        separate_answer_network: bool = False,
        **arch,
    ):
        """`arch`: the shared architecture arguments of `RecurrentModel`."""
        super().__init__(vocab, seq_len, grad_mode=grad_mode, calls_per_cycle=latent_steps + 1, **arch)
        self.latent_steps = latent_steps
        self.cycles = cycles
        self.calls_per_segment = cycles * (latent_steps + 1)
        self.net = self.make_stack()  # updates z (and y too, unless a separate answer network is asked for)
        self.answer_net = self.make_stack() if separate_answer_network else None
        self.add_heads(latents=2)  # state = (y, z)

    def schedule(self, x: torch.Tensor):
        answer_net = self.net if self.answer_net is None else self.answer_net

        def reason(s: State) -> State:
            y, z = s
            return y, self.net(z + y + x)

        def answer(s: State) -> State:
            y, z = s
            return answer_net(y + z), z

        return ([reason] * self.latent_steps + [answer]) * self.cycles

    def readout(self, state: State) -> torch.Tensor:
        return state[0]  # y
