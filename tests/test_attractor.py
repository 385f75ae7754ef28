"""Attractor family: the refinement is a real fixed point, gradients through it match a
long unrolled reference, removing the solver reads the proposal, and it trains end to end."""

import pytest
import torch

from conftest import TINY
from ponder import api
from ponder.models import TRM, Attractor
from ponder.models.base import State


def tiny(**kw):
    torch.manual_seed(0)
    args = dict(vocab=10, seq_len=9, hidden=16, heads=2, layers=1, latent_steps=1, cycles=1, solver_iters=60, solver_tol=1e-7)
    args.update(kw)
    model = Attractor(**args).double()
    with torch.no_grad():  # a contractive attractor, so the fixed point exists and is unique
        for p in model.attractor.parameters():
            p.mul_(0.3)
    return model


def proposal(model: Attractor, tokens: torch.Tensor, state: State | None = None):
    """The TRM backbone written out: (x, y0, z) with gradients everywhere."""
    x = model.embed(tokens)
    y, z = model.init_state(*tokens.shape) if state is None else state
    for _ in range(model.cycles):
        for _ in range(model.latent_steps):
            z = model.net(z + y + x)
        y = model.net(y + z)
    return x, y, z


def test_refined_state_is_a_fixed_point_of_the_attractor():
    model = tiny().eval()
    tokens = torch.randint(0, 10, (3, 9))
    with torch.no_grad():
        out = model(tokens)
        x, y0, _ = proposal(model, tokens)
        y = out.state[0]
        assert torch.allclose(model.attractor(y + y0 + x), y, atol=1e-5)
        assert not torch.allclose(y, y0, atol=1e-3)  # the solve moved the answer state
    assert bool(out.trace.converged.all())


@pytest.mark.parametrize("backward", ["implicit", "phantom"])
def test_gradient_matches_unrolled_reference(backward):
    """Implicit: exact, vs autograd through 200 unrolled attractor steps. Phantom with
    one step: exactly autograd through one step from the detached equilibrium."""
    model = tiny(solver_backward=backward)
    tokens = torch.randint(0, 10, (3, 9))
    target = torch.randint(0, 10, (3, 9))

    def loss_of(logits):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 10), target.reshape(-1))

    loss_of(model(tokens).logits).backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    x, y0, _ = proposal(model, tokens)
    if backward == "implicit":
        u = y0
        for _ in range(200):
            u = model.attractor(u + y0 + x)
    else:
        with torch.no_grad():
            u = y0
            for _ in range(200):
                u = model.attractor(u + y0 + x)
        u = model.attractor(u + y0 + x)
    loss_of(model.head(u)).backward()
    slow = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(fast) == set(slow) and any(n.startswith("attractor.") for n in fast) and any(n.startswith("net.") for n in fast)
    for name in slow:
        err = (fast[name] - slow[name]).norm() / slow[name].norm().clamp_min(1e-30)
        assert err < 1e-6, (name, float(err))


def test_zero_iterations_reads_the_proposal():
    model = tiny(solver_iters=0).eval()
    tokens = torch.randint(0, 10, (2, 9))
    with torch.no_grad():
        out = model(tokens)
        _, y0, z = proposal(model, tokens)
        assert torch.equal(model(tokens, solver_iters=0).logits, out.logits)  # the per-call setting gives the same
        assert model(tokens, solver_iters=3).trace.iterations.max() <= 3
    assert torch.allclose(out.state[0], y0) and torch.allclose(out.state[1], z)
    assert torch.allclose(out.logits, model.head(y0))
    assert out.trace is None
    assert model.calls_per_segment == 2  # the backbone's n + 1 calls, no solver
    assert tiny(solver_iters=5).calls_per_segment == 7


def test_backbone_is_trm():
    """Same seed, same backbone weights: the proposal is exactly TRM's answer state."""
    torch.manual_seed(0)
    trm = TRM(vocab=10, seq_len=9, hidden=16, heads=2, layers=1, latent_steps=1, cycles=1).double()
    model = tiny()
    trm.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("attractor.")})
    tokens = torch.randint(0, 10, (2, 9))
    with torch.no_grad():
        assert torch.allclose(trm(tokens).state[0], proposal(model, tokens)[1])


def test_jacobian_penalty_is_an_aux_loss():
    model = tiny(jacobian_weight=0.1)
    out = model(torch.randint(0, 10, (3, 9)))
    assert out.aux_loss.shape == (3,) and float(out.aux_loss[0].detach()) > 0 and out.aux_loss.requires_grad


def test_proposal_logits_are_the_head_on_the_proposal_in_training_only():
    model = tiny(proposal_weight=0.5)
    tokens = torch.randint(0, 10, (3, 9))
    out = model(tokens)
    _, y0, _ = proposal(model, tokens)
    assert out.proposal_weight == 0.5 and torch.allclose(out.proposal_logits, model.head(y0))
    assert out.proposal_logits.requires_grad
    assert model.eval()(tokens).proposal_logits is None  # nothing extra at test time
    assert tiny()(tokens).proposal_logits is None  # weight 0: none


def test_proposal_loss_is_added_by_the_trainer(tmp_path):
    """The trainer's segment loss is the same plus weight x the proposal's token loss."""
    from ponder.config import build_config, parse_overrides
    from ponder.train.loop import Trainer
    from ponder.train.losses import token_loss

    overrides = TINY + ["model.family=attractor", "model.solver_iters=3", "model.proposal_weight=0.5"]
    t = Trainer(build_config(overrides=parse_overrides(overrides)), tmp_path / "run", progress=False, quiet=True)
    tokens, labels, _ = t.stream.fetch(torch.arange(4), 0, 4)
    torch.manual_seed(0)
    out = t.model(tokens)
    with_proposal = t.segment_loss(out, tokens, labels, None, False)[0]
    proposal_loss = token_loss(out.proposal_logits, labels).mean()
    out.proposal_logits = None
    without = t.segment_loss(out, tokens, labels, None, False)[0]
    assert float(proposal_loss) > 0.1
    assert torch.allclose(with_proposal, without + 0.5 * proposal_loss)


def test_bad_settings():
    with pytest.raises(ValueError, match="solver: expected one of"):
        tiny(solver="newton")
    with pytest.raises(ValueError, match="solver_backward"):
        tiny(solver_backward="unrolled")
    with pytest.raises(ValueError, match="solver_iters"):
        tiny(solver_iters=-1)
    with pytest.raises(ValueError, match="proposal_weight"):
        tiny(proposal_weight=-1.0)


def test_trains_and_evaluates_with_and_without_solver(tmp_path):
    out = tmp_path / "attractor"
    api.train(TINY + ["model.family=attractor", "model.solver_iters=3"], out=str(out), progress=False)
    with_solver = api.evaluate(str(out), segments=2)
    without = api.evaluate(str(out), segments=2, solver_iters=0)
    assert with_solver["solver_iters"] == 3 and without["solver_iters"] == 0
    assert len(without["accuracy_by_segment"]) == 2
