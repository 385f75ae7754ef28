"""Shared building blocks for every model family.

Shapes: B batch, L sequence length, D hidden size, H heads, Dh = D // H.
Blocks are post-norm (`h = norm(h + f(h))`) by default, as in HRM/TRM: with weights
shared across many recurrent steps, post-norm keeps the state on a fixed scale however
many times a block is applied. `norm="pre"` gives the GPT-style pre-norm block
(`h = h + f(norm(h))`) that causal language models use; `causal=True` makes attention
causal, and a `KVCache` lets it extend a sequence one step at a time (generation).

GPT-2's layer is one set of options away: `norm_kind="layer"` (LayerNorm with weight and
bias), `mlp_kind="gelu"` (the plain `proj(gelu_tanh(fc(x)))` MLP) and `bias=True` (biases
on every projection), with learned positions in place of RoPE (`rope=False`, positions in
`InputEmbedding`). This lets a trained GPT-2 run, unchanged, inside ponder's models.

`mixer="rnn"` replaces attention by a diagonal RNN over the sequence (`RecurrentMixer`,
ParaRNN's cells): causal by construction, and order-aware without a position encoding.

Initialisation follows the HRM/TRM code: every linear layer's weight is drawn from a
normal truncated at two standard deviations and rescaled so that its standard deviation
is exactly 1/sqrt(fan_in) (truncated LeCun normal), biases start at zero, embeddings use
the same truncated normal with standard deviation 1/sqrt(D).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ponder.solvers.cells import make_cell, run_sequential
from ponder.solvers.newton import NewtonTrace, solve_recurrence

POSITIONS = ("auto", "rope", "learned", "none")  # auto: rope with attention, learned with the sequence MLP
LEARNED_POSITION_SCALE = 0.707106781  # 1/sqrt(2): (token + position) keeps the variance of one


def truncated_normal_(tensor: torch.Tensor, std: float, bound: float = 2.0) -> torch.Tensor:
    """Fill `tensor` with normal samples cut at +-`bound` standard deviations, scaled so
    that the standard deviation of the result is `std` (not the smaller one that cutting
    leaves, which is what `nn.init.trunc_normal_` gives; it also cuts at absolute, not
    relative, bounds). Sampled by the inverse CDF of the cut distribution."""
    root2 = math.sqrt(2.0)
    density = math.exp(-bound * bound / 2) / math.sqrt(2 * math.pi)  # standard normal pdf at the cut
    mass = math.erf(bound / root2)  # probability inside +-bound
    cut_std = math.sqrt(1 - 2 * bound * density / mass)  # std of the standard normal cut at +-bound
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        tensor.uniform_(-mass, mass).erfinv_().mul_(root2)  # standard normal cut at +-bound
        return tensor.mul_(std / cut_std).clamp_(-bound * std / cut_std, bound * std / cut_std)


def linear(in_features: int, out_features: int, bias: bool = False) -> nn.Linear:
    """An `nn.Linear` with truncated LeCun-normal weights and zero bias."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    truncated_normal_(layer.weight, 1.0 / math.sqrt(in_features))
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class RMSNorm(nn.Module):
    """Root-mean-square norm; `affine=False` gives the weightless norm HRM/TRM use."""

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))  # at least float32; float64 stays
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            x = x * self.weight
        return x.to(dtype)


NORM_KINDS = ("rms", "layer")
MLP_KINDS = ("swiglu", "gelu")


def make_norm(kind: str, dim: int, affine: bool, eps: float = 1e-5) -> nn.Module:
    """A norm over the last axis: "rms" (`RMSNorm`) or "layer" (`nn.LayerNorm`, whose
    affine form has a weight and a bias, as GPT-2's)."""
    if kind == "rms":
        return RMSNorm(dim, eps=eps, affine=affine)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
    raise ValueError(f"norm_kind: expected one of {', '.join(NORM_KINDS)}, got {kind!r}")


