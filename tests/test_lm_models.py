"""Causal language models (ponder.lm.models) against slow, written-out references."""

import math

import pytest
import torch

from ponder.lm.models import LM_FAMILIES, GPT, ILR, AttractorLM, KVCache, RecurrentLM, build_lm, parameter_count, r_for_step
from ponder.nn.blocks import Attention, Block, Rotary

V, CONTEXT, D, HEADS = 11, 12, 16, 2
FAMILY_ARGS = {
    "gpt": dict(layers=2),
    "ilr": dict(layers=2, repeats=[2, 1]),
    "recurrent-lm": dict(prelude_layers=1, core_layers=1, coda_layers=1, mean_r=3, backprop_depth=2),
    "attractor-lm": dict(prelude_layers=1, core_layers=1, coda_layers=1, solver_iters=60, solver_tol=1e-12),
    "rnn-lm": dict(layers=2),
}


def contract(model: AttractorLM, factor: float = 0.05) -> AttractorLM:
    """Shrink the adapter's weight on the state so the core map contracts in s."""
    with torch.no_grad():
        model.adapter.weight[:, : model.hidden] *= factor
    return model


def tiny(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    args = dict(hidden=D, heads=HEADS, expansion=2.0, **FAMILY_ARGS[family])
    args.update(overrides)
    model = build_lm(family, V, CONTEXT, **args).double()
    return contract(model) if family == "attractor-lm" else model


def tol(family: str) -> float:
    # the attractor, and the RNN's Newton solve: up to the solver's tolerance (a solve stops
    # on the whole sequence, so later tokens can change how many iterations run)
    return {"attractor-lm": 1e-8, "rnn-lm": 1e-10}.get(family, 1e-11)


# ---- slow references ---------------------------------------------------------------------

def naive_rope(x, offset=0):
    """Rotate each pair (x[2i], x[2i+1]) at absolute position p by p * 10000^(-2i/d)."""
    B, H, L, Dh = x.shape
    out = torch.empty_like(x)
    for p in range(L):
        for i in range(Dh // 2):
            theta = (offset + p) * 10000.0 ** (-2 * i / Dh)
            c, s = math.cos(theta), math.sin(theta)
            a, b = x[..., p, 2 * i], x[..., p, 2 * i + 1]
            out[..., p, 2 * i] = a * c - b * s
            out[..., p, 2 * i + 1] = a * s + b * c
    return out


def naive_causal_attention(attn: Attention, x):
    B, L, Dm = x.shape
    H = attn.heads
    q, k, v = (t.reshape(B, L, H, Dm // H).transpose(1, 2) for t in attn.qkv(x).split(Dm, dim=-1))
    q, k = naive_rope(q), naive_rope(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(Dm // H)
    future = torch.ones(L, L, dtype=torch.bool).triu(1)
    y = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
    return attn.out(y.transpose(1, 2).reshape(B, L, Dm))


def naive_stack(stack, h):
    """Pre-norm blocks written out: h + attn(norm(h)), then h + mlp(norm(h))."""
    for block in stack.blocks:
        h = h + naive_causal_attention(block.mix, block.norm1(h))
        h = h + block.mlp(block.norm2(h))
    return h


def reference_recurrent(model: RecurrentLM, idx, r, k, s0):
    """RecurrentLM's logits with every iteration before the last k detached."""
    e = naive_stack(model.prelude, model.embed(idx))
    s = s0
    for i in range(r):
        s = model.state_norm(naive_stack(model.core, model.adapter(torch.cat([s, e], dim=-1))))
        if i < r - k:
            s = s.detach()
    h = model.norm(naive_stack(model.coda, s))
    return h @ model.embed.tokens.weight.T


def grads(model, loss):
    params = list(model.parameters())
    got = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, got)]


# ---- blocks: pre-norm, causal attention, cache offsets --------------------------------------

def test_causal_attention_with_offset_matches_reference():
    """Cached attention (new positions at an offset, in chunks) equals full causal attention."""
    torch.manual_seed(0)
    attn = Attention(D, HEADS, Rotary(D // HEADS, CONTEXT), causal=True).double()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    full = attn(x)
    assert torch.allclose(full, naive_causal_attention(attn, x), atol=1e-12)
    cache = KVCache()
    parts = []
    for lo, hi in [(0, 4), (4, 5), (5, 8), (8, 9)]:  # a prefill, single steps and a chunk
        parts.append(attn(x[:, lo:hi], cache, "a"))
        cache.length = hi
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-12)


def test_pre_norm_block_and_post_norm_default():
    torch.manual_seed(0)
    h = torch.randn(2, 5, D, dtype=torch.float64)
    pre = Block(D, HEADS, 2.0, "attention", 5, Rotary(D // HEADS, 5), norm="pre", causal=True, norm_affine=True).double()
    torch.nn.init.normal_(pre.norm1.weight)
    mid = h + naive_causal_attention(pre.mix, pre.norm1(h))
    assert torch.allclose(pre(h), mid + pre.mlp(pre.norm2(mid)), atol=1e-12)
    post = Block(D, HEADS, 2.0, "attention", 5, None).double()  # the puzzle models' block, unchanged
    mid = post.norm1(h + post.mix(h))
    assert torch.allclose(post(h), post.norm2(mid + post.mlp(mid)), atol=1e-12)
    with pytest.raises(ValueError, match="causal"):
        Block(D, HEADS, 2.0, "mlp", 5, None, causal=True)


def test_cache_refuses_a_call_site_the_earlier_steps_did_not_run():
    model = tiny("recurrent-lm").eval()
    cache = KVCache()
    model(torch.randint(0, V, (1, 3)), r=2, cache=cache)
    with pytest.raises(ValueError, match="r=2"):
        model(torch.randint(0, V, (1, 1)), r=3, cache=cache)
    cache.meta.clear()  # even without the recorded r, a missing entry is caught
    with pytest.raises(ValueError, match="holds 0 positions"):
        model(torch.randint(0, V, (1, 1)), r=3, cache=cache)


# ---- every family ------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(LM_FAMILIES))
def test_no_future_leakage(family):
    model = tiny(family).eval()
    torch.manual_seed(1)
    idx = torch.randint(0, V, (2, 9))
    for t in (0, 3, 7):
        changed = idx.clone()
        changed[:, t + 1] = (idx[:, t + 1] + 1) % V
        a, b = model(idx).logits, model(changed).logits
        assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=tol(family), rtol=0)
        assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_no_future_leakage_with_training_noise():
    """In training mode the noisy initial state, drawn from one generator, is per position."""
    model = tiny("recurrent-lm").train()
    idx = torch.randint(0, V, (2, 8))
    changed = idx.clone()
    changed[:, 5] = (idx[:, 5] + 1) % V
    a = model(idx, generator=torch.Generator().manual_seed(3)).logits
    b = model(changed, generator=torch.Generator().manual_seed(3)).logits
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-12, rtol=0)


@pytest.mark.parametrize("family", list(LM_FAMILIES))
def test_cached_steps_equal_recomputation(family):
    model = tiny(family).eval()
    torch.manual_seed(2)
    seq = torch.randint(0, V, (2, 4))
    cache = KVCache()
    step_logits = model(seq, cache=cache).logits[:, -1]
    for step in range(7):
        full = model(seq).logits[:, -1]
        assert torch.allclose(step_logits, full, atol=1e-5 if family == "attractor-lm" else 1e-10, rtol=0), step
        nxt = full.argmax(-1, keepdim=True) if step % 2 else torch.randint(0, V, (2, 1))
        seq = torch.cat([seq, nxt], dim=1)
        step_logits = model(nxt, cache=cache).logits[:, -1]
    assert cache.length == seq.shape[1]


@pytest.mark.parametrize("family", list(LM_FAMILIES))
def test_generate_with_cache_equals_without(family):
    """Greedy and seeded sampling; 14 new tokens run past the context (the window slides)."""
    model = tiny(family).eval()
    prompt = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(4))
    greedy = model.generate(prompt, 14, temperature=0, use_cache=True)
    assert greedy.shape == (2, 17) and torch.equal(greedy[:, :3], prompt)
    assert torch.equal(greedy, model.generate(prompt, 14, temperature=0, use_cache=False))
    sampled = [model.generate(prompt, 6, top_k=5, generator=torch.Generator().manual_seed(9), use_cache=c) for c in (True, False)]
    assert torch.equal(*sampled)


def test_forward_refuses_past_the_context_and_r_for_non_recurrent():
    model = tiny("gpt")
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, CONTEXT + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="no recurrence"):
        model(torch.zeros(1, 3, dtype=torch.long), r=2)


# ---- RecurrentLM ---------------------------------------------------------------------------

@pytest.mark.parametrize("r, k", [(5, 2), (4, 1), (3, None), (3, 3), (2, 6)])
def test_recurrent_truncated_gradient_matches_reference(r, k):
    model = tiny("recurrent-lm", backprop_depth=k).train()
    idx = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(5))
    logits = model(idx, r=r, generator=torch.Generator().manual_seed(6)).logits
    s0 = model.state_init_std * torch.randn(2, 6, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    window = r if k is None else min(k, r)
    ref = reference_recurrent(model, idx, r, window, s0)
    assert torch.allclose(logits, ref, atol=1e-11)
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got, want = grads(model, (logits * w).sum()), grads(model, (ref * w).sum())
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-8), name
        assert torch.equal(a == 0, b == 0), name  # what lies outside the window's reach (absent tokens' rows) gets exactly 0
    if window == r:  # the whole recurrence recorded: ordinary full backprop
        full = grads(model, (reference_recurrent(model, idx, r, r, s0) * w).sum())
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(got, full))
    else:  # truncation changes the core's gradient
        full = grads(model, (reference_recurrent(model, idx, r, r, s0) * w).sum())
        core = [i for i, (n, _) in enumerate(model.named_parameters()) if n.startswith("core.")]
        assert any(not torch.allclose(got[i], full[i]) for i in core)


def test_recurrent_is_deterministic_at_eval_and_noisy_in_training():
    model = tiny("recurrent-lm", state_init_std=0.7)
    idx = torch.randint(0, V, (2, 6))
    model.eval()
    a, b = model(idx, r=4).logits, model(idx, r=4).logits
    assert torch.equal(a, b)  # zeros as the initial state
    seeded = [model(idx, r=4, generator=torch.Generator().manual_seed(1)).logits for _ in range(2)]
    assert torch.equal(*seeded) and not torch.allclose(seeded[0], a)
    model.train()
    assert not torch.allclose(model(idx, r=4).logits, model(idx, r=4).logits)


def test_recurrent_states_and_lenses():
    model = tiny("recurrent-lm").eval()
    idx = torch.randint(0, V, (2, 5))
    for r in (1, 3, 7):
        out = model(idx, r=r, return_states=True)
        assert len(out.states) == r and all(s.shape == (2, 5, D) for s in out.states)
        assert torch.allclose(model.decode_state(out.states[-1]), out.logits, atol=1e-12)  # coda lens on the last state
        assert model.head_logits(out.states[0]).shape == (2, 5, V)  # logit lens
    assert model(idx).logits.shape == (2, 5, V) and len(model(idx, return_states=True).states) == model.mean_r
    assert model(idx).states is None


def test_looped_lm_is_the_recurrent_case_without_prelude_and_coda():
    """prelude = coda = 0: the adapter reads the embedding, the head reads the state."""
    model = tiny("recurrent-lm", prelude_layers=0, coda_layers=0, backprop_depth=None).eval()
    idx = torch.randint(0, V, (1, 5))
    s = torch.zeros(1, 5, D, dtype=torch.float64)
    e = model.embed(idx)
    for _ in range(3):
        s = model.state_norm(naive_stack(model.core, model.adapter(torch.cat([s, e], dim=-1))))
    assert torch.allclose(model(idx, r=3).logits, model.norm(s) @ model.embed.tokens.weight.T, atol=1e-11)


# ---- AttractorLM ---------------------------------------------------------------------------

def test_attractor_state_is_a_fixed_point():
    model = tiny("attractor-lm").eval()
    idx = torch.randint(0, V, (2, 6))
    out = model(idx, return_states=True)
    assert bool(out.trace.converged.all())
    assert len(out.states) == out.trace.residuals.shape[0] <= model.solver_iters
    e = model.prelude(model.embed(idx))
    s_star = model.recur(torch.zeros_like(e), e, model.solver_iters, None)[0]
    residual = (model.core_step(s_star, e) - s_star).norm() / s_star.norm()
    assert residual < 1e-10
    assert torch.allclose(model.decode_state(s_star), out.logits, atol=1e-12)
    assert len(model(idx, r=3, return_states=True).states) == 3  # r caps the solver's evaluations


def test_attractor_implicit_gradient_matches_unrolled_autograd():
    model = tiny("attractor-lm").eval()
    idx = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(8))
    logits = model(idx).logits
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    implicit = grads(model, (logits * w).sum())
    e = model.prelude(model.embed(idx))
    s = torch.zeros_like(e)
    for _ in range(80):  # plain autograd through many steps of a contraction
        s = model.core_step(s, e)
    unrolled = grads(model, (model.decode_state(s) * w).sum())
    for (name, _), a, b in zip(model.named_parameters(), implicit, unrolled):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-7), name


