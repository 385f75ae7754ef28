import math

import torch

from ponder.config import TrainConfig
from ponder.train.losses import stablemax_log_probs, token_loss
from ponder.train.optim import AdamATan2, lr_at


def test_adam_atan2_matches_scalar_reference():
    torch.manual_seed(0)
    p = torch.randn(5, dtype=torch.float64, requires_grad=True)
    opt = AdamATan2([p], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    ref = p.detach().clone().tolist()
    m = [0.0] * 5
    v = [0.0] * 5
    for t in range(1, 6):
        grads = torch.randn(5, dtype=torch.float64)
        p.grad = grads.clone()
        opt.step()
        for i, g in enumerate(grads.tolist()):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.95 * v[i] + 0.05 * g * g
            ref[i] *= 1 - 0.01 * 0.1
            mh, vh = m[i] / (1 - 0.9**t), v[i] / (1 - 0.95**t)
            ref[i] -= 0.01 * math.atan2(mh, math.sqrt(vh))  # a = 1, as the HRM/TRM optimizer kernel
    assert torch.allclose(p.detach(), torch.tensor(ref, dtype=torch.float64), atol=1e-12)


def test_stablemax_matches_definition():
    logits = torch.tensor([[[-2.0, 0.0, 3.0]]])
    s = [1 / (1 + 2.0), 1.0, 4.0]
    expected = torch.tensor([math.log(v / sum(s)) for v in s], dtype=torch.float64)
    assert torch.allclose(stablemax_log_probs(logits)[0, 0], expected)
    loss = token_loss(logits, torch.tensor([[2]]), "stablemax")
    assert math.isclose(loss.item(), -expected[2].item(), rel_tol=1e-6)
    ce = token_loss(logits, torch.tensor([[2]]), "ce")
    assert math.isclose(ce.item(), -torch.log_softmax(logits[0, 0], -1)[2].item(), rel_tol=1e-6)


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, lr_warmup=10, steps=110, lr_min_ratio=0.1)
    assert lr_at(0, cfg) == 0.1 and lr_at(9, cfg) == 1.0
    assert math.isclose(lr_at(110, cfg), 0.1)
    assert math.isclose(lr_at(60, cfg), 0.55)
    cfg.lr_schedule = "constant"
    assert lr_at(100, cfg) == 1.0


def test_act_q_loss_matches_definition():
    from ponder.models.halting import act_q_loss

    def bce(logit, target):
        p = 1 / (1 + math.exp(-logit))
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    q = torch.tensor([[0.3, -0.2], [-1.0, 2.0]])
    nxt = torch.tensor([[1.5, 0.5], [-0.5, 0.7]])
    correct = torch.tensor([True, False])
    got = act_q_loss(q, correct, nxt, is_last=False)
    want = [bce(0.3, 1) + bce(-0.2, sig(1.5)), bce(-1.0, 0) + bce(2.0, sig(0.7))]
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    last = act_q_loss(q, correct, nxt, is_last=True)
    want = [bce(0.3, 1) + bce(-0.2, sig(1.5)), bce(-1.0, 0) + bce(2.0, sig(-0.5))]
    assert torch.allclose(last, torch.tensor(want), atol=1e-6)


def test_sparse_sign_sgd_matches_dense_reference():
    """Only the rows looked up in the batch move: decayed, then stepped by the sign of
    their summed gradient (a repeated id counts once); other rows are untouched."""
    from ponder.train.optim import SparseSignSGD

    torch.manual_seed(0)
    table = torch.nn.Embedding(6, 4, sparse=True).double()
    dense = torch.nn.Embedding(6, 4).double()
    dense.weight.data.copy_(table.weight.data)
    before = table.weight.detach().clone()
    ids = torch.tensor([1, 3, 3, 5])
    target = torch.randn(4, 4, dtype=torch.float64)
    for module in (table, dense):
        ((module(ids) - target) ** 2).sum().backward()
    SparseSignSGD(table.parameters(), lr=0.01, weight_decay=0.5).step()
    expected = before.clone()
    for row in (1, 3, 5):
        expected[row] = before[row] * (1 - 0.01 * 0.5) - 0.01 * dense.weight.grad[row].sign()
    assert torch.equal(table.weight.detach(), expected)
    assert torch.equal(table.weight[[0, 2, 4]], before[[0, 2, 4]])


