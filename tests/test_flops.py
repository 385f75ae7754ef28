"""The analytic FLOP count of a segment (`ponder.models.flops`) against PyTorch's
`FlopCounterMode` on tiny models of every family.

The counter runs with three formulas of its own replaced, each noted where it is set:
the CPU attention kernel (which it would count as 0) priced like the GPU kernels, and a
convolution backward that respects `groups`."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

import ponder.solvers.implicit as implicit
from ponder.config import ModelConfig
from ponder.models import REGISTRY, build_model
from ponder.models.depthrec import sample_iterations
from ponder.models.flops import expected_depth, peak_flops, segment_flops

torch.set_num_threads(1)
aten = torch.ops.aten
BATCH, VOCAB = 3, 10
TOLERANCE = 0.05


def _conv_backward(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups, output_mask, out_shape=None, **kwargs):
    """Each gradient asked for (input, weight) costs one forward convolution."""
    return conv_flop_count(x, w, grad_out, transposed) * (int(output_mask[0]) + int(output_mask[1]))


COUNTER_FORMULAS = {
    # no formula is registered for the CPU kernel: count it as the CUDA kernels are
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda grad, q, k, v, *args, out_shape=None, **kw: sdpa_backward_flop_count(grad, q, k, v)
    ),
    # the built-in weight-gradient formula drops `groups` (pytorch/pytorch#183405): it
    # counts a depthwise convolution's weight gradient as if the conv were dense
    aten.convolution_backward: _conv_backward,
}


def counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=COUNTER_FORMULAS)


def tiny(family: str, **kw) -> ModelConfig:
    base = dict(family=family, hidden=16, heads=2, layers=1, latent_steps=2, cycles=2)
    return ModelConfig(**{**base, **kw})


# (id, config, seq_len, train): train=False where training draws a random depth
CASES = [
    ("trm", tiny("trm", layers=2), 9, True),
    ("trm-mlp", tiny("trm", mixer="mlp"), 9, True),
    ("trm-conv", tiny("trm", mlp_conv=2, hidden=32, heads=4), 12, True),
    ("trm-halting-none", tiny("trm", halting="none"), 9, True),
    ("trm-halting-act_q", tiny("trm", halting="act_q"), 9, True),
    ("trm-full-grad", tiny("trm", grad_mode="full"), 9, True),
    ("trm-task-mask", tiny("trm", attention_mask="task"), 16, True),
    ("trm-puzzles", tiny("trm", puzzle_embedding=True, positions="learned"), 9, True),
    ("trm-prefix-mlp", tiny("trm", mixer="mlp", positions="none", puzzle_prefix=4), 9, True),
    ("hrm-prefix", tiny("hrm", halting="act_q", puzzle_prefix=1), 9, True),
    ("trm-prefix-pooled", tiny("trm", puzzle_prefix=2, halt_readout="pooled"), 9, True),
    ("hrm", tiny("hrm", halting="act_q"), 9, True),
    ("hrm-mlp", tiny("hrm", mixer="mlp"), 16, True),
    ("looped-act", tiny("looped", cycles=3), 9, True),
    ("looped-pondernet", tiny("looped", cycles=3, loop_halting="pondernet"), 9, True),
    ("looped-none-truncated", tiny("looped", cycles=3, loop_halting="none", grad_mode="truncated", truncate_steps=2), 9, True),
    ("looped-pondernet-mlp", tiny("looped", cycles=2, loop_halting="pondernet", mixer="mlp", grad_mode="one_step"), 12, True),
    ("depthrec-random", tiny("depthrec", cycles=3), 9, False),
    ("depthrec-fixed", tiny("depthrec", cycles=3, iteration_sigma=0.0, truncate_steps=2), 9, True),
    ("depthrec-mlp", tiny("depthrec", cycles=3, iteration_sigma=0.0, mixer="mlp", grad_mode="full"), 9, True),
    # solver_tol=0: no example ever converges, so every iteration runs (checked below)
    ("attractor-anderson-implicit", tiny("attractor", solver_iters=7, solver_tol=0.0), 9, True),
    ("attractor-broyden-phantom", tiny("attractor", solver="broyden", solver_iters=4, solver_tol=0.0, solver_backward="phantom"), 9, True),
    ("attractor-jacobian", tiny("attractor", solver="bad_broyden", solver_iters=4, solver_tol=0.0, jacobian_weight=0.1), 9, True),
    ("attractor-iteration-mlp", tiny("attractor", solver="iteration", solver_iters=3, solver_tol=0.0, mixer="mlp"), 9, True),
    ("attractor-no-solver", tiny("attractor", solver_iters=0), 9, True),
    ("transformer", tiny("transformer", hidden=32, heads=4), 16, True),
    ("transformer-mlp", tiny("transformer", mixer="mlp"), 9, True),
]


def build(cfg: ModelConfig, seq_len: int):
    """The model, a batch of tokens, and the extra forward arguments it needs."""
    torch.manual_seed(0)
    mask = None
    if cfg.attention_mask == "task":  # a sparse structure with the diagonal kept
        mask = (torch.rand(seq_len, seq_len) < 0.3) | torch.eye(seq_len, dtype=torch.bool)
    model = build_model(cfg, VOCAB, seq_len, task_mask=mask, num_puzzles=5 if cfg.puzzle_embedding else 0)
    tokens = torch.randint(0, VOCAB, (BATCH, seq_len))
    ids = torch.randint(0, 5, (BATCH,)) if cfg.puzzle_embedding else None
    return model, tokens, ids


def trainer_loss(cfg: ModelConfig, out) -> torch.Tensor:
    """A scalar reading what the trainer's loss reads: the token loss (PonderNet: the
    per-step logits and the halting distribution), the halting head's output (none:
    nothing), and the family's extra loss."""
    if out.step_logits is not None:
        loss = (out.step_logits.sum(-1) * out.step_probs).sum()
    else:
        loss = out.logits.sum()
    if cfg.halting == "bce":
        loss = loss + out.halt_logits.sum()
    elif cfg.halting == "act_q":
        loss = loss + out.q_logits.sum()
    if out.aux_loss is not None:
        loss = loss + out.aux_loss.sum()
    return loss


