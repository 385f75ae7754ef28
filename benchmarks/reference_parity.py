"""ponder beside the public HRM and TRM code: the same weights, the same function, and
the speed of each.

    python benchmarks/reference_parity.py fixtures --trm PATH --hrm PATH --out tests/fixtures/reference
    python benchmarks/reference_parity.py compare --trm PATH --hrm PATH [--threads 2] [--json]

PATH is a checkout of the public code (github.com/SamsungSAILMontreal/TinyRecursiveModels,
github.com/sapientinc/HRM). Neither is a dependency of ponder or of its tests: this
script imports the reference model classes from the checkout (it needs `pydantic` and
`einops`, which those classes import; HRM's attention call is served by a stand-in for
`flash_attn` built on PyTorch's SDPA, which computes the same attention), builds them,
and reads their outputs.

`fixtures` writes, for a tiny TRM with the sequence-MLP mixer, a tiny TRM with attention
(RoPE, a puzzle table) and a tiny HRM: the reference model's weights, an input, the
reference's logits, Q values and states after two segments, and random projections of
the second segment's gradients (what tests/test_reference.py compares ponder with; a
few hundred KB in all). Everything runs in float64, the RMS norms included (the
reference computes them in float32: here the same formula keeps float64), so that what
the fixtures compare is the function, not rounding.

`compare` does the same at the sizes of the paper presets (`trm-mlp-sudoku`,
`trm-sudoku`, `hrm-sudoku`, in their reference configurations): the largest relative
differences of logits, halting values and gradients, in float64 (the function) and in
float32 (as both train: rounding), the parameters by component, and the time per token
of one training call (two segments, forward and backward, float32) of each, interleaved,
median of repeats.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ponder.config import ModelConfig, RunConfig, apply_values  # noqa: E402
from ponder.models import build_model  # noqa: E402
from ponder.models.reference import component_counts, from_reference, reference_arch  # noqa: E402

PROJECTIONS = 4  # random projections of each gradient stored in a fixture
FIXTURES = {
    # name: (family, ponder model keys, seq_len, vocab, puzzle identifiers in the reference table)
    "trm_mlp": ("trm", dict(mixer="mlp", positions="none", puzzle_prefix=16, halting="bce"), 4, 6, 1),
    "trm_att": ("trm", dict(mixer="attention", positions="rope", puzzle_prefix=16, halting="bce", puzzle_embedding=True), 9, 10, 3),
    "hrm": ("hrm", dict(mixer="attention", positions="rope", puzzle_prefix=1, halting="act_q"), 9, 10, 1),
}
TINY = dict(hidden=8, heads=2, layers=2, expansion=4.0, mlp_multiple=256, latent_steps=2, cycles=2)
PAPER = {  # preset -> (its reference's puzzle identifiers)
    "trm-mlp-sudoku": 1,
    "trm-sudoku": 1,
    "hrm-sudoku": 1,
}


# ------------------------------------------------------------------ the reference code

def flash_attn_stand_in() -> types.ModuleType:
    """`flash_attn_func(q, k, v, causal)` on (B, S, H, Dh) tensors through SDPA: what
    HRM's attention calls, for a machine without the flash-attention package."""
    module = types.ModuleType("flash_attn")

    def flash_attn_func(q, k, v, causal=False):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
        return out.transpose(1, 2)

    module.flash_attn_func = flash_attn_func
    return module


def rms_norm_in_input_dtype(hidden_states: torch.Tensor, variance_epsilon: float) -> torch.Tensor:
    """The reference's RMS norm formula, computed in the input's dtype when that is
    float64 (the reference always computes it in float32). Used for the float64
    fixtures only, so that what they compare is the function, not float32 rounding."""
    x = hidden_states.to(torch.promote_types(hidden_states.dtype, torch.float32))
    return (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + variance_epsilon)).to(hidden_states.dtype)


