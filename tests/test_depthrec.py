"""Depth-recurrent family: iteration sampling, truncated gradient, identity bias."""

import torch

from ponder.models import DepthRecurrent
from ponder.models.depthrec import sample_iterations


def tiny(**kw):
    torch.manual_seed(0)
    args = dict(vocab=10, seq_len=9, hidden=16, heads=2, layers=1, cycles=5, truncate_steps=2)
    args.update(kw)
    return DepthRecurrent(**args).double()


def test_iteration_count_is_poisson_lognormal_with_the_asked_mean():
    gen = torch.Generator().manual_seed(0)
    draws = [sample_iterations(6.0, 0.5, gen) for _ in range(4000)]
    assert min(draws) >= 1
    assert abs(sum(draws) / len(draws) - 7.0) < 0.3  # 1 + mean
    assert len(set(draws)) > 5


def test_eval_runs_exactly_cycles_and_matches_reference():
    model = tiny().eval()
    tokens = torch.randint(0, 10, (2, 9))
    out = model(tokens)
    x = model.embed(tokens)
    h = model.init_state(2, 9)[0]
    for _ in range(5):
        h = model.norm(h + model.gamma * model.net(h + x))
    assert torch.allclose(out.state[0], h, atol=1e-12)


def test_training_backprops_through_the_last_k_only():
    model = tiny().train()
    calls = []
    model.net.register_forward_hook(lambda m, i, o: calls.append(o.requires_grad))
    out = model(torch.randint(0, 10, (2, 9)))
    assert calls[-2:] == [True, True] and not any(calls[:-2])
    out.logits.sum().backward()
    assert model.gamma.grad is not None and model.gamma.grad.abs().sum() > 0


def test_zero_layerscale_is_the_identity_update():
    model = tiny(layerscale_init=0.0).eval()
    state = model.init_state(2, 9)
    out = model(torch.randint(0, 10, (2, 9)), state)
    assert torch.allclose(out.state[0], model.norm(state[0]), atol=1e-12)