# ---- GPT and ILR --------------------------------------------------------------------------

def nanogpt_count(vocab, context, layers, dim):
    """nanoGPT (bias=False, tied head, learned positions): per layer 12 D^2 weights and two LayerNorm weights."""
    return layers * (12 * dim * dim + 2 * dim) + dim + vocab * dim + context * dim


def gpt_count(vocab, layers, dim, expansion=4.0, multiple=16):
    """Ours: attention 4 D^2, SwiGLU 3 D inner, two norm weights per block; final norm; tied embedding; RoPE has none."""
    inner = math.ceil(round(expansion * dim * 2 / 3) / multiple) * multiple
    return layers * (4 * dim * dim + 3 * dim * inner + 2 * dim) + dim + vocab * dim


def test_gpt_parameter_count_at_the_nanogpt_shakespeare_cpu_config():
    model = build_lm("gpt", 65, 64, hidden=128, heads=4, layers=4)  # nanoGPT's CPU shakespeare_char config
    ours, theirs = parameter_count(model), nanogpt_count(65, 64, 4, 128)
    print(f"GPT at nanoGPT's CPU config: {ours} parameters (nanoGPT: {theirs})")
    assert ours == gpt_count(65, 4, 128) == 812_288
    assert abs(ours / theirs - 1) < 0.02
    recurrent = build_lm("recurrent-lm", 65, 64, hidden=104, heads=4, prelude_layers=1, core_layers=1, coda_layers=1)
    block = gpt_count(0, 1, 104) - 104  # one block, no embedding or final norm
    assert parameter_count(recurrent) == 3 * block + 2 * 104 * 104 + 104 + 65 * 104 == 428_480
    print(f"RecurrentLM (104 wide, prelude/core/coda 1/1/1): {parameter_count(recurrent)} parameters")
    untied = build_lm("gpt", 65, 64, hidden=128, heads=4, layers=4, tie_embeddings=False)
    assert parameter_count(untied) == ours + 65 * 128


