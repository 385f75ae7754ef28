"""Parallel scan for the linear recurrence h_t = A_t h_{t-1} + b_t, t = 1..T, h_0 given.

This is the workhorse of Newton-in-time (`ponder.solvers.newton`): every Newton step
of a nonlinear recurrence is one such linear recurrence. Two forms of A_t:

diagonal   A (..., T, D): elementwise, h_t = A_t * h_{t-1} + b_t
dense      A (..., T, D, D): h_t = A_t @ h_{t-1} + b_t (small D; O(T D^3) work)

Leading dimensions (...) are batch dimensions; b is (..., T, D) and h0 is (..., D).

Algorithm: the maps h -> A_t h + b_t compose associatively,
(A2, b2) o (A1, b1) = (A2 A1, A2 b1 + b2). h0 is folded into the first offset
(b_1 += A_1 h0), after which h_t is the offset of the composition of the first t maps.
The scan is the odd/even recursive one (as in jax.lax.associative_scan): compose
neighbouring pairs (T/2 maps), scan those recursively, then fill in the even positions
with one more map each. Sequential depth is O(log T) tensor operations, total work is
O(T) maps (about 3 multiply-adds per element on the diagonal path, not the
O(T log T) of Hillis-Steele doubling), and any T works (odd lengths carry the unpaired
last element). Only offsets are kept through the recursion: the cumulative products
of A are never formed at full length, so memory stays at a few copies of b.

Stability: intermediate products A_{t+k}...A_t of a contracting recurrence shrink (and
underflow harmlessly to 0); an expanding one (|A| > 1 over long spans) overflows to inf
exactly as the sequential loop would. Callers that can produce expanding A (Newton on
an unstable linearisation) must check for non-finite results; `newton` does.

`chunk` selects a chunked variant instead: a sequential loop inside chunks of length
`chunk` (vectorised over all chunks), the recursive scan across chunk ends, then one
elementwise fix-up. It does fewer, larger elementwise passes, but its Python loop has
`chunk` iterations. Measured on a 2-core CPU (one thread, T = 1e3..1e5, D = 4..64,
chunk = 4..32) the recursive scan was as fast or faster in all but one setting (within
15% there), so it is the default; chunking stays an option for hardware where
launching a kernel is cheap relative to a pass over memory.

Gradients: `linear_recurrence` is a custom autograd Function whose backward solves the
adjoint recurrence lambda_t = g_t + A_{t+1}^T lambda_{t+1} with the same scan run
backwards in time; then dL/db_t = lambda_t, dL/dA_t = lambda_t h_{t-1}^T (diagonal:
lambda_t * h_{t-1}) and dL/dh0 = A_1^T lambda_1. The backward itself uses the Function,
so double backward works too.
"""

from __future__ import annotations

from typing import Any

import torch


