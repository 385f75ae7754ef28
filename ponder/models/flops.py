"""Floating-point operations of one deep-supervision segment, per example, counted
analytically from the model configuration, and datasheet peak rates for model-FLOP
utilisation (MFU = model FLOPs / (time x peak)).

The count follows `torch.utils.flop_counter.FlopCounterMode`, so the two can be
checked against each other (tests/test_flops.py):

    matrix product (linear layers, heads)   2 m n k;  backward 2x (input and weight gradient)
    attention (SDPA)                        QK^T and scores x V over the full L x L, a mask
                                            saves nothing: 4 L^2 D;  backward 2.5x, since the
                                            fused kernels recompute the scores and the
                                            counter counts that product too
    depthwise convolution (`mlp_conv`)      2 L C k;  backward 2x (PyTorch 2.13's counter
                                            prices its weight gradient as a dense conv's,
                                            C times too high; the test corrects that)
    norms, activations, RoPE, residuals,    free
    embedding and puzzle look-ups

Calls that run outside the gradient window (`ponder.solvers.unroll`) have no backward.
Heads that feed no loss in the trainer have no backward either: the halting head with
halting=none, and with PonderNet the answer head on the median-step state (the token
loss reads the per-step logits; the median-step logits only score the answer).
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass

import torch

from ponder.config import ModelConfig
from ponder.models import REGISTRY
from ponder.solvers import grad_steps, solve

# SDPA backward / forward as the counter prices the fused kernels: 5 L x L products
# against 2 (PaLM's model-FLOPs convention, which leaves recomputation out, takes 2)
ATTENTION_BACKWARD = 2.5
SOLVER_HISTORY = inspect.signature(solve).parameters["history"].default  # the attractor leaves it at its default


@dataclass
class SegmentFlops:
    forward: float  # one segment's forward, one example: every network call, the answer head, the halting head
    grad_forward: float  # the part of `forward` that records gradient and is backpropagated (window calls + heads)
    train: float  # one training segment: forward + its backward + any extra work the trainer runs for it
    calls: float  # network calls per segment (depthrec in training: the expected count)


@dataclass(frozen=True)
class _Cost:
    """Forward FLOPs of some work, split by how its backward is priced."""

    dense: float = 0.0  # matrix products and convolutions
    attention: float = 0.0  # SDPA's score and value products

    def __add__(self, other: _Cost) -> _Cost:
        return _Cost(self.dense + other.dense, self.attention + other.attention)

    def __mul__(self, k: float) -> _Cost:
        return _Cost(self.dense * k, self.attention * k)

    __rmul__ = __mul__

    @property
    def forward(self) -> float:
        return self.dense + self.attention

    @property
    def backward(self) -> float:
        return 2 * self.dense + ATTENTION_BACKWARD * self.attention

    @property
    def input_vjp(self) -> float:
        """A vector-Jacobian product with respect to the input only: each product skips
        its weight gradient, but the fused attention backward computes the gradients of
        q, k and v together whatever is asked of it."""
        return self.dense + ATTENTION_BACKWARD * self.attention


def swiglu_inner(width: int, expansion: float, multiple: int) -> int:
    """The inner width `ponder.nn.blocks.SwiGLU` gives a layer of `width` features."""
    return int(math.ceil(round(expansion * width * 2 / 3) / multiple) * multiple)


def network_call(cfg: ModelConfig, seq_len: int) -> _Cost:
    """One application of a network (`layers` blocks) to one example."""
    L, D = seq_len, cfg.hidden
    inner = swiglu_inner(D, cfg.expansion, cfg.mlp_multiple)
    channel = 6 * L * D * inner + 2 * L * inner * cfg.mlp_conv  # gate_up (D -> 2 inner), down; depthwise conv
    if cfg.mixer == "attention":
        block = _Cost(8 * L * D * D + channel, 4 * L * L * D)  # qkv (D -> 3D) and out; QK^T and scores x V
    elif cfg.mixer == "mlp":  # SwiGLU across the sequence: D rows of width L
        block = _Cost(6 * D * L * swiglu_inner(L, cfg.expansion, cfg.mlp_multiple) + channel)
    else:
        raise ValueError(f"mixer: expected 'attention' or 'mlp', got {cfg.mixer!r}")
    return cfg.layers * block


def solver_updates(method: str, iters: int, size: int) -> float:
    """Matrix products of a fixed-point solver's own update (`ponder.solvers.solve`)
    over `iters` evaluations of f on a state of `size` numbers per example: every
    evaluation but the last is followed by one update."""
    m, steps = SOLVER_HISTORY, max(iters - 1, 0)
    if method == "anderson":  # Gram matrix of c residuals (2 c^2 n), then two mixes of c vectors (4 c n)
        return float(sum(2 * c * c * size + 4 * c * size for c in (min(k + 1, m) for k in range(steps))))
    if method in ("broyden", "bad_broyden"):  # H g = -g + U (V^T g): 4 m n per product with H or H^T
        update = (8 if method == "broyden" else 4) * m * size  # H y, and H^T s for the good update
        return float(steps * 4 * m * size + max(steps - 1, 0) * update)  # no update before the second step
    return 0.0  # plain iteration


def expected_depth(mean: float, sigma: float, cap: int | None) -> tuple[float, float]:
    """E[r] and E[min(r, cap)] for depthrec's training depth r = 1 + Poisson(exp(tau)),
    tau ~ N(log(mean) - sigma^2 / 2, sigma) (`sample_iterations`); cap None: no cap.
    E[min(r, cap)] = sum_{j<cap} P(r > j), averaged over tau on a fine grid."""
    if cap is None:
        return 1 + mean, 1 + mean
    total = weights = 0.0
    for i in range(801):  # tau's standard score on [-8, 8]
        x = -8 + i * 0.02
        w = math.exp(-x * x / 2)
        rate = math.exp(math.log(mean) - sigma**2 / 2 + sigma * x)
        pmf, cdf, e = math.exp(-rate), 0.0, 1.0  # e = 1 + sum_{j=1}^{cap-1} P(Poisson >= j)
        for j in range(1, cap):
            cdf += pmf
            e += max(1.0 - cdf, 0.0)
            pmf *= rate / j
        total += w * e
        weights += w
    return 1 + mean, total / weights


@dataclass
class _Tally:
    forward: float = 0.0  # everything the forward pass runs
    grad: _Cost = _Cost()  # the part of it that is backpropagated
    adjoint: float = 0.0  # backward work besides backpropagation: the implicit adjoint solve
    calls: float = 0.0

    def run(self, cost: _Cost, times: float = 1.0, with_grad: float = 0.0) -> None:
        """`times` runs of `cost`, the last `with_grad` of them backpropagated."""
        self.forward += times * cost.forward
        self.grad = self.grad + with_grad * cost


def _segment(cfg: ModelConfig, vocab: int, seq_len: int, random_depth: bool, grad: bool) -> _Tally:
    """One segment as the model runs it: depthrec's depth drawn as in training when
    `random_depth`; autograd on when `grad` (it adds the attractor's differentiable call)."""
    if cfg.family not in REGISTRY:
        raise ValueError(f"family: expected one of {', '.join(REGISTRY)}, got {cfg.family!r}")
    mode = REGISTRY[cfg.family][1] if cfg.grad_mode == "auto" else cfg.grad_mode
    L, D = seq_len + cfg.puzzle_prefix, cfg.hidden  # the networks see the prefix positions too
    net = network_call(cfg, L)
    t = _Tally()

    def window(total: int, per_cycle: int) -> int:  # trailing calls that record gradient
        return grad_steps(mode, total, per_cycle, cfg.truncate_steps) if grad else 0

    if cfg.family in ("trm", "hrm", "attractor"):  # HRM: L and H networks of one size
        per_cycle = cfg.latent_steps + 1
        total = t.calls = cfg.cycles * per_cycle
        t.run(net, total, window(total, per_cycle))
    elif cfg.family == "looped":
        t.calls = cfg.cycles
        g = window(cfg.cycles, 1)
        t.run(net, cfg.cycles, g)
        # the loop rule's per-position halting probability after every step; with
        # loop_halting=none nothing reads it
        t.run(_Cost(2 * L * D), cfg.cycles, g if cfg.loop_halting != "none" else 0)
    elif cfg.family == "depthrec":
        if random_depth and cfg.iteration_sigma > 0:
            cap = None if mode == "full" else grad_steps(mode, 1 << 30, 1, cfg.truncate_steps)
            t.calls, g = expected_depth(cfg.cycles, cfg.iteration_sigma, cap)
            t.run(net, t.calls, g if grad else 0)
        else:
            t.calls = cfg.cycles
            t.run(net, cfg.cycles, window(cfg.cycles, 1))
    elif cfg.family == "transformer":
        t.calls = 1
        t.run(net, 1, window(1, 1))
    else:
        raise ValueError(f"no FLOP count for family {cfg.family!r}")

    if cfg.family == "attractor" and cfg.solver_iters > 0:
        # upper bound: the solve stops an example early on convergence, but f runs on
        # the whole batch until every example has stopped
        n = cfg.solver_iters
        t.run(net, n)
        t.forward += solver_updates(cfg.solver, n, L * D)
        t.calls += n
        if grad:  # the differentiable call at the fixed point (+ the Jacobian penalty's probe)
            tracked = 2 if cfg.jacobian_weight > 0 else 1
            t.run(net, tracked, tracked)
            t.calls += tracked
            if cfg.solver_backward == "implicit":  # the adjoint solve: one VJP per iteration
                t.adjoint = n * net.input_vjp + solver_updates(cfg.solver, n, L * D)

    once = 1 if grad else 0
    answer = _Cost(2 * seq_len * D * vocab)  # every answer position: D -> vocab
    pondernet = cfg.family == "looped" and cfg.loop_halting == "pondernet"
    t.run(answer, 1, 0 if pondernet else once)
    if pondernet:  # the answer head on all K step states (step_logits)
        t.run(answer, cfg.cycles, cfg.cycles * once)
    readout = cfg.halt_readout if cfg.halt_readout != "auto" else ("first" if cfg.puzzle_prefix else "pooled")
    outputs = 2 if cfg.halting == "act_q" else 1
    # one vector (position 0, or act_q's mean state) -> outputs, or (bce pooled) every answer position -> 1
    halt = _Cost(2 * D * outputs if (readout == "first" or cfg.halting == "act_q") else 2 * seq_len * D)
    t.run(halt, 1, once if cfg.halting != "none" else 0)
    return t


def segment_flops(cfg: ModelConfig, vocab: int, seq_len: int, training: bool = True) -> SegmentFlops:
    """FLOPs of one segment of the model `build_model(cfg, vocab, seq_len)` for one example.

    training=True: the segment as the trainer runs it: depthrec's random depth at its
    expected value, the attractor's differentiable call at the fixed point, the backward
    pass, and with halting=act_q the trainer's extra no-grad forward of the next segment
    that bootstraps the Q target (counted in `train`, not in `forward`).
    training=False: as evaluation runs it (depthrec: exactly `cycles` calls; no
    gradient): grad_forward is 0 and train equals forward.

    The attractor is counted at its upper bound: all `solver_iters` iterations of the
    forward solve (plus the solver's own mixing products) and, with the implicit
    backward, all `solver_iters` vector-Jacobian products of the adjoint solve; both
    stop early once every example converges (`out.trace.iterations` says how many ran).
    An evaluation run with another `solver_iters` is counted from a config holding it.
    """
    if not training:
        t = _segment(cfg, vocab, seq_len, random_depth=False, grad=False)
        return SegmentFlops(forward=t.forward, grad_forward=0.0, train=t.forward, calls=t.calls)
    t = _segment(cfg, vocab, seq_len, random_depth=True, grad=True)
    train = t.forward + t.grad.backward + t.adjoint
    if cfg.halting == "act_q":
        train += _segment(cfg, vocab, seq_len, random_depth=True, grad=False).forward
    return SegmentFlops(forward=t.forward, grad_forward=t.grad.forward, train=train, calls=t.calls)


# Datasheet dense (not sparse) tensor-core rates in FLOP/s, per GPU: 16-bit (bf16 and
# fp16 with fp32 accumulation), TF32, and plain fp32. The first pattern that matches
# `torch.cuda.get_device_name` wins, so the specific variants come first.
_PEAKS: tuple[tuple[str, float, float, float], ...] = (
    (r"\bH[12]00 NVL\b", 835.5e12, 417.5e12, 60.0e12),
    (r"\bH100 PCIe\b", 756.0e12, 378.0e12, 51.2e12),
    (r"\bH[12]00\b", 989.4e12, 494.7e12, 66.9e12),  # H100 SXM, H200
    (r"\bA100\b", 312.0e12, 156.0e12, 19.5e12),
    (r"\bL4\b", 121.0e12, 60.0e12, 30.3e12),
    (r"\bRTX 4090\b", 165.2e12, 82.6e12, 82.6e12),
)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense matmul FLOP/s of `device` in `dtype` from the datasheet table above; None
    for a CPU, an unknown GPU or a dtype without an entry. float32 counts at the TF32
    rate when `torch.backends.cuda.matmul.allow_tf32` lets matmuls use it.

    These are the vendors' peak figures, which real kernels do not reach: MFU, model
    FLOPs / (time x peak), is a fraction of that ceiling, not of what is attainable."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, half, tf32, fp32 in _PEAKS:
        if re.search(pattern, name):
            if dtype in (torch.bfloat16, torch.float16):
                return half
            if dtype == torch.float32:
                return tf32 if torch.backends.cuda.matmul.allow_tf32 else fp32
            return None
    return None