def test_ilr_with_single_repeats_is_gpt_and_repeats_apply_blocks_in_place():
    gpt = tiny("gpt", layers=3)
    ilr = tiny("ilr", layers=3, repeats=[1, 1, 1])
    ilr.load_state_dict(gpt.state_dict())
    idx = torch.randint(0, V, (2, 7))
    assert torch.equal(gpt(idx).logits, ilr(idx).logits)
    twice = tiny("ilr", layers=3, repeats=[2, 1, 3])
    twice.load_state_dict(gpt.state_dict())
    b = twice.blocks.blocks
    h = twice.embed(idx)
    for block in (b[0], b[0], b[1], b[2], b[2], b[2]):
        h = h + naive_causal_attention(block.mix, block.norm1(h))
        h = h + block.mlp(block.norm2(h))
    out = twice(idx, return_states=True)
    assert torch.allclose(out.logits, twice.head_logits(h), atol=1e-11) and len(out.states) == 6
    with pytest.raises(ValueError, match="repeats"):
        ILR(V, CONTEXT, layers=3, repeats=[1, 2])


# ---- registry and the recurrence sampler ---------------------------------------------------

def test_build_lm_registry_and_errors():
    assert set(LM_FAMILIES) == {"gpt", "ilr", "recurrent-lm", "attractor-lm", "rnn-lm"}
    assert isinstance(build_lm("gpt", V, CONTEXT, hidden=D, heads=HEADS), GPT)
    assert isinstance(build_lm("attractor-lm", V, CONTEXT, hidden=D, heads=HEADS, solver_iters=5), AttractorLM)
    with pytest.raises(ValueError, match="gpt, ilr, recurrent-lm, attractor-lm"):
        build_lm("mamba", V, CONTEXT)
    with pytest.raises(ValueError, match="does not take layers"):
        build_lm("recurrent-lm", V, CONTEXT, layers=4)