def close(measured: float, analytic: float, what: str) -> None:
    assert abs(measured - analytic) <= TOLERANCE * analytic, f"{what}: measured {measured:,.2f} vs analytic {analytic:,.2f} per example"


@pytest.fixture
def solves(monkeypatch):
    """The iteration counts (B,) of every fixed-point solve the attractor runs
    (forward and adjoint), to check that all iterations ran."""
    runs, original = [], implicit.solve

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        runs.append(result.trace.iterations.tolist())
        return result

    monkeypatch.setattr(implicit, "solve", recording)
    return runs


def check_solves(cfg: ModelConfig, runs: list, expected: int) -> None:
    if cfg.family != "attractor" or cfg.solver_iters == 0:
        return
    assert len(runs) == expected, f"{len(runs)} solves ran, expected {expected}"
    assert all(n == cfg.solver_iters for run in runs for n in run), f"solver stopped early: {runs}"


@pytest.mark.parametrize("cfg, seq_len", [pytest.param(c, n, id=name) for name, c, n, _ in CASES])
def test_forward(cfg, seq_len, solves):
    model, tokens, ids = build(cfg, seq_len)
    model.eval()
    with torch.no_grad(), counter() as fc:
        model(tokens, None, ids)
    check_solves(cfg, solves, 1)
    analytic = segment_flops(cfg, VOCAB, seq_len, training=False)
    close(fc.get_total_flops() / BATCH, analytic.forward, "evaluation forward")
    assert analytic.calls == model.calls_per_segment, f"calls: model {model.calls_per_segment} vs analytic {analytic.calls}"