def reference_class(family: str, checkout: Path, exact: bool = False):
    """The reference's ACT model class, imported from a checkout (each repository has a
    top-level `models` package, so the other's is dropped from the import cache first).
    `exact`: its RMS norm keeps float64 (`rms_norm_in_input_dtype`)."""
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        del sys.modules[name]
    sys.modules.setdefault("flash_attn", flash_attn_stand_in())
    sys.path.insert(0, str(checkout))
    try:
        name = "models.hrm.hrm_act_v1" if family == "hrm" else "models.recursive_reasoning.trm"
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(checkout))
    if exact:
        module.rms_norm = rms_norm_in_input_dtype
    return module.HierarchicalReasoningModel_ACTV1 if family == "hrm" else module.TinyRecursiveReasoningModel_ACTV1


def commit(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def model_config(family: str, keys: dict, base: dict) -> ModelConfig:
    cfg = RunConfig()
    apply_values(cfg, {"model": {"family": family, **base, **keys}}, "reference parity")
    return cfg.model


def reference_segments(ref_model, tokens: torch.Tensor, ids: torch.Tensor, cotangent: dict[str, torch.Tensor] | None):
    """Two segments of the reference's inner model from its initial state, the second
    with gradient and, given cotangents, its backward pass. Returns the outputs."""
    inner = ref_model.inner
    batch = {"inputs": tokens + 1, "puzzle_identifiers": ids.to(torch.int32)}  # the reference's tokens: PAD is 0
    B = tokens.shape[0]
    carry = inner.reset_carry(torch.ones(B, dtype=torch.bool), inner.empty_carry(B))
    with torch.no_grad():
        carry, logits1, (halt1, cont1) = inner(carry, batch)
    carry2, logits2, (halt2, cont2) = inner(carry, batch)
    out = {
        "seg1.logits": logits1, "seg1.q": torch.stack([halt1, cont1], -1),
        "seg2.logits": logits2.detach(), "seg2.q": torch.stack([halt2, cont2], -1).detach(),
        "seg2.z_H": carry2.z_H, "seg2.z_L": carry2.z_L,
    }
    if cotangent is not None:
        loss = (logits2 * cotangent["logits"]).sum() + (torch.stack([halt2, cont2], -1) * cotangent["q"]).sum()
        loss.backward()
    return out


def double(ref_model):
    """The reference model in float64. Its puzzle table trains through a buffer that
    requires gradient (`local_weights`); casting makes that buffer a non-leaf, so it is
    made again as a leaf."""
    ref_model = ref_model.double()
    table = getattr(ref_model.inner, "puzzle_emb", None)
    if table is not None:
        table.local_weights = torch.zeros_like(table.local_weights.detach()).requires_grad_(True)
    return ref_model


def reference_grads(ref_model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parameter gradients, and the puzzle table's: the reference trains the rows of the
    batch through a per-example copy (`local_weights`), scattered back here by id."""
    grads = {n: p.grad for n, p in ref_model.named_parameters() if p.grad is not None}
    table = getattr(ref_model.inner, "puzzle_emb", None)
    if table is not None and table.local_weights.grad is not None:
        grads["inner.puzzle_emb.weights"] = torch.zeros_like(table.weights).index_add_(0, ids.long(), table.local_weights.grad.to(table.weights.dtype))
    return grads


def cotangents(family: str, B: int, L: int, V: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random output weights; zero on what ponder does not compute (the PAD logit, and
    TRM's unread continue output)."""
    g_logits = torch.randn(B, L, V + 1, generator=gen, dtype=torch.float64)
    g_logits[..., 0] = 0
    g_q = torch.randn(B, 2, generator=gen, dtype=torch.float64)
    if family == "trm":
        g_q[:, 1] = 0
    return {"logits": g_logits, "q": g_q}


def projections(name: str, shape: torch.Size) -> torch.Tensor:
    """(PROJECTIONS, *shape) fixed random directions for one gradient, seeded by its
    name, so a test regenerates them without storing them."""
    seed = int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**31)
    return torch.randn((PROJECTIONS, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------ fixtures

def make_fixture(name: str, checkouts: dict[str, Path], out: Path) -> Path:
    from safetensors.torch import save_file

    family, keys, L, V, puzzles = FIXTURES[name]
    cfg = model_config(family, keys, TINY)
    B = 3
    torch.manual_seed(1234)
    arch = dict(reference_arch(cfg, V, L, B, puzzles), forward_dtype="float64")  # embeddings cast to float64, not float32
    ref_model = reference_class(family, checkouts[family], exact=True)(arch)
    gen = torch.Generator().manual_seed(99)
    with torch.no_grad():  # weights the initialisation leaves at zero, drawn, so that they matter
        ref_model.inner.q_head.weight.normal_(0, 0.3, generator=gen)
        if hasattr(ref_model.inner, "puzzle_emb"):
            ref_model.inner.puzzle_emb.weights.normal_(0, 1, generator=gen)
    weights = {k: v.detach().clone() for k, v in ref_model.state_dict().items()}  # as drawn (float32; the initial states float64)
    ref_model = double(ref_model).train()
    tokens = torch.randint(0, V, (B, L), generator=gen)
    ids = torch.randint(1 if puzzles > 1 else 0, puzzles, (B,), generator=gen)
    cot = cotangents(family, B, L, V, gen)
    outputs = reference_segments(ref_model, tokens, ids, cot)
    ponder_grads = from_reference(reference_grads(ref_model, ids), cfg, shared_prefix=puzzles == 1)
    tensors = {f"ref.{k}": v.contiguous() for k, v in weights.items()}
    tensors.update({k: v.detach().contiguous() for k, v in outputs.items()})
    tensors.update({"tokens": tokens, "ids": ids, "cot.logits": cot["logits"], "cot.q": cot["q"]})
    for key, grad in ponder_grads.items():  # what ponder's gradients must be, projected
        g = grad.detach().double()
        tensors[f"grad.{key}"] = torch.cat([(projections(key, g.shape) * g).flatten(1).sum(1), g.norm().reshape(1)])
    meta = {
        "family": family, "model": {k: getattr(cfg, k) for k in ("family", *TINY, *keys)}, "seq_len": L, "vocab": V,
        "puzzles": puzzles, "reference": str(checkouts[family].name), "reference_commit": commit(checkouts[family]),
        "command": f"python benchmarks/reference_parity.py fixtures --{family} <checkout> --out {out}",
        "torch": torch.__version__,
    }
    path = out / f"{name}.safetensors"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"meta": json.dumps(meta)})
    return path


# ------------------------------------------------------------------ paper sizes

def differences(preset: str, checkouts: dict[str, Path], batch: int, dtype: torch.dtype) -> dict:
    """Largest relative differences of logits, halting values and gradients between
    the reference model and ponder's with its converted weights, two segments, in
    `dtype` (float64: the reference's norms, embeddings and Q head kept in float64 too,
    so what is left is the function; float32: as both codes train)."""
    from ponder.config import build_config
    from ponder.tasks.builders import get_builder

    run_cfg = build_config(preset=preset)
    cfg, family = run_cfg.model, run_cfg.model.family
    builder = get_builder(run_cfg.task.name)
    L, V = builder.seq_len, builder.vocab
    exact = dtype == torch.float64
    arch = dict(reference_arch(cfg, V, L, batch, PAPER[preset]), forward_dtype="float64" if exact else "float32")
    torch.manual_seed(0)
    ref_model = reference_class(family, checkouts[family], exact=exact)(arch)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a Q head that is not all zeros, so its comparison means something
        ref_model.inner.q_head.weight.normal_(0, 0.02, generator=gen)
    model = build_model(cfg, V, L)
    if exact:
        ref_model, model = double(ref_model), model.double()
    model.load_state_dict(from_reference(ref_model.state_dict(), cfg), strict=True)
    ref_model.train(), model.train()
    tokens = torch.randint(0, V, (batch, L), generator=gen)
    ids = torch.zeros(batch, dtype=torch.long)
    cot = {k: v.to(dtype) for k, v in cotangents(family, batch, L, V, gen).items()}
    ref_out = reference_segments(ref_model, tokens, ids, cot)
    out = ponder_segments(model, tokens, cot)
    act_q = cfg.halting == "act_q"
    ref_q = ref_out["seg2.q"] if act_q else ref_out["seg2.q"][:, :1]
    got_q = out.q_logits if act_q else out.halt_logits[:, None]
    want = from_reference(reference_grads(ref_model, ids), cfg)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {
        "logits": rel(out.logits.detach(), ref_out["seg2.logits"][..., 1:]),
        "halting": rel(got_q.detach(), ref_q.to(got_q.dtype)),
        "gradients": max(rel(grads[k], want[k]) for k in want),
        "models": (ref_model, model, tokens, ids, cot),
    }


def ponder_segments(model, tokens: torch.Tensor, cot: dict[str, torch.Tensor]):
    """ponder's two segments, the second backpropagated with the reference's cotangents."""
    with torch.no_grad():
        first = model(tokens, None, None)
    second = model(tokens, first.state, None)
    q = second.q_logits if second.q_logits is not None else torch.stack([second.halt_logits, torch.zeros_like(second.halt_logits)], -1)
    ((second.logits * cot["logits"][..., 1:]).sum() + (q * cot["q"]).sum()).backward()
    return second


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def compare(preset: str, checkouts: dict[str, Path], batch: int, repeats: int) -> dict:
    """Differences in float64 and float32, parameters by component, and the time per
    token of one training call (two segments, forward and backward, float32) of each,
    interleaved, median of `repeats` after a warm-up."""
    exact = differences(preset, checkouts, 2, torch.float64)
    single = differences(preset, checkouts, batch, torch.float32)
    ref_model, model, tokens, ids, cot = single.pop("models")
    exact.pop("models")

    def timed(fn) -> float:
        ref_model.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    ponder_times, ref_times = [], []
    for _ in range(repeats + 1):  # the first of each is warm-up
        ponder_times.append(timed(lambda: ponder_segments(model, tokens, cot)))
        ref_times.append(timed(lambda: reference_segments(ref_model, tokens, ids, cot)))
    tokens_per_call = tokens.numel() * 2
    ref_params = dict(ref_model.named_parameters())
    counts = component_counts(model.state_dict())
    return {
        "preset": preset, "family": model_family(preset), "batch": batch, "seq_len": tokens.shape[1],
        "float64": exact, "float32": single,
        "params_ponder": counts,
        "params_reference": {
            "embeddings (with PAD)": sum(v.numel() for k, v in ref_params.items() if "embed" in k),
            "networks": sum(v.numel() for k, v in ref_params.items() if "_level" in k),
            "heads (with PAD, continue output)": sum(v.numel() for k, v in ref_params.items() if "head" in k),
            "puzzle vector (a buffer)": int(getattr(ref_model.inner, "puzzle_emb").weights.numel()) if hasattr(ref_model.inner, "puzzle_emb") else 0,
        },
        "ms_per_token_ponder": 1000 * statistics.median(ponder_times[1:]) / tokens_per_call,
        "ms_per_token_reference": 1000 * statistics.median(ref_times[1:]) / tokens_per_call,
        "reference_commit": commit(checkouts[model_family(preset)]),
    }


def model_family(preset: str) -> str:
    from ponder.config import build_config

    return build_config(preset=preset).model.family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fixtures", "compare"])
    parser.add_argument("--trm", type=Path, required=True, help="a checkout of the TinyRecursiveModels code")
    parser.add_argument("--hrm", type=Path, required=True, help="a checkout of the HRM code")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "reference")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkouts = {"trm": args.trm, "hrm": args.hrm}
    if args.command == "fixtures":
        for name in FIXTURES:
            path = make_fixture(name, checkouts, args.out)
            print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)")
        return
    rows = [compare(preset, checkouts, args.batch, args.repeats) for preset in PAPER]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; timing: batch {args.batch}, float32")
    print("| preset | logits f64 / f32 | halting f64 / f32 | gradients f64 / f32 | ms/token ponder | ms/token reference | ponder / reference |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["float64"], r["float32"]
        print(f"| `{r['preset']}` | {a['logits']:.1e} / {b['logits']:.1e} | {a['halting']:.1e} / {b['halting']:.1e} | "
              f"{a['gradients']:.1e} / {b['gradients']:.1e} | {r['ms_per_token_ponder']:.3f} | {r['ms_per_token_reference']:.3f} | "
              f"{r['ms_per_token_ponder'] / r['ms_per_token_reference']:.2f} |")


if __name__ == "__main__":
    main()
