"""TRM and HRM gradient modes against a slow, fully unrolled reference."""

import pytest
import torch

from ponder.models import HRM, TRM
from ponder.solvers import grad_steps, run_schedule


def tiny(cls, **kw):
    torch.manual_seed(0)
    args = dict(vocab=10, seq_len=9, hidden=16, heads=2, layers=1, latent_steps=2, cycles=3)
    args.update(kw)
    return cls(**args).double()


def reference_segment(model, tokens, state, grad_last):
    """Every network call written out with gradient on; the state is detached right
    before the last `grad_last` calls, which is what running the others without
    gradient means for every parameter and for the input."""
    x = model.embed(tokens)
    y, z = state
    answer_net = model.answer_net if model.answer_net is not None else model.net
    total = model.cycles * (model.latent_steps + 1)
    k = 0
    for _ in range(model.cycles):
        for _ in range(model.latent_steps):
            if k == total - grad_last:
                y, z = y.detach(), z.detach()
            z = model.net(z + y + x)
            k += 1
        if k == total - grad_last:
            y, z = y.detach(), z.detach()
        y = answer_net(y + z)
        k += 1
    return model.head(y), (y, z)


CASES = [
    (TRM, "last_cycle", 1),
    (TRM, "full", 1),
    (TRM, "one_step", 1),
    (TRM, "truncated", 4),
    (HRM, "one_step", 1),
    (HRM, "last_cycle", 1),
    (HRM, "truncated", 1),
    (HRM, "full", 1),
]


@pytest.mark.parametrize("cls, mode, truncate", CASES)
def test_segment_matches_unrolled_reference(cls, mode, truncate):
    model = tiny(cls, grad_mode=mode, truncate_steps=truncate)
    tokens = torch.randint(0, 10, (3, 9))
    state = model.init_state(3, 9)
    out = model(tokens, state)
    grad_last = grad_steps(mode, 9, 3, truncate)
    ref_logits, ref_state = reference_segment(model, tokens, state, grad_last)
    assert torch.allclose(out.logits, ref_logits, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(out.state, ref_state))
    g = torch.randn_like(ref_logits)
    names, params = zip(*model.named_parameters())
    fast = torch.autograd.grad(out.logits, params, g, allow_unused=True)
    slow = torch.autograd.grad(ref_logits, params, g, allow_unused=True)
    for name, a, b in zip(names, fast, slow):
        if b is None:
            assert a is None, name
        else:
            assert a is not None and torch.allclose(a, b, atol=1e-10), name


def test_which_parameters_receive_gradient():
    # HRM, gradient through the last call only (the H update): L and the input get none.
    model = tiny(HRM, grad_mode="truncated", truncate_steps=1)
    model(torch.randint(0, 10, (2, 9))).logits.sum().backward()
    assert all(p.grad is None for p in model.net.parameters())
    assert all(p.grad is None for p in model.embed.parameters())
    assert all(p.grad is not None for p in model.answer_net.parameters())
    # HRM's one-step rule: both modules and the input embedding get gradient.
    model = tiny(HRM)
    model(torch.randint(0, 10, (2, 9))).logits.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("halt_head"))


def test_no_grad_calls_record_no_graph():
    model = tiny(TRM, cycles=4)
    calls = []
    model.net.register_forward_hook(lambda m, i, o: calls.append(o.requires_grad))
    model(torch.randint(0, 10, (2, 9)))
    per_cycle = model.latent_steps + 1
    assert calls == [False] * (3 * per_cycle) + [True] * per_cycle


def test_run_schedule_counts_and_validates():
    seen = []

    def step(s):
        seen.append(torch.is_grad_enabled())
        return s + 1

    assert run_schedule([step] * 5, 0, 2) == 5
    assert seen == [False, False, False, True, True]
    with pytest.raises(ValueError):
        run_schedule([step] * 2, 0, 3)
    with pytest.raises(ValueError, match="gradient mode"):
        grad_steps("sometimes", 4, 2)


def test_segments_carry_state():
    model = tiny(TRM)
    tokens = torch.randint(0, 10, (2, 9))
    first = model(tokens)
    second = model(tokens, tuple(s.detach() for s in first.state))
    assert not torch.allclose(first.logits, second.logits)
    assert second.halt_logits.shape == (2,)


