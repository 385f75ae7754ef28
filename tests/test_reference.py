"""ponder computes the reference HRM/TRM models: with the reference code's weights
(converted by `ponder.models.reference.from_reference`), two segments give the logits,
halting values and states the reference code gave, and the second segment's gradients
match, to 1e-5 relative. The fixtures were made once by the public code
(`benchmarks/reference_parity.py fixtures`; each records the command, the reference
commit and the torch version in its metadata); the reference code is not needed here."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ponder.config import RunConfig, apply_values
from ponder.models import build_model
from ponder.models.reference import from_reference

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
TOL = 1e-5


def load(name):
    path = FIXTURES / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return load_file(str(path)), meta


def projections(name, shape):
    """The fixture's random directions for one gradient (as benchmarks/reference_parity.py draws them)."""
    seed = int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**31)
    return torch.randn((4, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("name", ["trm_mlp", "trm_att", "hrm"])
def test_ponder_matches_the_reference_code(name):
    t, meta = load(name)
    cfg = RunConfig()
    apply_values(cfg, {"model": meta["model"]}, f"fixture {name}")
    model = build_model(cfg.model, meta["vocab"], meta["seq_len"], num_puzzles=meta["puzzles"] if cfg.model.puzzle_embedding else 0)
    ref = {k[4:]: v for k, v in t.items() if k.startswith("ref.")}
    model = model.double().train()  # float64 first: the reference's initial states are float64
    model.load_state_dict(from_reference(ref, cfg.model, shared_prefix=meta["puzzles"] == 1), strict=True)
    tokens, ids = t["tokens"], t["ids"] if cfg.model.puzzle_embedding else None
    act_q = cfg.model.halting == "act_q"

    def q_of(out):  # what ponder computes of the reference's (halt, continue) Q values
        return out.q_logits if act_q else out.halt_logits[:, None]

    def q_ref(key):
        return t[key] if act_q else t[key][:, :1]

    with torch.no_grad():
        first = model(tokens, None, ids)
    assert rel(first.logits, t["seg1.logits"][..., 1:]) < TOL  # the PAD logit has no counterpart
    assert rel(q_of(first), q_ref("seg1.q")) < TOL
    second = model(tokens, first.state, ids)
    assert rel(second.logits.detach(), t["seg2.logits"][..., 1:]) < TOL
    assert rel(q_of(second).detach(), q_ref("seg2.q")) < TOL
    y, z = second.state
    assert rel(y.detach(), t["seg2.z_H"]) < TOL and rel(z.detach(), t["seg2.z_L"]) < TOL
    q_cot = t["cot.q"] if act_q else t["cot.q"][:, :1]
    ((second.logits * t["cot.logits"][..., 1:]).sum() + (q_of(second) * q_cot).sum()).backward()
    grads = {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad) for n, p in model.named_parameters() if p.grad is not None}
    expected = {k[5:]: v for k, v in t.items() if k.startswith("grad.")}
    assert set(expected) <= set(grads) and len(expected) >= 8, sorted(set(expected) - set(grads))
    for key, want in expected.items():
        g = grads[key].double()
        got = torch.cat([(projections(key, g.shape) * g).flatten(1).sum(1), g.norm().reshape(1)])
        assert rel(got, want) < TOL, (key, rel(got, want))
    assert meta["reference_commit"] != "unknown"


def test_a_changed_function_is_caught():
    """The same comparison fails for a model that differs only in the mixer's norm axis."""
    t, meta = load("trm_mlp")
    cfg = RunConfig()
    apply_values(cfg, {"model": meta["model"]}, "fixture trm_mlp")
    model = build_model(cfg.model, meta["vocab"], meta["seq_len"]).double()
    model.load_state_dict(from_reference({k[4:]: v for k, v in t.items() if k.startswith("ref.")}, cfg.model), strict=True)
    for block in model.net.blocks:  # normalise over the hidden axis instead of the sequence
        block.forward = lambda h, b=block: b.norm2((hm := b.norm1(h + b.mix(h))) + b.mlp(hm))
    with torch.no_grad():
        assert rel(model(t["tokens"]).logits, t["seg1.logits"][..., 1:]) > 1e-2
