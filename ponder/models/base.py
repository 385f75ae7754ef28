"""What every recurrent family shares: the input embedding, the answer and halting
heads, fixed initial latents, and the segment driver.

A family subclasses `RecurrentModel` and defines two things: `schedule(x)`, the list of
its network calls in order (each maps the state tuple to the next state tuple), and
`readout(state)`, the latent the heads read. `forward` runs one deep-supervision
segment: the schedule once, with the family's gradient mode deciding which trailing
calls carry gradient (`ponder.solvers.unroll`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from ponder.models.halting import segment_halting
from ponder.nn.blocks import POSITIONS, InputEmbedding, Stack, linear, truncated_normal_
from ponder.solvers import grad_steps, run_schedule

State = tuple[torch.Tensor, ...]  # each (B, P + L, D): P prefix positions (usually 0), L tokens


@dataclass
class SegmentOutput:
    state: State  # the latents after this segment
    logits: torch.Tensor  # (B, L, V)
    halt_logits: torch.Tensor  # (B,) > 0 means "stop": the answer is right (bce) / halting is worth more (act_q)
    q_logits: torch.Tensor | None = None  # (B, 2) (halt, continue) Q-value logits, with halting=act_q
    aux_loss: torch.Tensor | None = None  # (B,) an extra loss the family adds (looped: ponder cost or KL)
    step_logits: torch.Tensor | None = None  # (K, B, L, V) PonderNet: logits after each loop step
    step_probs: torch.Tensor | None = None  # (K, B, L) PonderNet: probability of halting at each step
    trace: Any = None  # the attractor's fixed-point solve (`ponder.solvers.SolverTrace`), for diagnostics
    proposal_logits: torch.Tensor | None = None  # (B, L, V) attractor in training: the answer head on the proposal y0
    proposal_weight: float = 0.0  # the weight of their token loss


class RecurrentModel(nn.Module):
    """Base class. It takes the architecture arguments every family shares and builds
    the input embedding; a subclass then builds its networks with `make_stack()` and
    calls `add_heads(...)` last, which fixes the parameter initialisation order."""

    def __init__(
        self,
        vocab: int,
        seq_len: int,
        *,
        hidden: int = 128,
        heads: int = 4,
        layers: int = 2,
        expansion: float = 4.0,
        mixer: str = "attention",
        positions: str = "auto",
        mlp_multiple: int = 16,
        mlp_conv: int = 0,
        attention_mask: torch.Tensor | None = None,
        num_puzzles: int = 0,
        grad_mode: str = "full",
        truncate_steps: int = 1,
        halting: str = "bce",
        halt_readout: str = "auto",
        puzzle_prefix: int = 0,
        calls_per_cycle: int = 1,
        norm: str = "post",
        latent_init_std: float = 1.0,
    ):
        """`positions`: rope, learned or none (auto: rope with attention, learned with the
        sequence MLP). `norm`: the blocks' residual form (`ponder.nn.blocks.Block`); with
        "pre" every network call ends with a parameter-free RMS norm (`Stack(out_norm=True)`),
        so the recurrent state keeps one scale however many calls and segments run. `puzzle_prefix`: P extra positions in front of the L tokens, the
        first holding the puzzle vector (`InputEmbedding`); the state then has P + L
        positions and the answer head reads the last L. `halt_readout`: see
        `ponder.models.halting` (auto: first with a prefix, else pooled)."""
        super().__init__()
        grad_steps(grad_mode, calls_per_cycle, calls_per_cycle, truncate_steps)  # validate early
        if positions == "auto":
            positions = "rope" if mixer == "attention" else "learned"
        if positions not in POSITIONS or (positions == "rope" and mixer != "attention"):
            raise ValueError(f"positions: expected rope (with attention), learned or none, got {positions!r} with mixer {mixer!r}")
        if latent_init_std < 0:
            raise ValueError(f"latent_init_std must be >= 0, got {latent_init_std}")
        self.latent_init_std = latent_init_std
        if puzzle_prefix < 0:
            raise ValueError(f"puzzle_prefix must be >= 0, got {puzzle_prefix}")
        self.vocab, self.seq_len, self.hidden = vocab, seq_len, hidden
        self.prefix = puzzle_prefix
        self.grad_mode = grad_mode
        self.truncate_steps = truncate_steps
        self.halting = halting
        self.halt_readout = ("first" if puzzle_prefix else "pooled") if halt_readout == "auto" else halt_readout
        self.calls_per_cycle = calls_per_cycle
        self.calls_per_segment: int  # network calls in one segment (set by the family)
        width = puzzle_prefix + seq_len  # positions the networks see
        if attention_mask is not None and puzzle_prefix:  # prefix positions see, and are seen by, every position
            full = torch.ones(width, width, dtype=torch.bool)
            full[puzzle_prefix:, puzzle_prefix:] = attention_mask
            attention_mask = full
        self.stack_args = dict(
            dim=hidden, heads=heads, layers=layers, expansion=expansion, mixer=mixer, seq_len=width,
            rope=positions == "rope", mask=attention_mask, mlp_multiple=mlp_multiple, mlp_conv=mlp_conv, norm=norm,
            out_norm=norm == "pre",  # no parameters: the init order stays
        )
        self.embed = InputEmbedding(vocab, hidden, seq_len, learned_positions=positions == "learned", num_puzzles=num_puzzles, prefix=puzzle_prefix)

    def make_stack(self) -> Stack:
        """A new network of `layers` blocks with the shared architecture arguments."""
        return Stack(**self.stack_args)

    def add_heads(self, latents: int) -> None:
        hidden = self.hidden
        self.head = linear(hidden, self.vocab)
        self.halt_head = segment_halting(self.halting, hidden, self.halt_readout)  # the halting rule: its head, loss and stop decision
        # Fixed (not learned) initial latents: one vector per latent, broadcast over positions.
        # Drawn at std 1 and then scaled, so every `latent_init_std` takes the same random draws.
        draws = torch.stack([truncated_normal_(torch.empty(hidden), 1.0) for _ in range(latents)])  # (latents, D)
        self.register_buffer("latent_init", draws * self.latent_init_std)

    def init_state(self, batch: int, seq_len: int) -> State:
        """The initial latents for `batch` examples of `seq_len` tokens (plus the prefix)."""
        return tuple(v.expand(batch, self.prefix + seq_len, -1).clone() for v in self.latent_init)

    def schedule(self, x: torch.Tensor) -> list[Callable[[State], State]]:
        raise NotImplementedError

    def readout(self, state: State) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor, state: State | None = None, puzzle_ids: torch.Tensor | None = None) -> SegmentOutput:
        """tokens: (B, L) ints. Runs one segment from `state` (None: the initial state)."""
        x, state = self.advance(tokens, state, puzzle_ids)
        return self.heads(state)

    def advance(self, tokens: torch.Tensor, state: State | None, puzzle_ids: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """Embed (B, L) tokens and run the family's schedule once: (x (B, P + L, D), new state)."""
        B, L = tokens.shape
        x = self.embed(tokens, puzzle_ids)  # (B, P + L, D)
        if state is None:
            state = self.init_state(B, L)
        calls = self.schedule(x)
        state = run_schedule(calls, state, grad_steps(self.grad_mode, len(calls), self.calls_per_cycle, self.truncate_steps))
        return x, state

    def heads(self, state: State, aux_loss: torch.Tensor | None = None) -> SegmentOutput:
        """Answer and halting heads on the state after a segment."""
        y = self.readout(state)  # (B, P + L, D)
        halt_logits, q_logits = self.halt_head.logits(y, self.prefix)  # (B,), (B, 2) or None
        logits = self.head(y[:, self.prefix :])  # (B, L, V): the answer positions
        return SegmentOutput(state=state, logits=logits, halt_logits=halt_logits, q_logits=q_logits, aux_loss=aux_loss)
