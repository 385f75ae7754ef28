"""Causal language models built from ponder's blocks.

Every family shares `CausalLM`: a token embedding (scaled by sqrt(D), as in the puzzle
models), pre-norm causal blocks with RoPE at absolute positions, a final RMSNorm and an
output head whose weight is, by default, the embedding's (tied, as in GPT-2/nanoGPT;
`tie_embeddings=False` gives a separate head). Options turn these parts into GPT-2's
(LayerNorm, GELU MLP, biases, learned positions, no embedding scale; see `CausalLM`), so
a trained GPT-2 loads into `GPT` exactly (`ponder.lm.retrofit.load_gpt2_folder`).
Generation runs one new token per step against a `KVCache` of past keys and values,
which gives the same logits as recomputing the whole sequence.

Families:

GPT          `layers` blocks: the non-recurrent baseline.
ILR          intra-layer recurrence: block i applied `repeats[i]` times in a row
             (GPT is the case of all ones).
RecurrentLM  prelude / recurrent core / coda ("Scaling up test-time compute with latent
             reasoning"): the prelude embeds the text once into e; the core is iterated
             r times on a state s, s <- norm(core(adapter([s, e]))), the prelude output
             re-injected each time; the coda and head read the last state. A looped
             (Universal) LM is the case prelude_layers = coda_layers = 0. A trained
             GPT's layers can be retrofitted into one (`ponder.lm.retrofit`).
AttractorLM  the same parts, but the state is the fixed point s* = norm(core(adapter([s*, e])))
             found by a solver, with implicit gradients ("Solve the Loop: Attractor Models").
RNNLM        GPT's trunk with a diagonal RNN in place of attention (recurrence in time, not
             depth), trained in parallel over the sequence by Newton's method (ParaRNN).

Shapes: B batch, T positions in this call, D hidden, V vocabulary.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ponder.models.depthrec import sample_iterations
from ponder.nn.blocks import RNN_CELLS, InputEmbedding, KVCache, RecurrentMixer, RMSNorm, Stack, linear, make_norm
from ponder.solvers import BACKWARDS, METHODS, SolverTrace, fixed_point


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, T, V)
    # with return_states: the hidden state after each step of depth, each (B, T, D) (recurrent:
    # core iterations; attractor: the core's output at each solver evaluation; GPT/ILR: blocks)
    states: list[torch.Tensor] | None = None
    trace: SolverTrace | None = None  # AttractorLM: how the fixed-point solve went
    penalty: torch.Tensor | None = None  # AttractorLM with jacobian_weight > 0: add to the loss


def r_for_step(mean: float, sigma: float, seed: int, step: int) -> int:
    """The recurrence for training step `step`: r = 1 + Poisson(exp(tau)),
    tau ~ N(log(mean - 1) - sigma^2 / 2, sigma), so that E[r] = mean (the model's default r
    at evaluation). The distribution is `ponder.models.depthrec.sample_iterations`'s with
    its rate shifted by one (that one has mean 1 + mean). Drawn from a private generator
    seeded by (seed, step): the same pair always gives the same r, whichever process asks,
    and the global RNG is untouched."""
    if mean < 1:
        raise ValueError(f"mean recurrence must be >= 1, got {mean}")
    if mean == 1:
        return 1
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    return sample_iterations(mean - 1, sigma, generator)


class CausalLM(nn.Module):
    """Embedding, head, final norm, generation and cache plumbing; a family adds its trunk
    by implementing `run` (embedded tokens -> `LMOutput`).

    `context`: the longest sequence a forward takes (positions of a cached sequence
    included). `norm_affine`: the block and final norms get a learned per-channel weight
    (and, with LayerNorm, a bias).

    Architecture options, defaults first (GPT-2's choice in brackets): `norm_kind` "rms"
    ["layer"] with epsilon `norm_eps`, `mlp_kind` "swiglu" ["gelu", tanh approximation],
    `bias` False [True] on attention and MLP projections, `positions` "rope" ["learned":
    a table of `context` vectors added to the token embedding; "none": neither, for a
    trunk whose mixer knows order by itself], `embed_scale` True [False]
    multiplies the embedding by sqrt(D). `common_args` records all of them, so a model
    of the same shape can be built from these flat arguments (`ponder.lm.retrofit`)."""

    recurrent = False  # takes a recurrence r

    def __init__(
        self, vocab: int, context: int, hidden: int = 128, heads: int = 4, expansion: float = 4.0,
        mlp_multiple: int = 16, norm_affine: bool = True, tie_embeddings: bool = True,
        norm_kind: str = "rms", mlp_kind: str = "swiglu", bias: bool = False, positions: str = "rope",
        embed_scale: bool = True, norm_eps: float = 1e-5,
    ):
        super().__init__()
        if positions not in ("rope", "learned", "none"):
            raise ValueError(f"positions: expected 'rope', 'learned' or 'none', got {positions!r}")
        self.vocab, self.context, self.hidden = vocab, context, hidden
        self.common_args = dict(
            hidden=hidden, heads=heads, expansion=expansion, mlp_multiple=mlp_multiple, norm_affine=norm_affine,
            tie_embeddings=tie_embeddings, norm_kind=norm_kind, mlp_kind=mlp_kind, bias=bias, positions=positions,
            embed_scale=embed_scale, norm_eps=norm_eps,
        )
        self.stack_args = dict(
            dim=hidden, heads=heads, expansion=expansion, mixer="attention", seq_len=context, rope=positions == "rope",
            mlp_multiple=mlp_multiple, norm="pre", causal=True, norm_affine=norm_affine,
            norm_kind=norm_kind, mlp_kind=mlp_kind, bias=bias, norm_eps=norm_eps,
        )
        self.embed = InputEmbedding(
            vocab, hidden, context, learned_positions=positions == "learned", scale=embed_scale, position_scale=1.0,
        )
        self.norm = make_norm(norm_kind, hidden, norm_affine, norm_eps)
        self.head = None if tie_embeddings else linear(hidden, vocab)

    def make_stack(self, layers: int) -> Stack:
        """`layers` pre-norm causal blocks with the model's shared arguments."""
        return Stack(layers=layers, **self.stack_args)

    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and head on a hidden state (the logit lens on an intermediate one):
        (B, T, D) -> (B, T, V)."""
        weight = self.embed.tokens.weight if self.head is None else self.head.weight
        return F.linear(self.norm(h), weight)

    def decode_state(self, s: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Everything after the trunk on a state (B, T, D) -> (B, T, V); families with a
        coda run it first (the coda lens)."""
        return self.head_logits(s)

    def forward(
        self, idx: torch.Tensor, r: int | None = None, cache: KVCache | None = None, return_states: bool = False,
        generator: torch.Generator | None = None,
    ) -> LMOutput:
        """idx (B, T) int64 -> logits (B, T, V). `r`: core iterations (recurrent families;
        None: the model's default). `cache`: past positions' keys/values; idx then holds
        the positions that follow them, and the cache is extended by them. `generator`:
        the recurrent state's initial noise (see `RecurrentLM`)."""
        if r is not None and not self.recurrent:
            raise ValueError(f"{type(self).__name__} has no recurrence: r must be None, got {r}")
        offset = 0 if cache is None else cache.length
        if offset + idx.shape[1] > self.context:
            raise ValueError(f"{offset} cached + {idx.shape[1]} new positions exceed the context of {self.context}")
        out = self.run(self.embed(idx, offset=offset), r, cache, return_states, generator)  # embed: (B, T, D)
        if cache is not None:
            cache.length += idx.shape[1]
        return out

    def run(
        self, x: torch.Tensor, r: int | None, cache: KVCache | None, return_states: bool, generator: torch.Generator | None,
    ) -> LMOutput:
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
        r: int | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Extend idx (B, T) by `max_new_tokens` sampled tokens -> (B, T + new).

        temperature 0 is greedy decoding; `top_k` keeps the k likeliest tokens; `generator`
        drives the sampling. The model conditions on at most the last `context` tokens:
        once the sequence outgrows the context the window slides, positions shift, and each
        step is recomputed without the cache. Call `eval()` first for reproducible output
        (a recurrent model in training mode draws a fresh noisy initial state per call).
        `cache`: an empty `KVCache` to fill (to inspect it afterwards); default a new one."""
        cache = (cache if cache is not None else KVCache()) if use_cache else None
        new = idx  # (B, t) positions not in the cache yet
        for _ in range(max_new_tokens):
            if cache is not None and cache.length + new.shape[1] > self.context:
                cache = None
            if cache is None:
                logits = self(idx[:, -self.context :], r=r).logits[:, -1]  # (B, V)
            else:
                logits = self(new, r=r, cache=cache).logits[:, -1]
            new = sample_token(logits, temperature, top_k, generator)  # (B, 1)
            idx = torch.cat([idx, new], dim=1)
        return idx


def sample_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from logits (B, V) -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


class GPT(CausalLM):
    """`layers` pre-norm causal blocks: the non-recurrent baseline (nanoGPT's shape, with
    RMSNorm, SwiGLU and RoPE in place of LayerNorm, GELU and learned positions by default;
    `CausalLM`'s options give GPT-2's layer exactly; no dropout)."""

    def __init__(self, vocab: int, context: int, layers: int = 4, **common):
        """`common`: `CausalLM`'s arguments (hidden, heads, expansion, ...)."""
        super().__init__(vocab, context, **common)
        self.blocks = self.make_stack(layers)
        self.repeats = [1] * layers

    def run(self, x, r, cache, return_states, generator):
        states = []
        for i, block in enumerate(self.blocks.blocks):
            for j in range(self.repeats[i]):
                x = block(x, cache, ("blocks", i, j))  # (B, T, D)
                if return_states:
                    states.append(x)
        return LMOutput(self.head_logits(x), states if return_states else None)


class ILR(GPT):
    """Intra-layer recurrence ("Intra-Layer Recurrence in Transformers"): block i is applied
    `repeats[i]` times in a row, so depth is spent where it helps (the paper finds: early
    layers) without adding parameters. Each application has its own KV cache entry."""

    def __init__(self, vocab: int, context: int, layers: int = 4, repeats: list[int] | None = None, **common):
        super().__init__(vocab, context, layers=layers, **common)
        repeats = [1] * layers if repeats is None else [int(n) for n in repeats]
        if len(repeats) != layers or min(repeats, default=1) < 1:
            raise ValueError(f"repeats: expected {layers} counts >= 1 (one per layer), got {repeats}")
        self.repeats = repeats


class RecurrentLM(CausalLM):
    """Prelude / recurrent core / coda.

        e = prelude(embed(idx))                      # once
        s_0 ~ N(0, state_init_std^2)                 # per position
        s_i = norm(core(adapter([s_{i-1}, e])))      # i = 1..r; adapter: 2D -> D
        logits = head(norm(coda(s_r)))

    The state norm (weightless RMSNorm) keeps s on one scale however many iterations run,
    so r can grow at test time. With prelude_layers = 0, e is the embedding (a looped LM).
    `state_norm=False` drops it (s_i = core(adapter([s_{i-1}, e]))): the recurrent-depth
    papers' models, trained from scratch, have it, but a model retrofitted from a trained
    GPT does not, since its coda expects the unnormalised residual stream that its
    earlier layers produced; the state's scale is then left to training.

    Initial state: in training mode, Gaussian noise of std `state_init_std` (from
    `generator` if given, else the global RNG); in eval mode, zeros unless a generator is
    passed (then the same noise for the same seed). Zeros, the noise's mean, make
    evaluation reproducible and make cached generation equal recomputation.

    Gradient: only the last `backprop_depth` iterations record it (None: all); the earlier
    ones run under no_grad, so memory does not grow with r. Their parameters still get
    gradient through the recorded iterations."""

    recurrent = True

    def __init__(
        self, vocab: int, context: int, prelude_layers: int = 1, core_layers: int = 2, coda_layers: int = 1,
        mean_r: int = 4, state_init_std: float = 1.0, backprop_depth: int | None = 4, state_norm: bool = True, **common,
    ):
        """`mean_r`: the recurrence when forward gets r=None (training samples around it
        with `r_for_step`). `common`: `CausalLM`'s arguments."""
        super().__init__(vocab, context, **common)
        if mean_r < 1 or core_layers < 1:
            raise ValueError(f"need mean_r >= 1 and core_layers >= 1, got {mean_r} and {core_layers}")
        if backprop_depth is not None and backprop_depth < 1:
            raise ValueError(f"backprop_depth must be >= 1 or None (all iterations), got {backprop_depth}")
        if state_init_std < 0:
            raise ValueError(f"state_init_std must be >= 0, got {state_init_std}")
        self.mean_r, self.state_init_std, self.backprop_depth = mean_r, state_init_std, backprop_depth
        self.prelude = self.make_stack(prelude_layers)
        self.adapter = linear(2 * self.hidden, self.hidden)
        self.core = self.make_stack(core_layers)
        self.state_norm = RMSNorm(self.hidden) if state_norm else nn.Identity()
        self.coda = self.make_stack(coda_layers)

    def initial_state(self, e: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """s_0, shaped like e (B, T, D): noise in training or with a generator, else zeros."""
        if self.state_init_std == 0 or (not self.training and generator is None):
            return torch.zeros_like(e)
        noise = torch.randn(e.shape, generator=generator, dtype=e.dtype, device=e.device)
        return self.state_init_std * noise

    def core_step(self, s: torch.Tensor, e: torch.Tensor, cache: KVCache | None = None, iteration: int = 0) -> torch.Tensor:
        """One core iteration: (B, T, D) state and injection -> next state (B, T, D)."""
        x = self.adapter(torch.cat([s, e], dim=-1))  # (B, T, 2D) -> (B, T, D)
        return self.state_norm(self.core(x, cache, ("core", iteration)))

    def decode_state(self, s: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Coda, final norm and head on a core state (the coda lens): (B, T, D) -> (B, T, V)."""
        return self.head_logits(self.coda(s, cache, ("coda",)))

    def check_recurrence(self, r: int | None, cache: KVCache | None) -> int:
        r = self.mean_r if r is None else int(r)
        if r < 1:
            raise ValueError(f"r must be >= 1, got {r}")
        if cache is not None:
            if cache.length and cache.meta.get("r_used", r) != r:
                raise ValueError(f"the cache was filled with r={cache.meta['r_used']}, not r={r}: past states depend on r")
            cache.meta["r_used"] = r
        return r

    def run(self, x, r, cache, return_states, generator):
        r = self.check_recurrence(r, cache)
        e = self.prelude(x, cache, ("prelude",))  # (B, T, D)
        s = self.initial_state(e, generator)
        s, states, trace, penalty = self.recur(s, e, r, cache)
        return LMOutput(self.decode_state(s, cache), states if return_states else None, trace, penalty)

    def recur(self, s: torch.Tensor, e: torch.Tensor, r: int, cache: KVCache | None):
        """r core iterations from s -> (last state, every state, None, None)."""
        window = r if self.backprop_depth is None else min(r, self.backprop_depth)
        states = []
        with torch.no_grad():
            for i in range(r - window):
                s = self.core_step(s, e, cache, i)
                states.append(s)
        for i in range(r - window, r):
            s = self.core_step(s, e, cache, i)
            states.append(s)
        return s, states, None, None


class AttractorLM(RecurrentLM):
    """The recurrent LM's parts, with the core state at a fixed point:

        s* = norm(core(adapter([s*, e])))

    found by `ponder.solvers.fixed_point` (`solver`, at most r = `solver_iters` evaluations
    unless forward is given r, stopping once the relative residual is below `solver_tol`),
    with implicit (or phantom) gradients, so training memory does not depend on the
    number of iterations. The fixed point is causal (position t's depends only on
    positions <= t), but the solver's iterates are not: Anderson mixes whole sequences and
    stops per sequence, so the logits of earlier positions can move with later tokens by
    about the solver's tolerance, and cached generation equals recomputation to that
    tolerance (not exactly). The gradient is that of the true fixed point only if the
    core contracts near it; `jacobian_weight` trains it to (`LMOutput.penalty`)."""

    def __init__(
        self, vocab: int, context: int, prelude_layers: int = 1, core_layers: int = 2, coda_layers: int = 1,
        state_init_std: float = 1.0, solver: str = "anderson", solver_iters: int = 16, solver_tol: float = 1e-4,
        solver_backward: str = "implicit", jacobian_weight: float = 0.0, **common,
    ):
        if solver not in METHODS:
            raise ValueError(f"solver: expected one of {', '.join(METHODS)}, got {solver!r}")
        if solver_backward not in BACKWARDS:
            raise ValueError(f"solver_backward: expected one of {', '.join(BACKWARDS)}, got {solver_backward!r}")
        super().__init__(
            vocab, context, prelude_layers, core_layers, coda_layers, mean_r=solver_iters,
            state_init_std=state_init_std, backprop_depth=None, **common,
        )
        self.solver, self.solver_tol, self.solver_backward, self.jacobian_weight = solver, solver_tol, solver_backward, jacobian_weight

    @property
    def solver_iters(self) -> int:
        """The solver's default iteration limit: the r that forward uses when given none."""
        return self.mean_r

    def recur(self, s, e, r, cache):
        """Solve for s* from s with at most r evaluations -> (s*, the core's output at each
        evaluation, the solve's trace, the Jacobian penalty)."""
        images: list[torch.Tensor] = []

        def f(z: torch.Tensor) -> torch.Tensor:
            out = self.core_step(z, e, cache, 0)
            images.append(out)
            return out

        solver_kwargs = dict(method=self.solver, max_iter=r, tol=self.solver_tol)
        with cache.frozen() if cache is not None else contextlib.nullcontext():  # solver's trial states are not stored
            eq = fixed_point(f, s, backward=self.solver_backward, solver_kwargs=solver_kwargs, jacobian_weight=self.jacobian_weight)
        if cache is not None:
            with torch.no_grad():
                self.core_step(eq.z, e, cache, 0)  # store the keys/values at the fixed point
        evaluations = eq.trace.residuals.shape[0]
        return eq.z, images[:evaluations], eq.trace, eq.jacobian_penalty


class RNNLM(GPT):
    """`layers` pre-norm blocks whose token mixer is a diagonal RNN (ParaRNN): block i is

        h = h + out(cell_i(norm(h)) over t = 1..T)     # states h_t = f(h_{t-1}, x_t) from 0
        h = h + mlp(norm(h))

    with `cell` diag_gru or diag_lstm (`ponder.solvers.cells`; recurrent weights are
    per-unit scalars, so the Jacobian in time is diagonal, or 2 x 2 blocks). An RNN is
    causal and knows order by itself, hence no position encoding (`positions` "none";
    GPT-2's "learned" table may still be added, harmlessly; RoPE is for attention only).

    Why Newton: a nonlinear RNN's T steps depend on each other, so training loops over
    the sequence. `rnn_solver="newton"` solves the whole trajectory as one system, each
    Newton iteration a parallel scan, and backpropagates with one reverse scan (exact
    gradients); "sequential" is the plain loop. Both give the same logits and gradients
    (to the solver's tolerance), so the choice is one of speed and can be switched on a
    trained model (`model.rnn_solver = ...`). See `ponder.nn.blocks.RecurrentMixer`.

    Generation carries each layer's last state in the cache (`KVCache.states`), so a new
    token costs one cell step per layer and the cache does not grow. Past the context the
    window slides as for the other families: each step then recomputes the last
    `context` tokens from a zero state, the distribution training saw."""

    def __init__(
        self, vocab: int, context: int, layers: int = 4, cell: str = "diag_gru", rnn_solver: str = "newton",
        newton_iters: int = 50, newton_tol: float | None = None, positions: str = "none", **common,
    ):
        """`newton_iters`, `newton_tol`: the Newton solve's cap and tolerance (None: the
        dtype's default). `common`: `CausalLM`'s arguments (`heads` is unused)."""
        if cell not in RNN_CELLS:
            raise ValueError(f"cell: expected one of {', '.join(RNN_CELLS)}, got {cell!r}")
        if layers < 1:
            raise ValueError(f"layers: expected >= 1, got {layers}")
        super().__init__(vocab, context, layers=0, positions=positions, **common)  # no attention blocks: the RNN ones follow
        self.stack_args.update(mixer="rnn", cell=cell)
        self.blocks = self.make_stack(layers)
        self.repeats = [1] * layers
        self.cell = cell
        for mixer in self.mixers():
            mixer.configure(rnn_solver, newton_iters, newton_tol)

    def mixers(self) -> list[RecurrentMixer]:
        return [block.mix for block in self.blocks.blocks]

    @property
    def rnn_solver(self) -> str:
        """How each mixer computes its recurrence: "newton" or "sequential"."""
        return self.mixers()[0].solver

    @rnn_solver.setter
    def rnn_solver(self, value: str) -> None:
        for mixer in self.mixers():
            mixer.configure(value, mixer.newton_iters, mixer.newton_tol)


LM_FAMILIES: dict[str, type[CausalLM]] = {"gpt": GPT, "ilr": ILR, "recurrent-lm": RecurrentLM, "attractor-lm": AttractorLM, "rnn-lm": RNNLM}


def family_arguments(cls: type[CausalLM]) -> list[str]:
    """The flat constructor arguments a family takes (its own and `CausalLM`'s)."""
    names: list[str] = []
    for klass in (cls, CausalLM):
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if name not in ("self", "vocab", "context") and param.kind is not param.VAR_KEYWORD and name not in names:
                names.append(name)
    return names


def build_lm(family: str, vocab: int, context: int, **flat_args) -> CausalLM:
    """The language model of `family` (a key of `LM_FAMILIES`) from flat arguments; an
    argument the family does not take is an error, not silently dropped."""
    if family not in LM_FAMILIES:
        raise ValueError(f"language-model family: expected one of {', '.join(LM_FAMILIES)}, got {family!r}")
    cls = LM_FAMILIES[family]
    accepted = family_arguments(cls)
    unknown = sorted(set(flat_args) - set(accepted))
    if unknown:
        raise ValueError(f"{family} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    return cls(vocab, context, **flat_args)


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (a tied head counts once)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "AttractorLM", "CausalLM", "GPT", "ILR", "KVCache", "LMOutput", "LM_FAMILIES", "RNNLM", "RecurrentLM",
    "build_lm", "family_arguments", "parameter_count", "r_for_step", "sample_token",
]
