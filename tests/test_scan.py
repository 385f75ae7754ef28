"""Parallel scan for h_t = A_t h_{t-1} + b_t against the plain loop: values and gradients."""

from __future__ import annotations

import pytest
import torch

from ponder.solvers.scan import adjoint_recurrence, linear_recurrence, linear_recurrence_sequential

BATCH, DIM = 2, 3
LENGTHS = [1, 2, 7, 33]


def make(steps: int, dense: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random A (some |A| > 1, so growth is exercised too), b, h0 in float64, requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    if dense:
        a = torch.randn(BATCH, steps, DIM, DIM, generator=gen, dtype=torch.float64) * 0.5
    else:
        a = torch.rand(BATCH, steps, DIM, generator=gen, dtype=torch.float64) * 2.2 - 1.1
    b = torch.randn(BATCH, steps, DIM, generator=gen, dtype=torch.float64)
    h0 = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64)
    return a.requires_grad_(), b.requires_grad_(), h0.requires_grad_()


@pytest.mark.parametrize(("dense", "chunk"), [(False, None), (False, 3), (True, None)], ids=["diagonal", "chunked", "dense"])
@pytest.mark.parametrize("steps", LENGTHS)
def test_scan_matches_loop_values_and_gradients(steps: int, dense: bool, chunk: int | None) -> None:
    a, b, h0 = make(steps, dense, seed=steps)
    weights = torch.randn(BATCH, steps, DIM, dtype=torch.float64)
    ref = linear_recurrence_sequential(a, b, h0)
    out = linear_recurrence(a, b, h0, chunk=chunk)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    ref_grads = torch.autograd.grad((ref * weights).sum(), [a, b, h0])
    out_grads = torch.autograd.grad((out * weights).sum(), [a, b, h0])
    for got, want in zip(out_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_scan_default_h0_and_extra_batch_dims() -> None:
    a, b, _ = make(9, dense=False)
    a4, b4 = a.detach()[None].expand(4, -1, -1, -1), b.detach()[None].expand(4, -1, -1, -1)  # (4, B, T, D)
    ref = linear_recurrence_sequential(a4, b4)
    torch.testing.assert_close(linear_recurrence(a4, b4), ref, rtol=0, atol=1e-12)


def test_adjoint_recurrence_is_the_transposed_backward_loop() -> None:
    a, _, _ = make(11, dense=True)
    a = a.detach()
    g = torch.randn(BATCH, 11, DIM, dtype=torch.float64)
    lam = torch.zeros(BATCH, DIM, dtype=torch.float64)
    want = []
    for t in reversed(range(11)):  # lambda_t = g_t + A_{t+1}^T lambda_{t+1}
        lam = g[:, t] + (a[:, t + 1].transpose(-1, -2) @ lam[..., None]).squeeze(-1) if t < 10 else g[:, t]
        want.append(lam)
    torch.testing.assert_close(adjoint_recurrence(a, g), torch.stack(want[::-1], dim=1), rtol=0, atol=1e-12)


def test_scan_double_backward() -> None:
    a, b, h0 = make(6, dense=False)
    out = linear_recurrence(a, b, h0)
    ref = linear_recurrence_sequential(a, b, h0)
    (g_out,) = torch.autograd.grad(out.pow(2).sum(), a, create_graph=True)
    (g_ref,) = torch.autograd.grad(ref.pow(2).sum(), a, create_graph=True)
    torch.testing.assert_close(torch.autograd.grad(g_out.sum(), b)[0], torch.autograd.grad(g_ref.sum(), b)[0], rtol=0, atol=1e-10)


def test_long_float32_contracting_is_finite_and_close() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(1, 5000, 4, generator=gen) * 0.99
    b = torch.randn(1, 5000, 4, generator=gen)
    ref = linear_recurrence_sequential(a.double(), b.double())
    for chunk in (None, 64):
        out = linear_recurrence(a, b, chunk=chunk)
        assert torch.isfinite(out).all()
        assert (out.double() - ref).abs().max() < 1e-4


def test_scan_rejects_bad_shapes() -> None:
    b = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="A: expected"):
        linear_recurrence(torch.zeros(2, 5, 4), b)
    with pytest.raises(ValueError, match="h0: expected"):
        linear_recurrence(torch.zeros(2, 5, 3), b, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="chunk"):
        linear_recurrence(torch.zeros(2, 5, 3, 3), b, chunk=2)