class SwiGLU(nn.Module):
    """Gated MLP `down(silu(gate(x)) * up(x))` on the last axis; the inner width is
    `2/3 * expansion * dim` (so the parameter count matches a plain MLP of width
    `expansion * dim`), rounded up to a multiple of `multiple` (HRM/TRM use 256).

    `conv > 0` adds the Universal Reasoning Model's short depthwise convolution over
    the sequence axis on the gated inner activations (kernel `conv`, left-padded so
    position t sees t-conv+1..t); input (B, L, dim). `bias`: both projections get one."""

    def __init__(self, dim: int, expansion: float = 4.0, multiple: int = 16, conv: int = 0, bias: bool = False):
        super().__init__()
        inner = int(math.ceil(round(expansion * dim * 2 / 3) / multiple) * multiple)
        self.gate_up = linear(dim, 2 * inner, bias=bias)
        self.down = linear(inner, dim, bias=bias)
        self.conv = nn.Conv1d(inner, inner, conv, groups=inner, bias=False) if conv > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        inner = F.silu(gate) * up  # (B, L, inner)
        if self.conv is not None:
            k = self.conv.kernel_size[0]
            inner = self.conv(F.pad(inner.transpose(1, 2), (k - 1, 0))).transpose(1, 2)  # (B, L, inner)
        return self.down(inner)


class GeluMLP(nn.Module):
    """GPT-2's MLP `proj(gelu(fc(x)))`, GELU in its tanh approximation; the inner width is
    exactly `expansion * dim` (no rounding up: a loaded model's width is what it is)."""

    def __init__(self, dim: int, expansion: float = 4.0, bias: bool = False):
        super().__init__()
        inner = int(round(expansion * dim))
        self.fc = linear(dim, inner, bias=bias)
        self.proj = linear(inner, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))  # (B, L, inner) inside