def test_early_exit_row_equals_running_it_alone():
    from ponder.eval.evaluate import first_halt, run_early_exit, run_segments

    model = tiny(TRM).eval()
    with torch.no_grad():  # make some rows halt early: a bias between "never" and "always"
        model.halt_head.bias.fill_(0.0)
        model.halt_head.weight.normal_(0, 0.5)
    tokens = torch.randint(0, 10, (12, 9))
    preds, used = run_early_exit(model, tokens, max_segments=5, batch_size=12)
    assert 1 <= used.min() and used.max() <= 5 and len(set(used.tolist())) > 1
    for i in range(12):
        alone, alone_used = run_early_exit(model, tokens[i : i + 1], max_segments=5)
        assert torch.equal(alone[0], preds[i]) and alone_used[0] == used[i]
    # The per-segment record gives the same halting answers as the real early exit.
    record = run_segments(model, tokens, 5)
    stop = first_halt(record.halts)
    assert torch.equal(stop + 1, used)
    assert torch.equal(record.preds[torch.arange(12), stop], preds)


def test_convergence_exit_row_equals_running_it_alone():
    """Exit on state change below a tolerance: rows leave at different segments, each
    with the answer it gets alone, and the per-segment record agrees."""
    from ponder.eval.evaluate import first_true, run_early_exit, run_segments, state_change

    model = tiny(TRM).eval()
    tokens = torch.randint(0, 10, (12, 9))
    changes = run_segments(model, tokens, 6).changes
    assert changes.shape == (12, 6) and (changes >= 0).all()
    tol = float(changes[:, 1:].median())  # some rows settle earlier than others
    preds, used = run_early_exit(model, tokens, max_segments=6, halting=False, exit_tol=tol)
    assert len(set(used.tolist())) > 1
    for i in range(12):
        alone, alone_used = run_early_exit(model, tokens[i : i + 1], max_segments=6, halting=False, exit_tol=tol)
        assert torch.equal(alone[0], preds[i]) and alone_used[0] == used[i]
    record = run_segments(model, tokens, 6).preds
    stop = first_true(changes < tol)
    assert torch.equal(stop + 1, used)
    assert torch.equal(record[torch.arange(12), stop], preds)
    # the measure itself: a direct relative norm for a one-latent state
    old, new = (torch.ones(2, 3, 4),), (torch.ones(2, 3, 4) * torch.tensor([1.0, 2.0])[:, None, None],)
    assert torch.allclose(state_change(old, new), torch.tensor([0.0, 0.5]))


@pytest.mark.parametrize("cls", [TRM, HRM])
def test_pre_norm_state_keeps_its_scale_over_segments(cls):
    """Pre-norm blocks leave the residual stream unnormalised; a recurrent model feeds
    each call's output into the next, so without the network's output norm the state
    would grow with every call (TRM's y and z add up like Fibonacci numbers)."""
    model = tiny(cls, norm="pre")
    tokens = torch.randint(0, 10, (3, 9))
    state, scales = None, []
    with torch.no_grad():
        for _ in range(8):
            state = model(tokens, state).state
            scales.append(max(s.pow(2).mean(-1).sqrt().max().item() for s in state))  # largest per-position RMS
    assert max(scales) < 1.01 and min(scales) > 0.99
    model.net.out_norm = None  # what the blocks alone would give
    state = None
    with torch.no_grad():
        for _ in range(8):
            state = model(tokens, state).state
    assert max(s.pow(2).mean(-1).sqrt().max().item() for s in state) > 10


def test_latent_init_std_scales_the_initial_latents_only():
    """latent_init_std scales the same draws (so every other parameter is unchanged);
    at 0 TRM's first call sees the embedded input alone."""
    base, zero = tiny(TRM), tiny(TRM, latent_init_std=0.0)
    half = tiny(TRM, latent_init_std=0.5)
    assert all(torch.equal(p, q) for p, q in zip(base.parameters(), zero.parameters()))
    torch.testing.assert_close(half.latent_init, 0.5 * base.latent_init)
    assert zero.latent_init.abs().max() == 0
    tokens = torch.randint(0, 10, (2, 9))
    y, z = zero.init_state(2, 9)
    x = zero.embed(tokens)
    torch.testing.assert_close(zero.net(z + y + x), zero.net(x))
    with pytest.raises(ValueError, match="latent_init_std"):
        tiny(TRM, latent_init_std=-1.0)
    from ponder.config import build_config, parse_overrides
    from ponder.errors import PonderInputError

    with pytest.raises(PonderInputError, match="model.latent_init_std"):
        build_config(overrides=parse_overrides(["model.latent_init_std=-0.5"]))