def test_r_for_step_is_deterministic_and_has_the_asked_mean():
    state = torch.get_rng_state()
    draws = [r_for_step(6.0, 0.5, seed=3, step=s) for s in range(4000)]
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    assert draws[:50] == [r_for_step(6.0, 0.5, seed=3, step=s) for s in range(50)]
    assert draws[:50] != [r_for_step(6.0, 0.5, seed=4, step=s) for s in range(50)]
    assert min(draws) >= 1 and abs(sum(draws) / len(draws) - 6.0) < 0.25
    assert r_for_step(1, 0.5, 0, 0) == 1


def test_nanogpt_block_style_builds_nanogpts_layer():
    """`model.block_style=nanogpt` gives nanoGPT's Shakespeare model: LayerNorm, a GELU
    MLP of width 4D, learned positions, no projection biases; its parameter count is
    nanoGPT's (token and position tables, four attention and two MLP matrices per layer)
    plus the LayerNorm biases, which nanoGPT's bias=False drops."""
    from ponder.config import build_config, parse_overrides
    from ponder.lm.train import build_language_model

    cfg = build_config("gpt-shakespeare-char", overrides=parse_overrides(["model.block_style=nanogpt"]))
    model = build_language_model(cfg.model, 65)
    d, layers, context, vocab = 128, 4, 64, 65
    nanogpt = vocab * d + context * d + layers * (4 * d * d + 2 * d * 4 * d + 2 * d) + d
    assert parameter_count(model) == nanogpt + (2 * layers + 1) * d
    assert isinstance(model.norm, torch.nn.LayerNorm) and model.embed.positions is not None
    default = build_language_model(build_config("gpt-shakespeare-char").model, 65)
    assert isinstance(default.norm, torch.nn.Module) and not isinstance(default.norm, torch.nn.LayerNorm)
