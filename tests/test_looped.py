"""Looped Transformer: per-position ACT against a scalar reference; SCORE's update."""

import torch

from ponder.models import LoopedTransformer
from ponder.models.halting import ACT_EPS, act_combine


def act_reference(states, probs):
    """Graves's ACT written per position with Python scalars."""
    B, L, D = states[0].shape
    K = len(states)
    out = torch.zeros(B, L, D, dtype=states[0].dtype)
    ponder = torch.zeros(B, L, dtype=states[0].dtype)
    for b in range(B):
        for i in range(L):
            total = 0.0
            for k in range(K):
                p = probs[k][b, i]
                if total + p >= 1 - ACT_EPS or k == K - 1:
                    remainder = 1 - total
                    out[b, i] = out[b, i] + remainder * states[k][b, i]
                    ponder[b, i] = (k + 1) + remainder
                    break
                out[b, i] = out[b, i] + p * states[k][b, i]
                total = total + p
    return out, ponder


def test_act_combine_matches_reference_with_gradients():
    torch.manual_seed(0)
    K, B, L, D = 5, 2, 7, 3
    states = [torch.randn(B, L, D, dtype=torch.float64, requires_grad=True) for _ in range(K)]
    logits = torch.randn(K, B, L, dtype=torch.float64, requires_grad=True)
    probs = list(torch.sigmoid(logits))
    fast = act_combine(states, probs)
    slow = act_reference(states, probs)
    for a, b in zip(fast, slow):
        assert torch.allclose(a, b, atol=1e-12)
    g_out = torch.randn(B, L, D, dtype=torch.float64)
    g_pond = torch.randn(B, L, dtype=torch.float64)
    gf = torch.autograd.grad((fast[0] * g_out).sum() + (fast[1] * g_pond).sum(), [logits, *states], retain_graph=True, materialize_grads=True)
    gs = torch.autograd.grad((slow[0] * g_out).sum() + (slow[1] * g_pond).sum(), [logits, *states], materialize_grads=True)
    for a, b in zip(gf, gs):
        assert torch.allclose(a, b, atol=1e-10)
    # Positions halt at different steps, so the test covers the remainder path.
    assert len(set(fast[1].floor().flatten().tolist())) > 1


def tiny_looped(**kw):
    torch.manual_seed(0)
    args = dict(vocab=10, seq_len=9, hidden=16, heads=2, layers=1, cycles=4)
    args.update(kw)
    return LoopedTransformer(**args).double()


def test_ponder_cost_has_gradient():
    model = tiny_looped()
    with torch.no_grad():
        model.act_head.weight.normal_(0, 0.5)
        model.act_head.bias.fill_(0.0)
    out = model(torch.randint(0, 10, (3, 9)))
    assert out.aux_loss.shape == (3,) and (out.aux_loss > 0).all()
    w, b = torch.autograd.grad(out.aux_loss.sum(), [model.act_head.weight, model.act_head.bias])
    assert w.abs().sum() > 0 and b.abs().sum() > 0


def test_forward_matches_unrolled_reference():
    model = tiny_looped()
    with torch.no_grad():
        model.act_head.weight.normal_(0, 0.5)
    tokens = torch.randint(0, 10, (2, 9))
    out = model(tokens)
    x = model.embed(tokens)
    h = model.init_state(2, 9)[0]
    states, probs = [], []
    for _ in range(model.cycles):
        h = model.net(h + x)
        states.append(h)
        probs.append(torch.sigmoid(model.act_head(h).squeeze(-1)))
    y, ponder = act_reference(states, probs)
    assert torch.allclose(out.state[0], y, atol=1e-12)
    assert torch.allclose(out.aux_loss, model.act_head.cost * ponder.mean(1), atol=1e-12)
    assert torch.allclose(out.logits, model.head(y), atol=1e-12)


def test_score_update_is_a_convex_step():
    model = tiny_looped(score_dt=0.25, loop_halting="none", cycles=1)
    tokens = torch.randint(0, 10, (2, 9))
    out = model(tokens)
    h0 = model.init_state(2, 9)[0]
    expected = 0.75 * h0 + 0.25 * model.net(h0 + model.embed(tokens))
    assert torch.allclose(out.state[0], expected, atol=1e-12)
    assert out.aux_loss is None


def test_pondernet_distribution_and_loss():
    from ponder.models.halting import geometric_prior, pondernet_distribution
    from ponder.train.losses import expected_token_loss, token_loss

    lam = torch.tensor([0.5, 0.25, 0.9])[:, None, None].double()  # (K=3, 1, 1)
    p = pondernet_distribution(lam)[:, 0, 0]
    assert torch.allclose(p, torch.tensor([0.5, 0.5 * 0.25, 0.5 * 0.75], dtype=torch.float64))
    q = geometric_prior(3, 0.5, p)
    assert torch.allclose(q, torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64))
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 4, 5)
    probs = torch.softmax(torch.randn(3, 2, 4), dim=0)
    labels = torch.randint(0, 5, (2, 4))
    want = sum(
        probs[k] * torch.nn.functional.cross_entropy(logits[k].transpose(1, 2), labels, reduction="none") for k in range(3)
    ).mean(dim=1)
    assert torch.allclose(expected_token_loss(logits, probs, labels), want, atol=1e-6)
    assert torch.allclose(token_loss(logits[0], labels), torch.nn.functional.cross_entropy(logits[0].transpose(1, 2), labels, reduction="none").mean(1))


def test_pondernet_model_answers_at_the_median_step():
    model = tiny_looped(loop_halting="pondernet")
    with torch.no_grad():
        model.act_head.weight.normal_(0, 0.5)
    out = model(torch.randint(0, 10, (2, 9)))
    K = model.cycles
    assert out.step_logits.shape == (K, 2, 9, 10) and out.step_probs.shape == (K, 2, 9)
    assert torch.allclose(out.step_probs.sum(0), torch.ones(2, 9, dtype=torch.float64))
    stop = (out.step_probs.cumsum(0) >= 0.5).double().argmax(0)
    chosen = out.step_logits.gather(0, stop[None, :, :, None].expand(1, 2, 9, 10))[0]
    assert torch.allclose(out.logits, chosen, atol=1e-12)
    assert (out.aux_loss >= 0).all()
    torch.autograd.grad(out.aux_loss.sum(), model.act_head.weight)
