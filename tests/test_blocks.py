"""Fast blocks against slow, obviously-correct references (outputs and gradients)."""

import math

import pytest
import torch

from ponder.nn.blocks import Attention, Rotary, RMSNorm, SequenceMLP, SwiGLU


def naive_rope(x):
    """Rotate each pair (x[2i], x[2i+1]) at position p by angle p * base^(-2i/d)."""
    B, H, L, D = x.shape
    out = torch.empty_like(x)
    for p in range(L):
        for i in range(D // 2):
            theta = p * 10000.0 ** (-2 * i / D)
            c, s = math.cos(theta), math.sin(theta)
            a, b = x[..., p, 2 * i], x[..., p, 2 * i + 1]
            out[..., p, 2 * i] = a * c - b * s
            out[..., p, 2 * i + 1] = a * s + b * c
    return out


def naive_attention(attn: Attention, x, mask):
    B, L, D = x.shape
    H = attn.heads
    q, k, v = (t.reshape(B, L, H, D // H).transpose(1, 2) for t in attn.qkv(x).split(D, dim=-1))
    if attn.rotary is not None:
        q, k = naive_rope(q), naive_rope(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.out(y.transpose(1, 2).reshape(B, L, D))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("rope, masked", [(True, False), (False, True), (True, True)])
def test_attention_matches_reference(dtype, tol, rope, masked):
    torch.manual_seed(0)
    L, D, H = 7, 12, 3  # odd sizes
    mask = (torch.rand(L, L) < 0.5) | torch.eye(L, dtype=torch.bool) if masked else None
    attn = Attention(D, H, Rotary(D // H, L) if rope else None, mask).to(dtype)
    x = torch.randn(2, L, D, dtype=dtype, requires_grad=True)
    fast = attn(x)
    g = torch.randn_like(fast)
    (gx_fast, *gp_fast) = torch.autograd.grad(fast, [x, *attn.parameters()], g)
    slow = naive_attention(attn, x, mask)
    (gx_slow, *gp_slow) = torch.autograd.grad(slow, [x, *attn.parameters()], g)
    scale = lambda t: t.abs().max().clamp_min(1).item()  # noqa: E731
    assert (fast - slow).abs().max().item() <= tol * scale(slow)
    assert (gx_fast - gx_slow).abs().max().item() <= tol * scale(gx_slow)
    for a, b in zip(gp_fast, gp_slow):
        assert (a - b).abs().max().item() <= tol * scale(b)


def test_rmsnorm_swiglu_sequence_mlp_match_reference():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    ref = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(RMSNorm(8)(x), ref)
    mlp = SwiGLU(8, 2.0).double()
    gate, up = mlp.gate_up.weight.chunk(2, 0)
    ref = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ mlp.down.weight.T
    assert torch.allclose(mlp(x), ref)
    seq = SequenceMLP(5, 2.0).double()
    # Mixing over the sequence axis: each channel d is an independent length-5 vector.
    ref = torch.stack([seq.mlp(x[:, :, d]) for d in range(8)], dim=-1)
    assert torch.allclose(seq(x), ref)


def test_input_embedding_puzzle_ids():
    from ponder.nn.blocks import InputEmbedding

    torch.manual_seed(0)
    emb = InputEmbedding(vocab=10, dim=8, seq_len=5, learned_positions=True, num_puzzles=3)
    torch.nn.init.normal_(emb.puzzles.weight)
    tokens = torch.randint(0, 10, (2, 5))
    a = emb(tokens, torch.tensor([0, 0]))
    b = emb(tokens, torch.tensor([0, 2]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="puzzle_ids"):
        emb(tokens)


def test_swiglu_depthwise_conv_matches_reference():
    """URM's ConvSwiGLU: position t mixes inner activations of t-k+1..t, per channel."""
    torch.manual_seed(0)
    mlp = SwiGLU(6, 2.0, multiple=4, conv=3).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    gate, up = (x @ mlp.gate_up.weight.T).chunk(2, dim=-1)
    inner = torch.nn.functional.silu(gate) * up  # (B, L, C)
    w = mlp.conv.weight[:, 0, :]  # (C, k)
    rows = []
    for t in range(5):
        acc = torch.zeros(2, inner.shape[-1], dtype=torch.float64)
        for j in range(3):
            src = t - 2 + j
            if src >= 0:
                acc = acc + w[:, j] * inner[:, src]
        rows.append(acc)
    ref = torch.stack(rows, dim=1) @ mlp.down.weight.T
    fast = mlp(x)
    assert torch.allclose(fast, ref, atol=1e-12)
    g = torch.randn_like(ref)
    ga = torch.autograd.grad(fast, [x, mlp.conv.weight], g)
    gb = torch.autograd.grad(ref, [x, mlp.conv.weight], g)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(ga, gb))


def test_truncated_normal_has_the_asked_std_and_bounds():
    from ponder.nn.blocks import truncated_normal_

    torch.manual_seed(0)
    x = truncated_normal_(torch.empty(200_000, dtype=torch.float64), std=0.5)
    assert abs(float(x.std()) - 0.5) < 0.01 and abs(float(x.mean())) < 0.01
    cut = 2 * 0.5 / math.sqrt(1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))
    assert float(x.abs().max()) <= cut + 1e-12 and float(x.abs().max()) > 0.95 * cut


def test_prefix_positions_hold_the_puzzle_vector():
    """HRM/TRM's layout: P positions in front, the first holding the (shared or per-puzzle)
    vector, the rest zeros; learned positions as 0.707 (x + pos); all times sqrt(D)."""
    from ponder.nn.blocks import LEARNED_POSITION_SCALE, InputEmbedding

    torch.manual_seed(0)
    tokens = torch.randint(0, 10, (2, 5))
    emb = InputEmbedding(vocab=10, dim=8, seq_len=5, learned_positions=False, prefix=3)
    torch.nn.init.normal_(emb.shared)
    x = emb(tokens)
    assert x.shape == (2, 8, 8)
    assert torch.allclose(x[:, 0], emb.shared * emb.scale) and torch.equal(x[:, 1:3], torch.zeros(2, 2, 8))
    assert torch.allclose(x[:, 3:], emb.tokens(tokens) * emb.scale)
    table = InputEmbedding(vocab=10, dim=8, seq_len=5, learned_positions=True, num_puzzles=4, prefix=2)
    torch.nn.init.normal_(table.puzzles.weight)
    y = table(tokens, torch.tensor([1, 3]))
    front = torch.stack([table.puzzles.weight[[1, 3]], torch.zeros(2, 8)], dim=1)
    want = LEARNED_POSITION_SCALE * (torch.cat([front, table.tokens(tokens)], dim=1) + table.positions) * table.scale
    assert torch.allclose(y, want, atol=1e-6)


def test_sequence_mlp_block_normalises_over_the_sequence():
    from ponder.nn.blocks import Block

    torch.manual_seed(0)
    block = Block(8, 2, 2.0, "mlp", 6, None).double()
    h = torch.randn(2, 6, 8, dtype=torch.float64)
    mixed = h + block.mix(h)  # (B, L, D)
    after_mix = mixed / torch.sqrt((mixed**2).mean(dim=1, keepdim=True) + 1e-5)  # over L
    want = block.norm2(after_mix + block.mlp(after_mix))
    assert torch.allclose(block(h), want, atol=1e-12)