def linear_recurrence_sequential(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: h_t = A_t h_{t-1} + b_t by a plain loop over t (diagonal or dense A).

    Obviously correct and differentiable by ordinary autograd; the tests compare the
    scan against it."""
    dense = _check(A, b, h0)
    h = torch.zeros_like(b[..., 0, :]) if h0 is None else h0  # (..., D)
    out = []
    for t in range(b.shape[-2]):
        if dense:
            h = (A[..., t, :, :] @ h[..., None]).squeeze(-1) + b[..., t, :]
        else:
            h = A[..., t, :] * h + b[..., t, :]
        out.append(h)
    return torch.stack(out, dim=-2)  # (..., T, D)


def linear_recurrence(
    A: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """Parallel-scan solution h (..., T, D) of h_t = A_t h_{t-1} + b_t.

    A is (..., T, D) (diagonal) or (..., T, D, D) (dense); b is (..., T, D); h0 is
    (..., D), zeros if None. `chunk` (diagonal only) picks the chunked variant with that
    chunk length; None is the recursive scan. Differentiable w.r.t. A, b and h0 through
    the reverse-scan adjoint."""
    dense = _check(A, b, h0)
    if chunk is not None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 or None, got {chunk}")
        if dense:
            raise ValueError("chunk: the chunked scan supports diagonal A only; pass chunk=None for dense A")
    if h0 is None:
        h0 = torch.zeros_like(b[..., 0, :])  # (..., D)
    return _LinearRecurrence.apply(A, b, h0, chunk)


def adjoint_recurrence(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """lambda (..., T, D) with lambda_T = g_T and lambda_t = g_t + A_{t+1}^T lambda_{t+1}.

    The backward-in-time recurrence of reverse-mode differentiation through
    h_t = A_t h_{t-1} + b_t: given g = dL/dh, lambda = dL/db. Solved with the same
    scan on time-reversed, transposed, shifted A. Differentiable."""
    dense = _check(A, g, None)
    # A_{t+1} at position t; the last position's map never acts (lambda_{T+1} = 0)
    if dense:
        shifted = torch.cat([A[..., 1:, :, :], torch.zeros_like(A[..., :1, :, :])], dim=-3)  # (..., T, D, D)
        reversed_a = shifted.flip(-3).transpose(-1, -2)
    else:
        shifted = torch.cat([A[..., 1:, :], torch.zeros_like(A[..., :1, :])], dim=-2)  # (..., T, D)
        reversed_a = shifted.flip(-2)
    lam = linear_recurrence(reversed_a, g.flip(-2))  # (..., T, D) in reversed time
    return lam.flip(-2)


class _LinearRecurrence(torch.autograd.Function):
    """Scan forward, reverse-scan adjoint backward."""

    @staticmethod
    def forward(ctx: Any, A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, chunk: int | None) -> torch.Tensor:
        h = _solve(A, b, h0, chunk)  # (..., T, D)
        ctx.save_for_backward(A, h0, h)
        return h

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        A, h0, h = ctx.saved_tensors
        dense = A.dim() == h.dim() + 1
        lam = adjoint_recurrence(A, g)  # (..., T, D)
        h_prev = torch.cat([h0[..., None, :], h[..., :-1, :]], dim=-2)  # (..., T, D)
        grad_a = grad_b = grad_h0 = None
        if ctx.needs_input_grad[0]:
            grad_a = lam[..., :, None] * h_prev[..., None, :] if dense else lam * h_prev
        if ctx.needs_input_grad[1]:
            grad_b = lam
        if ctx.needs_input_grad[2]:
            if dense:
                grad_h0 = (A[..., 0, :, :].transpose(-1, -2) @ lam[..., 0, :, None]).squeeze(-1)
            else:
                grad_h0 = A[..., 0, :] * lam[..., 0, :]
        return grad_a, grad_b, grad_h0, None


def block_linear_recurrence(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """h_t = A_t h_{t-1} + b_t for a block-diagonal A_t: H independent k x k blocks.

    A (..., T, k, k, H), b (..., T, k, H), h0 (..., k, H) or None (zeros); returns
    (..., T, k, H). Block j acts on entries (0, j), ..., (k-1, j), so the H units stay
    the contiguous last dimension and each block product is k^3 elementwise operations
    over H (ParaRNN's 2 x 2 blocks for a diagonal LSTM). Same recursive scan as
    `linear_recurrence`; differentiable by ordinary autograd."""
    _check_blocks(A, b, h0)
    b = b.clone()
    if h0 is not None:
        b[..., 0, :, :] += _block_mv(A[..., 0, :, :, :], h0)
    return _scan_blocks(A, b)


def block_adjoint_recurrence(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """lambda (..., T, k, H) with lambda_t = g_t + A_{t+1}^T lambda_{t+1}, blocks as in
    `block_linear_recurrence` (each k x k block transposed)."""
    _check_blocks(A, g, None)
    shifted = torch.cat([A[..., 1:, :, :, :], torch.zeros_like(A[..., :1, :, :, :])], dim=-4)  # (..., T, k, k, H)
    lam = _scan_blocks(shifted.flip(-4).transpose(-3, -2), g.flip(-3))
    return lam.flip(-3)


def _check_blocks(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> None:
    if b.dim() < 3 or b.shape[-3] < 1:
        raise ValueError(f"b: expected shape (..., T, k, H) with T >= 1, got {tuple(b.shape)}")
    want = b.shape[:-2] + b.shape[-2:-1] + b.shape[-2:]
    if A.shape != want:
        raise ValueError(f"A: expected shape {tuple(want)} to match b, got {tuple(A.shape)}")
    if h0 is not None and h0.shape != b.shape[:-3] + b.shape[-2:]:
        raise ValueError(f"h0: expected shape {tuple(b.shape[:-3] + b.shape[-2:])}, got {tuple(h0.shape)}")


def _block_mm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Blockwise product of (..., k, k, H) stacks of blocks."""
    return (x[..., :, :, None, :] * y[..., None, :, :, :]).sum(-3)


def _block_mv(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(..., k, k, H) blocks times (..., k, H) vectors."""
    return (x * v[..., None, :, :]).sum(-2)


def _scan_blocks(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t from h_0 = 0, a (..., T, k, k, H), b (..., T, k, H)."""
    steps = b.shape[-3]
    if steps == 1:
        return b
    a_odd = a[..., 1::2, :, :, :]  # (..., T//2, k, k, H)
    pairs = a_odd.shape[-4]
    pair_a = _block_mm(a_odd, a[..., 0 : 2 * pairs : 2, :, :, :])
    pair_b = _block_mv(a_odd, b[..., 0 : 2 * pairs : 2, :, :]) + b[..., 1::2, :, :]
    odd = _scan_blocks(pair_a, pair_b) if pairs > 1 else pair_b
    out = torch.empty_like(b)
    out[..., 1::2, :, :] = odd
    out[..., 0, :, :] = b[..., 0, :, :]
    rest = (steps - 1) // 2
    if rest:
        out[..., 2::2, :, :] = _block_mv(a[..., 2::2, :, :, :], odd[..., :rest, :, :]) + b[..., 2::2, :, :]
    return out


def _check(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> bool:
    """Validate shapes; True for dense A."""
    if b.dim() < 2:
        raise ValueError(f"b: expected shape (..., T, D), got {tuple(b.shape)}")
    if b.shape[-2] < 1:
        raise ValueError("b: expected at least one time step, got T = 0")
    if A.shape == b.shape:
        dense = False
    elif A.shape == b.shape + b.shape[-1:]:
        dense = True
    else:
        raise ValueError(
            f"A: expected {tuple(b.shape)} (diagonal) or {tuple(b.shape + b.shape[-1:])} (dense) to match b, got {tuple(A.shape)}"
        )
    if h0 is not None and h0.shape != b.shape[:-2] + b.shape[-1:]:
        raise ValueError(f"h0: expected shape {tuple(b.shape[:-2] + b.shape[-1:])}, got {tuple(h0.shape)}")
    return dense


def _solve(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, chunk: int | None, elementwise: bool = False) -> torch.Tensor:
    """The scan without autograd; `elementwise` (dense only) writes the small matrix
    products as broadcast multiply-sums, which torch.compile fuses into one loop per
    level (4x faster than batched matmul at D = 4 on a CPU; see `ponder.solvers.newton`)."""
    dense = A.dim() == b.dim() + 1
    b = b.clone()
    if dense:
        b[..., 0, :] += (A[..., 0, :, :] @ h0[..., None]).squeeze(-1)
        return _scan_dense(A, b, elementwise)
    b[..., 0, :] += A[..., 0, :] * h0
    if chunk is not None:
        return _scan_chunked(A, b, chunk)
    return _scan_diag(A, b)


def _scan_diag(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t from h_0 = 0, a and b (..., T, D); odd/even recursion."""
    steps = b.shape[-2]
    if steps == 1:
        return b
    # pairs (0, 1), (2, 3), ...: the map of two steps
    a_odd = a[..., 1::2, :]  # (..., T//2, D) second of each pair
    pairs = a_odd.shape[-2]
    pair_a = a_odd * a[..., 0 : 2 * pairs : 2, :]
    pair_b = a_odd * b[..., 0 : 2 * pairs : 2, :] + b[..., 1::2, :]
    odd = _scan_diag(pair_a, pair_b) if pairs > 1 else pair_b  # h at positions 1, 3, 5, ...
    out = torch.empty_like(b)  # (..., T, D)
    out[..., 1::2, :] = odd
    out[..., 0, :] = b[..., 0, :]
    rest = (steps - 1) // 2  # even positions 2, 4, ... each one step after an odd one
    if rest:
        out[..., 2::2, :] = a[..., 2::2, :] * odd[..., :rest, :] + b[..., 2::2, :]
    return out


def _scan_dense(a: torch.Tensor, b: torch.Tensor, elementwise: bool = False) -> torch.Tensor:
    """h_t = a_t @ h_{t-1} + b_t from h_0 = 0, a (..., T, D, D), b (..., T, D)."""
    steps = b.shape[-2]
    if steps == 1:
        return b
    mm, mv = (_mm_elementwise, _mv_elementwise) if elementwise else (torch.matmul, _mv)
    a_odd = a[..., 1::2, :, :]  # (..., T//2, D, D)
    pairs = a_odd.shape[-3]
    pair_a = mm(a_odd, a[..., 0 : 2 * pairs : 2, :, :])
    pair_b = mv(a_odd, b[..., 0 : 2 * pairs : 2, :]) + b[..., 1::2, :]
    odd = _scan_dense(pair_a, pair_b, elementwise) if pairs > 1 else pair_b
    out = torch.empty_like(b)
    out[..., 1::2, :] = odd
    out[..., 0, :] = b[..., 0, :]
    rest = (steps - 1) // 2
    if rest:
        out[..., 2::2, :] = mv(a[..., 2::2, :, :], odd[..., :rest, :]) + b[..., 2::2, :]
    return out


def _mv(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(..., D, D) matrices times (..., D) vectors by batched matmul."""
    return (x @ v[..., None]).squeeze(-1)


def _mm_elementwise(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(..., D, D) @ (..., D, D) as a broadcast multiply-sum (fused when compiled)."""
    return (x[..., :, :, None] * y[..., None, :, :]).sum(-2)


def _mv_elementwise(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(..., D, D) @ (..., D) as a broadcast multiply-sum (fused when compiled)."""
    return (x * v[..., None, :]).sum(-1)


def _scan_chunked(a: torch.Tensor, b: torch.Tensor, chunk: int) -> torch.Tensor:
    """Diagonal scan: sequential inside chunks, recursive scan across chunk ends."""
    steps, dim = b.shape[-2], b.shape[-1]
    batch = b.shape[:-2]
    chunks = -(-steps // chunk)
    pad = chunks * chunk - steps
    if pad:  # padded steps (a = 0, b = 0) come last and are dropped
        a = torch.cat([a, a.new_zeros(*batch, pad, dim)], dim=-2)
        b = torch.cat([b, b.new_zeros(*batch, pad, dim)], dim=-2)
    a = a.reshape(*batch, chunks, chunk, dim)  # (..., C, L, D)
    b = b.reshape(*batch, chunks, chunk, dim)
    local = torch.empty_like(b)  # (..., C, L, D) states from a zero start in each chunk
    prod = torch.empty_like(a)  # (..., C, L, D) products of a since the chunk start
    local[..., 0, :] = b[..., 0, :]
    prod[..., 0, :] = a[..., 0, :]
    for k in range(1, chunk):
        local[..., k, :] = a[..., k, :] * local[..., k - 1, :] + b[..., k, :]
        prod[..., k, :] = a[..., k, :] * prod[..., k - 1, :]
    ends = _scan_diag(prod[..., -1, :], local[..., -1, :])  # (..., C, D) true state at each chunk end
    carry = torch.cat([torch.zeros_like(ends[..., :1, :]), ends[..., :-1, :]], dim=-2)  # (..., C, D)
    out = local + prod * carry[..., None, :]
    return out.reshape(*batch, chunks * chunk, dim)[..., :steps, :]