class Rotary(nn.Module):
    """Rotary position embedding: the pair (x[2i], x[2i+1]) at position p is rotated by
    p * base^(-2i / Dh). Tables are computed in float64 and cached per dtype/device,
    for at least `max_len` positions (grown when a longer sequence comes)."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.max_len, self.base = head_dim, max_len, base
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, L: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles at positions 0..L-1, each (L, Dh/2)."""
        key = (dtype, device)
        if key not in self._tables or self._tables[key][0].shape[0] < L:
            inv_freq = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
            angles = torch.outer(torch.arange(max(L, self.max_len), dtype=torch.float64), inv_freq)  # (L', Dh/2)
            self._tables[key] = (angles.cos().to(device, dtype), angles.sin().to(device, dtype))
        cos, sin = self._tables[key]
        return cos[:L], sin[:L]

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x: (B, H, L, Dh) at absolute positions offset..offset+L-1 -> same shape, rotated."""
        L = x.shape[-2]
        cos, sin = self.tables(offset + L, x.dtype, x.device)
        cos, sin = cos[offset:], sin[offset:]  # (L, Dh/2)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)


class KVCache:
    """Keys and values of the positions already seen, for generation one step at a time.

    One entry per attention call site, named by a hashable key (a stack's name, a layer,
    and for a block applied several times the application's index), each a pair of
    (B, H, length, Dh) tensors. The owner of the cache (a language model) advances
    `length` after each forward, so every call site of one forward sees the same
    position offset; an entry whose length differs (a call site the earlier steps did not
    run) is an error, not a silent misplacement. `frozen()` makes attention read the
    cache without storing (a fixed-point solver applying a block many times per step).

    A recurrent token mixer keeps no keys: its state after the cached positions is all it
    needs to go on, so its call site holds one (B, S) tensor in `states` (`last_state`,
    `keep_state`), and the cache does not grow with the sequence."""

    def __init__(self) -> None:
        self.entries: dict[object, tuple[torch.Tensor, torch.Tensor]] = {}
        self.states: dict[object, tuple[int, torch.Tensor]] = {}  # recurrent mixers: (positions seen, last state (B, S))
        self.length = 0  # positions cached before the current forward
        self.write = True
        self.meta: dict[str, object] = {}  # what the entries were made with (e.g. the recurrence)

    def extend(self, key: object, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The past keys/values at `key` followed by k, v (B, H, L, Dh) -> (B, H, length + L, Dh);
        stored unless frozen."""
        past = self.entries.get(key)
        have = 0 if past is None else past[0].shape[2]
        if have != self.length:
            raise ValueError(f"KV cache entry {key!r} holds {have} positions, expected {self.length}: every step must run the same call sites")
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if self.write:
            self.entries[key] = (k, v)
        return k, v

    def last_state(self, key: object) -> torch.Tensor | None:
        """A recurrent mixer's state (B, S) after the cached positions; None before the first."""
        held = self.states.get(key)
        have = 0 if held is None else held[0]
        if have != self.length:
            raise ValueError(f"recurrent state {key!r} follows {have} positions, expected {self.length}: every step must run the same call sites")
        return None if held is None else held[1]

    def keep_state(self, key: object, state: torch.Tensor, new: int) -> None:
        """Store a recurrent mixer's state (B, S) after this forward's `new` positions, unless frozen."""
        if self.write:
            self.states[key] = (self.length + new, state)

    def nbytes(self) -> int:
        """Bytes held by the stored keys and values (and recurrent states)."""
        kv = sum(t.numel() * t.element_size() for pair in self.entries.values() for t in pair)
        return kv + sum(t.numel() * t.element_size() for _, t in self.states.values())

    @contextlib.contextmanager
    def frozen(self) -> Iterator["KVCache"]:
        """Inside, attention reads the cache but stores nothing."""
        before, self.write = self.write, False
        try:
            yield self
        finally:
            self.write = before


class Attention(nn.Module):
    """Multi-head self-attention through PyTorch SDPA, with optional RoPE; bidirectional,
    or causal with `causal=True`. With a `KVCache` the input holds only the new positions:
    they are rotated at their absolute positions and attend to the cached ones too.
    `bias`: the input and output projections get one (GPT-2)."""

    def __init__(
        self, dim: int, heads: int, rotary: Rotary | None = None, mask: torch.Tensor | None = None, causal: bool = False,
        bias: bool = False,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.causal = causal
        self.qkv = linear(dim, 3 * dim, bias=bias)  # output: q, k, v, each head after head
        self.out = linear(dim, dim, bias=bias)
        self.rotary = rotary
        # Optional (L, L) bool mask: True where a query may attend to a key.
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, key: object = None) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D); with `cache`, x holds positions cache.length.. and
        `key` names this call site's cache entry."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
        offset = 0 if cache is None else cache.length
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None:
            k, v = cache.extend(key, k, v)  # (B, H, offset + L, Dh)
        if self.causal and offset == 0 and self.mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, Dh)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.allowed(offset, L, x.device))
        return self.out(y.transpose(1, 2).reshape(B, L, D))

    def allowed(self, offset: int, L: int, device: torch.device) -> torch.Tensor | None:
        """(L, offset + L) bool: may query offset+i attend to key j (None: all may).

        SDPA's own `is_causal` aligns the triangle top-left, which is wrong once the
        keys include cached positions, hence an explicit mask then."""
        mask = None if self.mask is None else self.mask[offset : offset + L, : offset + L]
        if self.causal and L > 1:
            tri = torch.ones(L, offset + L, dtype=torch.bool, device=device).tril(diagonal=offset)
            mask = tri if mask is None else mask & tri
        return mask


class SequenceMLP(nn.Module):
    """TRM's MLP-mixer token mixing: a SwiGLU across the sequence axis, so every
    position reads every other through learned, input-independent weights. It suits
    tasks with a fixed layout (Sudoku) and needs a fixed sequence length."""

    def __init__(self, seq_len: int, expansion: float = 4.0, multiple: int = 16):
        super().__init__()
        self.mlp = SwiGLU(seq_len, expansion, multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)  # (B, L, D) -> (B, D, L) -> (B, L, D)


RNN_CELLS = ("diag_gru", "diag_lstm")  # ParaRNN's cells: elementwise recurrent weights, cheap exact Newton
RNN_SOLVERS = ("newton", "sequential")
NEWTON_METHOD = {"diag_gru": "quasi_deer", "diag_lstm": "deer"}  # exact Newton for each cell, in its cheapest layout