@pytest.mark.parametrize("cfg, seq_len", [pytest.param(c, n, id=name) for name, c, n, train in CASES if train])
def test_training(cfg, seq_len, solves):
    """A training segment in two parts: the forward, then what follows it (the loss's
    backward, the implicit adjoint solve, and with act_q the trainer's no-grad forward
    of the next segment for the Q target)."""
    model, tokens, ids = build(cfg, seq_len)
    model.train()
    analytic = segment_flops(cfg, VOCAB, seq_len, training=True)
    with counter() as fc:
        out = model(tokens, None, ids)
    close(fc.get_total_flops() / BATCH, analytic.forward, "training forward")
    with counter() as fc:
        trainer_loss(cfg, out).backward()
        if cfg.halting == "act_q":
            with torch.no_grad():
                model(tokens, tuple(s.detach() for s in out.state), ids)
    close(fc.get_total_flops() / BATCH, analytic.train - analytic.forward, "backward and extras")
    check_solves(cfg, solves, 1 + (cfg.solver_backward == "implicit") + (cfg.halting == "act_q"))


def test_every_family_is_covered():
    assert {c.family for _, c, _, _ in CASES} == set(REGISTRY)


def test_backward_is_twice_the_recorded_forward_without_attention():
    """Without attention every product's backward is 2x its forward."""
    for family in ("trm", "looped", "transformer"):
        f = segment_flops(tiny(family, mixer="mlp"), VOCAB, 9)
        assert f.train == pytest.approx(f.forward + 2 * f.grad_forward), f"{family}: train {f.train} vs {f.forward} + 2 x {f.grad_forward}"
        assert 0 < f.grad_forward <= f.forward, f"{family}: grad_forward {f.grad_forward} vs forward {f.forward}"


def test_depthrec_expected_depth():
    """The training depth's mean and its mean capped at the gradient window, against
    draws of the sampler itself."""
    torch.manual_seed(0)
    draws = torch.tensor([sample_iterations(4, 0.5) for _ in range(4000)], dtype=torch.float64)
    mean, capped = expected_depth(4, 0.5, cap=3)
    close(float(draws.mean()), mean, "mean depth")
    close(float(draws.clamp(max=3).mean()), capped, "mean depth with gradient")
    cfg = tiny("depthrec", cycles=4, iteration_sigma=0.5, truncate_steps=3)
    close(segment_flops(cfg, VOCAB, 9).calls, 5.0, "expected training calls")  # 1 + Poisson(mean 4)
    assert (calls := segment_flops(cfg, VOCAB, 9, training=False).calls) == 4, f"evaluation calls: {calls} vs 4"


def test_peak_flops_unknown_is_none():
    for dtype in (torch.float32, torch.bfloat16):
        assert (peak := peak_flops(torch.device("cpu"), dtype)) is None, f"CPU {dtype}: {peak} vs None"


@pytest.fixture
def tf32():
    """Sets whether float32 matmuls may use TF32, and restores the setting afterwards."""
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    yield lambda allowed: setattr(matmul, "allow_tf32", allowed)
    matmul.allow_tf32 = before


@pytest.mark.parametrize("name, half, fp32", [
    ("NVIDIA H100 80GB HBM3", 989.4e12, 66.9e12),
    ("NVIDIA H200", 989.4e12, 66.9e12),
    ("NVIDIA H100 PCIe", 756e12, 51.2e12),
    ("NVIDIA A100-SXM4-80GB", 312e12, 19.5e12),
    ("NVIDIA L40S", None, None),
])
def test_peak_flops_table(monkeypatch, tf32, name, half, fp32):
    """The table lookup, with a pretend GPU of that name."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    cuda = torch.device("cuda")
    tf32(False)
    for dtype, expected in ((torch.bfloat16, half), (torch.float32, fp32), (torch.float64, None)):
        assert (peak := peak_flops(cuda, dtype)) == expected, f"{name} {dtype}: {peak} vs {expected}"
    if half is not None:  # TF32 sits between the plain float32 and the 16-bit rate
        tf32(True)
        assert fp32 < (peak := peak_flops(cuda, torch.float32)) < half, f"{name} TF32: {peak} vs ({fp32}, {half})"
