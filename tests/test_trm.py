"""TRM's gradient rule against a slow, fully unrolled reference."""

import pytest
import torch

from ponder.models.trm import TRM
from ponder.solvers import unroll


def tiny_trm(**kw):
    torch.manual_seed(0)
    args = dict(vocab=10, seq_len=9, hidden=16, heads=2, layers=1, latent_steps=2, cycles=3)
    args.update(kw)
    return TRM(**args).double()


def reference_segment(model: TRM, tokens, state, grad_cycles):
    """Every cycle written out with gradient on; the state is detached before the
    last `grad_cycles` cycles, which is what running the others without grad means."""
    x = model.embed(tokens)
    y, z = state
    for c in range(model.cycles):
        if c == model.cycles - grad_cycles:
            y, z = y.detach(), z.detach()
        for _ in range(model.latent_steps):
            z = model.net(z + y + x)
        y = model.net(y + z)
    return model.head(y), (y, z)


@pytest.mark.parametrize("grad_cycles", [1, 2, 3])
def test_segment_matches_unrolled_reference(grad_cycles):
    model = tiny_trm(grad_cycles=grad_cycles)
    tokens = torch.randint(0, 10, (3, 9))
    state = tuple(s.double() for s in model.init_state(3, 9))
    out = model(tokens, state)
    ref_logits, ref_state = reference_segment(model, tokens, state, grad_cycles)
    assert torch.allclose(out.logits, ref_logits, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(out.state, ref_state))
    g = torch.randn_like(ref_logits)
    params = [p for p in model.parameters()]
    fast = torch.autograd.grad(out.logits, params, g, allow_unused=True)
    slow = torch.autograd.grad(ref_logits, params, g, allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), fast, slow):
        if b is None:
            assert a is None or a.abs().max() == 0, name
        else:
            assert torch.allclose(a, b, atol=1e-10), name


def test_no_grad_cycles_record_no_graph():
    model = tiny_trm(cycles=4, grad_cycles=1)
    calls = []
    model.net.register_forward_hook(lambda m, i, o: calls.append(o.requires_grad))
    out = model(torch.randint(0, 10, (2, 9)))
    per_cycle = model.latent_steps + 1
    assert calls == [False] * (3 * per_cycle) + [True] * per_cycle
    # The state after the no-grad cycles is a leaf: gradient stops there.
    out.logits.sum().backward()
    assert all(p.grad is not None for p in model.net.parameters())


def test_unroll_counts_and_validates():
    seen = []

    def step(s):
        seen.append(torch.is_grad_enabled())
        return s + 1

    assert unroll(step, 0, 5, 2) == 5
    assert seen == [False, False, False, True, True]
    with pytest.raises(ValueError):
        unroll(step, 0, 2, 3)


def test_segments_carry_state_and_detach():
    model = tiny_trm()
    tokens = torch.randint(0, 10, (2, 9))
    first = model(tokens)
    second = model(tokens, tuple(s.detach() for s in first.state))
    assert not torch.allclose(first.logits, second.logits)
    assert second.halt_logits.shape == (2,)