class RecurrentMixer(nn.Module):
    """Token mixing by a diagonal RNN over the sequence (ParaRNN): states
    h_t = cell(h_{t-1}, x_t) from h_0 = 0, then a linear map of each state's output part
    (the GRU's h; the LSTM's h of [h, c]) back to `dim`. Causal by construction, and the
    recurrence carries order, so it needs no position encoding.

    `solver` picks how the T steps are computed; both give the same states:
    "newton"      all positions at once by Newton-in-time (`solve_recurrence`): each
                  iteration is one parallel scan, O(log T) deep, and the gradient is one
                  reverse scan. Exact Newton for both cells (`NEWTON_METHOD`: quasi_deer
                  is exact for the diagonal GRU; the LSTM's [h, c] couples in 2 x 2 blocks,
                  which deer solves), so few iterations suffice; at most `newton_iters`,
                  stopping when the largest change is below `newton_tol` (None: the
                  solver's default for the dtype).
    "sequential"  the plain loop (`run_sequential`): T dependent steps, ordinary autograd.
    A single new position (a generated token) is always one cell step.

    With a `KVCache` the state after the cached positions is the starting state, and the
    new last state is stored, so generation costs one cell step per token. The recurrence
    runs in the weights' dtype outside autocast: a long chain of steps and Newton's
    stopping test both need more than bfloat16. `trace`: the last Newton solve's."""

    def __init__(
        self, dim: int, cell: str = "diag_gru", solver: str = "newton", newton_iters: int = 50, newton_tol: float | None = None,
        bias: bool = False,
    ):
        super().__init__()
        if cell not in RNN_CELLS:
            raise ValueError(f"cell: expected one of {', '.join(RNN_CELLS)}, got {cell!r}")
        self.cell = make_cell(cell, dim, dim)
        self.method = NEWTON_METHOD[cell]
        self.out = linear(dim, dim, bias=bias)
        self.configure(solver, newton_iters, newton_tol)
        self.trace: NewtonTrace | None = None

    def configure(self, solver: str, newton_iters: int = 50, newton_tol: float | None = None) -> None:
        """Choose how the recurrence is computed (see the class); it changes no parameter."""
        if solver not in RNN_SOLVERS:
            raise ValueError(f"rnn_solver: expected one of {', '.join(RNN_SOLVERS)}, got {solver!r}")
        if newton_iters < 1:
            raise ValueError(f"newton_iters: expected >= 1, got {newton_iters}")
        if newton_tol is not None and not newton_tol > 0:
            raise ValueError(f"newton_tol: expected > 0 or None (the dtype's default), got {newton_tol}")
        self.solver, self.newton_iters, self.newton_tol = solver, newton_iters, newton_tol

    def states(self, x: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
        """The cell's states (B, T, S) on inputs x (B, T, D) from h0 (B, S) or zeros."""
        if self.solver == "sequential" or x.shape[1] == 1:
            return run_sequential(self.cell, x, h0)
        result = solve_recurrence(self.cell, x, h0, method=self.method, max_iter=self.newton_iters, tol=self.newton_tol)
        self.trace = result.trace
        return result.h

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, key: object = None) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D); with `cache`, x holds positions cache.length.. and
        `key` names this call site's stored state."""
        h0 = None if cache is None else cache.last_state(key)  # (B, S) or None
        dtype = self.cell.weight_ih.dtype
        with torch.autocast(x.device.type, enabled=False):
            h = self.states(x.to(dtype), h0)  # (B, T, S)
        if cache is not None:
            cache.keep_state(key, h[:, -1], x.shape[1])
        return self.out(h[..., : self.cell.hidden_size].to(x.dtype))  # output part (B, T, D) -> (B, T, D)


NORMS = ("post", "pre")


