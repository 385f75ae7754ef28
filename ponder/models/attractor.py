"""Attractor model ("Solve the Loop: Attractor Models for Language and Reasoning").

A TRM backbone proposes the answer state; a second small network, the attractor,
refines it by solving for a fixed point instead of running a fixed number of steps:

    y0, z = TRM cycles on (y, z)                     # the proposal (TRM's gradient: last cycle)
    y*    = solve  u = attractor(u + y0 + x)  from u = y0
    logits = head(y*);  the state carried to the next segment is (y*, z)

The solve runs without autograd (`ponder.solvers.solve`: Anderson by default) and stops
per example once the relative residual falls below `solver_tol`, so the number of
iterations is chosen by convergence. Gradients reach the attractor, y0 and x through
one differentiable attractor call at y* by implicit differentiation (an adjoint
fixed-point solve) or a phantom gradient (`ponder.solvers.fixed_point`), so training
memory does not grow with the number of solver iterations. Both need the attractor to
contract near y*; `jacobian_weight` trains it to, with a penalty on the mean squared
singular value of d attractor / du (a Hutchinson estimate of ||J||_F^2 / (L D)).
`proposal_weight` adds, in training, the token loss of the answer head read on the
proposal y0, so that the backbone is trained to land near the answer by itself.

`solver_iters = 0` removes the solver: the heads read the proposal y0 directly. The
paper's "equilibrium internalisation" is the finding that accuracy barely drops then,
because training pulls the proposal close to the equilibrium.
"""

from __future__ import annotations

import torch

from ponder.models.base import SegmentOutput, State
from ponder.models.trm import TRM
from ponder.solvers import BACKWARDS, METHODS, fixed_point


class Attractor(TRM):
    def __init__(
        self,
        vocab: int,
        seq_len: int,
        latent_steps: int = 2,
        cycles: int = 2,
        solver: str = "anderson",
        solver_iters: int = 8,
        solver_tol: float = 1e-3,
        solver_backward: str = "implicit",
        jacobian_weight: float = 0.0,
        proposal_weight: float = 0.0,
        grad_mode: str = "last_cycle",
        **arch,
    ):
        if solver not in METHODS:
            raise ValueError(f"solver: expected one of {', '.join(METHODS)}, got {solver!r}")
        if solver_backward not in BACKWARDS:
            raise ValueError(f"solver_backward: expected one of {', '.join(BACKWARDS)}, got {solver_backward!r}")
        if solver_iters < 0:
            raise ValueError(f"solver_iters must be >= 0, got {solver_iters}")
        if proposal_weight < 0:
            raise ValueError(f"proposal_weight must be >= 0, got {proposal_weight}")
        super().__init__(vocab, seq_len, latent_steps=latent_steps, cycles=cycles, grad_mode=grad_mode, **arch)
        self.solver, self.solver_iters, self.solver_tol = solver, solver_iters, solver_tol
        self.solver_backward, self.jacobian_weight, self.proposal_weight = solver_backward, jacobian_weight, proposal_weight
        self.attractor = self.make_stack()

    @property
    def calls_per_segment(self) -> int:
        """The backbone's network calls plus the solver's, at most (it stops early on
        convergence)."""
        return self.backbone_calls + self.solver_iters

    @calls_per_segment.setter
    def calls_per_segment(self, backbone_calls: int) -> None:  # set by TRM.__init__
        self.backbone_calls = backbone_calls

    def forward(
        self, tokens: torch.Tensor, state: State | None = None, puzzle_ids: torch.Tensor | None = None, solver_iters: int | None = None,
    ) -> SegmentOutput:
        """`solver_iters`: this call's most solver iterations (default: the model's own;
        0 reads the proposal). The solve's trace comes back in `out.trace`."""
        iters = self.solver_iters if solver_iters is None else solver_iters
        if iters < 0:
            raise ValueError(f"solver_iters must be >= 0, got {iters}")
        x, (y0, z) = self.advance(tokens, state, puzzle_ids)  # x, y0, z: (B, L, D)
        if iters == 0:
            return self.heads((y0, z))

        def attract(u: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
            return self.attractor(u + y0 + x)

        eq = fixed_point(
            attract, y0,
            backward=self.solver_backward,
            solver_kwargs=dict(method=self.solver, max_iter=iters, tol=self.solver_tol),
            jacobian_weight=self.jacobian_weight,
        )
        # per state element, so the weight does not depend on L x D: the mean squared
        # singular value of d attract / du, which a contraction keeps below 1
        penalty = None if eq.jacobian_penalty is None else (eq.jacobian_penalty / y0[0].numel()).expand(tokens.shape[0])  # (B,)
        out = self.heads((eq.z, z), aux_loss=penalty)
        out.trace = eq.trace
        if self.training and self.proposal_weight > 0:
            out.proposal_logits = self.heads((y0, z)).logits  # (B, L, V)
            out.proposal_weight = self.proposal_weight
        return out
