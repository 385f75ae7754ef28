"""Hierarchical Reasoning Model ("Hierarchical Reasoning Model").

Two recurrent modules at two timescales, each a stack of blocks:

    repeat H_cycles:                       # model.cycles
        repeat L_cycles:                   # model.latent_steps
            zL = L(zL + zH + x)            # fast, low-level module
        zH = H(zH + zL)                    # slow, high-level module
    logits = head(zH)

This is TRM's schedule with y = zH and z = zL, except that H and L are separate
networks (`net` is L, `answer_net` is H) and the gradient is the one-step
approximation (grad_mode=one_step): only the last L call and the last H call record
gradient, so memory does not grow with the cycle count.
"""

from __future__ import annotations

from ponder.models.trm import TRM


class HRM(TRM):
    def __init__(self, vocab: int, seq_len: int, grad_mode: str = "one_step", **kwargs):
        super().__init__(vocab, seq_len, grad_mode=grad_mode, separate_answer_network=True, **kwargs)