class Block(nn.Module):
    """Token mixer (attention, sequence MLP or RNN), then channel SwiGLU, each with a residual.

    norm="post" (HRM/TRM): `h = norm(h + f(h))`. After the sequence MLP the residual sum is
    normalised over the sequence axis, as HRM/TRM do (their mixer works on the (B, D, L)
    transpose and normalises it there); after attention and after the channel MLP, over
    the hidden axis.
    norm="pre" (GPT-style language models): `h = h + f(norm(h))`, norms over the hidden
    axis; the residual stream is left unnormalised, so a final norm belongs to the model.
    `norm_affine`: the norms get a learned per-channel weight (HRM/TRM's have none).
    `causal`: attention sees only earlier positions (not possible with the sequence MLP).
    `norm_kind`: "rms" or "layer" (see `make_norm`), with epsilon `norm_eps`. `mlp_kind`:
    "swiglu" or "gelu" (GPT-2's MLP; no convolution). `bias`: attention and channel-MLP
    projections get biases. `mixer="rnn"`: a `RecurrentMixer` with cell `cell` (causal
    whatever `causal` says). The defaults are HRM/TRM's block."""

    def __init__(
        self, dim: int, heads: int, expansion: float, mixer: str, seq_len: int, rotary: Rotary | None,
        mask: torch.Tensor | None = None, mlp_multiple: int = 16, mlp_conv: int = 0,
        norm: str = "post", causal: bool = False, norm_affine: bool = False,
        norm_kind: str = "rms", mlp_kind: str = "swiglu", bias: bool = False, norm_eps: float = 1e-5,
        cell: str = "diag_gru",
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm: expected 'post' or 'pre', got {norm!r}")
        if mlp_kind not in MLP_KINDS:
            raise ValueError(f"mlp_kind: expected one of {', '.join(MLP_KINDS)}, got {mlp_kind!r}")
        if mlp_kind == "gelu" and mlp_conv:
            raise ValueError("mlp_conv needs mlp_kind='swiglu': the convolution acts on the gated activations")
        if mixer == "attention":
            self.mix = Attention(dim, heads, rotary, mask, causal=causal, bias=bias)
        elif mixer == "mlp":
            if causal:
                raise ValueError("the sequence MLP mixes every position with every other: it cannot be causal")
            self.mix = SequenceMLP(seq_len, expansion, mlp_multiple)
        elif mixer == "rnn":
            self.mix = RecurrentMixer(dim, cell, bias=bias)
        else:
            raise ValueError(f"mixer: expected 'attention', 'mlp' or 'rnn', got {mixer!r}")
        self.pre = norm == "pre"
        if mlp_kind == "gelu":
            self.mlp = GeluMLP(dim, expansion, bias=bias)
        else:
            self.mlp = SwiGLU(dim, expansion, mlp_multiple, conv=mlp_conv, bias=bias)
        self.norm1 = make_norm(norm_kind, dim, norm_affine, norm_eps)
        self.norm2 = make_norm(norm_kind, dim, norm_affine, norm_eps)

    def forward(self, h: torch.Tensor, cache: KVCache | None = None, key: object = None) -> torch.Tensor:
        """h: (B, L, D) -> (B, L, D). `cache`, `key`: the attention's KV cache and entry name."""
        if self.pre:
            h = h + self.mixed(self.norm1(h), cache, key)
            return h + self.mlp(self.norm2(h))
        if isinstance(self.mix, SequenceMLP):
            h = self.norm1((h + self.mix(h)).transpose(1, 2)).transpose(1, 2)  # normalised over L, (B, L, D)
        else:
            h = self.norm1(h + self.mixed(h, cache, key))  # (B, L, D)
        return self.norm2(h + self.mlp(h))

    def mixed(self, h: torch.Tensor, cache: KVCache | None, key: object) -> torch.Tensor:
        if cache is None:
            return self.mix(h)
        if not isinstance(self.mix, (Attention, RecurrentMixer)):
            raise ValueError("a KV cache needs attention or an RNN as the token mixer")
        return self.mix(h, cache, key)


class Stack(nn.Module):
    """`layers` blocks applied in order: the small network a recurrent model reuses.
    `norm`, `causal`, `norm_affine`, `norm_kind`, `mlp_kind`, `bias`, `norm_eps`, `cell`:
    see `Block`. RoPE applies to attention only. `out_norm`: end with a parameter-free
    RMS norm (what a recurrent model with pre-norm blocks needs)."""

    def __init__(
        self, dim: int, heads: int, layers: int, expansion: float, mixer: str, seq_len: int, rope: bool,
        mask: torch.Tensor | None = None, mlp_multiple: int = 16, mlp_conv: int = 0,
        norm: str = "post", causal: bool = False, norm_affine: bool = False,
        norm_kind: str = "rms", mlp_kind: str = "swiglu", bias: bool = False, norm_eps: float = 1e-5,
        cell: str = "diag_gru", out_norm: bool = False,
    ):
        super().__init__()
        rotary = Rotary(dim // heads, seq_len) if (rope and mixer == "attention") else None
        # A parameter-free RMS norm on the output: pre-norm blocks leave the residual stream
        # unnormalised, and a network whose output feeds its next input would grow it every call.
        self.out_norm = make_norm("rms", dim, affine=False) if out_norm else None
        kinds = dict(norm_kind=norm_kind, mlp_kind=mlp_kind, bias=bias, norm_eps=norm_eps, cell=cell)
        self.blocks = nn.ModuleList(
            Block(dim, heads, expansion, mixer, seq_len, rotary, mask, mlp_multiple, mlp_conv, norm, causal, norm_affine, **kinds)
            for _ in range(layers)
        )

    def forward(self, h: torch.Tensor, cache: KVCache | None = None, key: tuple = ()) -> torch.Tensor:
        """h: (B, L, D) -> (B, L, D). With `cache`, block i's entry is named `key + (i,)`."""
        for i, block in enumerate(self.blocks):
            h = block(h, cache, (*key, i)) if cache is not None else block(h)
        return h if self.out_norm is None else self.out_norm(h)


class InputEmbedding(nn.Module):
    """Token embedding, optional learned positions, an optional puzzle-identifier
    vector, all scaled by sqrt(D) (unless `scale=False`: GPT-2 adds its embeddings unscaled).

    The puzzle table (HRM/TRM) gives each training puzzle (each ARC task and
    augmentation) a learned vector. It is zero-initialised, so identifier 0 ("none"),
    which training never updates, adds nothing. Its gradient is sparse (only the rows
    in the batch), for the sign-SGD optimizer in `ponder.train.optim`.

    With `prefix` = P > 0 the output has P extra positions in front, as in the HRM/TRM
    code: position 0 holds the puzzle vector (or, for a task without identifiers, one
    learned vector shared by every example), the others zeros. Without a prefix the
    puzzle vector is added to every position. Learned positions (over P + L positions)
    are added as 0.707 (x + positions), which keeps the variance of one term;
    `position_scale` replaces the 0.707 (1.0: a plain sum, as GPT-2's).

    `forward(..., offset=t)` embeds positions t.. (a language model extending a cached
    sequence); the puzzle models always embed the whole sequence from 0."""

    def __init__(
        self, vocab: int, dim: int, seq_len: int, learned_positions: bool, num_puzzles: int = 0, prefix: int = 0,
        scale: bool = True, position_scale: float = LEARNED_POSITION_SCALE,
    ):
        super().__init__()
        self.scale = math.sqrt(dim) if scale else 1.0
        self.position_scale = position_scale
        self.prefix = prefix
        std = 1.0 / math.sqrt(dim)
        self.tokens = nn.Embedding(vocab, dim)
        truncated_normal_(self.tokens.weight, std)
        self.positions = nn.Parameter(truncated_normal_(torch.empty(prefix + seq_len, dim), std)) if learned_positions else None
        self.puzzles = nn.Embedding(num_puzzles, dim, sparse=True) if num_puzzles else None
        if self.puzzles is not None:
            nn.init.zeros_(self.puzzles.weight)
        # a task without identifiers still gets the prefix's learned vector, shared by all
        self.shared = nn.Parameter(torch.zeros(dim)) if prefix and self.puzzles is None else None

    def forward(self, tokens: torch.Tensor, puzzle_ids: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
        """tokens (B, L), puzzle_ids (B,) -> (B, P + L, D); `offset`: the first token's position."""
        x = self.tokens(tokens)  # (B, L, D)
        B, _, D = x.shape
        vector = None  # (B, D) the puzzle's (or the shared) vector
        if self.puzzles is not None:
            if puzzle_ids is None:
                raise ValueError("this model has a puzzle embedding: pass puzzle_ids")
            vector = self.puzzles(puzzle_ids)
        elif self.shared is not None:
            vector = self.shared.expand(B, D)
        if self.prefix:
            front = torch.cat([vector[:, None], x.new_zeros(B, self.prefix - 1, D)], dim=1)  # (B, P, D)
            x = torch.cat([front, x], dim=1)  # (B, P + L, D)
        elif vector is not None:
            x = x + vector[:, None, :]
        if self.positions is not None:
            x = self.position_scale * (x + self.positions[offset : offset + x.shape[1]])  # (B, P + L, D)
        return x * self.scale