def test_ignored_positions_are_neither_trained_nor_scored():
    from ponder.tasks.grids import IGNORE
    from ponder.train.losses import answer_correct, expected_token_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (3, 5))
    labels[0, 1:] = IGNORE
    labels[2, :2] = IGNORE
    for kind in ("ce", "stablemax"):
        loss = token_loss(logits, labels, kind)  # (B,)
        for b in range(3):
            keep = labels[b] != IGNORE
            alone = token_loss(logits[b : b + 1, keep], labels[b : b + 1, keep], kind)
            assert torch.allclose(loss[b], alone[0], atol=1e-6)
        grad, = torch.autograd.grad(loss.sum(), logits)
        assert (grad[0, 1:] == 0).all() and (grad[2, :2] == 0).all()
    probs = torch.softmax(torch.randn(2, 3, 5), dim=0)  # (K, B, L)
    steps = torch.stack([logits.detach(), logits.detach()])
    assert torch.allclose(expected_token_loss(steps, probs, labels), token_loss(logits.detach(), labels), atol=1e-6)
    preds = torch.where(labels == IGNORE, 0, labels)
    preds[1, 0] = (labels[1, 0] + 1) % 7
    assert answer_correct(preds, labels).tolist() == [True, False, True]


def test_adam_atan2_foreach_equals_per_parameter_reference():
    """The multi-tensor step against the plain per-parameter loop, several parameters of
    different shapes and one without a gradient on some steps."""
    torch.manual_seed(1)
    shapes = [(4, 3), (7,), (2, 2, 2)]
    fast = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    slow = [p.detach().clone() for p in fast]
    opt = AdamATan2(fast, lr=0.02, betas=(0.9, 0.95), weight_decay=0.1)
    m = [torch.zeros_like(p) for p in slow]
    v = [torch.zeros_like(p) for p in slow]
    t = [0] * len(slow)
    for step in range(6):
        for i, p in enumerate(fast):
            p.grad = None if (i == 1 and step % 2) else torch.randn_like(p)
        opt.step()
        for i, p in enumerate(slow):
            g = fast[i].grad
            if g is None:
                continue
            t[i] += 1
            m[i].lerp_(g, 0.1)
            v[i].lerp_(g.square(), 0.05)
            p.mul_(1 - 0.02 * 0.1)
            p.add_(torch.atan2(m[i] / (1 - 0.9 ** t[i]), (v[i] / (1 - 0.95 ** t[i])).sqrt()), alpha=-0.02)
    for a, b in zip(fast, slow):
        assert torch.allclose(a.detach(), b, rtol=0, atol=1e-14), float((a.detach() - b).abs().max())


def test_ema_follows_definition():
    from ponder.train.ema import EMA

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, 0.9)
    shadow = [p.detach().clone() for p in model.parameters()]
    for t in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema.update(model)
        decay = min(0.9, (1 + t) / (10 + t))
        shadow = [s + (1 - decay) * (p.detach() - s) for s, p in zip(shadow, model.parameters())]
    for a, b in zip(ema.model.parameters(), shadow):
        assert torch.allclose(a, b, atol=1e-6)


def test_ema_without_ramp_is_constant_decay():
    """The TRM code's EMA: shadow = 0.999 shadow + 0.001 weights from the first update."""
    from ponder.train.ema import EMA

    model = torch.nn.Linear(2, 1)
    ema = EMA(model, 0.9, ramp=False)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for a, s in zip(ema.model.parameters(), start):
        assert torch.allclose(a, s + 0.1 * 1.0)


def test_decay_vectors_puts_every_parameter_in_the_decayed_group():
    from ponder.train.optim import build_optimizer

    model = torch.nn.Linear(3, 2)
    assert [len(g["params"]) for g in build_optimizer(model, TrainConfig()).param_groups] == [1, 1]
    groups = build_optimizer(model, TrainConfig(decay_vectors=True)).param_groups
    assert len(groups[0]["params"]) == 2 and groups[0]["weight_decay"] > 0 and not groups[1]["params"]
