"""Fast decoding for recurrent-depth language models (`RecurrentLM`).

A recurrent LM spends r core iterations on every token, so plain decoding costs about r
times a non-recurrent model's. Three ways to spend less, each measured against plain
decoding by `benchmarks/sampling.py`:

Caches (`DepthCache`)
    "per-iteration": every core iteration keeps its own keys and values for every past
    position, so a new position's iteration i attends to its predecessors' iteration i,
    as in a forward over the whole sequence (exact; memory grows with r).
    "shared": one entry per core layer holding each past position's most recent
    iteration, so memory does not depend on r; a new position's iteration i then reads
    its predecessors' last iteration instead of their i-th (an approximation: the model
    never saw it in training). With r = 1 the two are the same cache.

Per-token exit (`ExitRule`)
    A position stops iterating once the KL divergence between the output distributions
    of two successive iterations, or the relative change of its latent state
    |s_i - s_(i-1)| / |s_i|, falls below a threshold (the earliest exit is after
    iteration 2, the first with a predecessor to compare). Threshold 0 never fires:
    full depth, exactly. With a per-iteration cache, a position that stopped at
    iteration k stands in for the iterations it skipped with its k-th keys and values.

Diffusion forcing (`diffusion_forcing`)
    ("Efficient Parallel Samplers for Recurrent-Depth Models and Their Connection to
    Diffusion Language Models"). A window of up to `window` positions is in flight. Each
    forward pass advances every position in it by one core iteration, in parallel,
    re-decodes each position's next-token guess from its latest output (a position's
    input token is its predecessor's current guess, so an upstream change flows
    downstream on the next pass, while the latent state carries on), and appends one new
    position whose input is the last guess. The oldest positions are committed, in
    order, once they have had r iterations or their prediction has settled (the exit
    rule above): their keys and values enter the shared cache and their guess becomes
    the next token. With window 1 this is autoregressive decoding with the shared cache,
    token for token; with window >= r a token is committed on almost every pass, so the
    sequential core calls per token fall from r towards 1.

Costs are counted in units that do not depend on the hardware: forward passes (one
prelude / core / coda pass over the positions in flight) and sequential core calls (core
iterations run one after another), both including the pass that reads the prompt, which
always runs at full depth r.

Shapes: B batch, L positions in a call, D hidden, V vocabulary, H heads, Dh head width.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from ponder.lm.models import RecurrentLM, sample_token
from ponder.nn.blocks import KVCache

CACHE_KINDS = ("per-iteration", "shared")


class DepthCache(KVCache):
    """A `KVCache` for a recurrent core: "per-iteration" or "shared" (see the module).

    Decoding here reads the cache while `capturing()`: attention then sees the stored
    positions followed by the new ones, stores nothing, and leaves each call site's new
    keys and values in `captured`, so the decoder decides which positions, and which
    iteration's keys, enter the cache (`append`)."""

    def __init__(self, kind: str = "per-iteration"):
        if kind not in CACHE_KINDS:
            raise ValueError(f"cache: expected one of {', '.join(CACHE_KINDS)}, got {kind!r}")
        super().__init__()
        self.kind = kind
        self.captured: dict[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def slot(self, key: tuple) -> tuple:
        """The stored entry a call site reads: core keys are ("core", iteration, layer);
        the shared cache drops the iteration."""
        if self.kind == "shared" and key[0] == "core":
            return ("core", *key[2:])
        return key

    def extend(self, key, k, v):
        if self.captured is not None:
            self.captured[key] = (k, v)
        return super().extend(self.slot(key), k, v)

    @contextlib.contextmanager
    def capturing(self) -> Iterator[dict]:
        """Inside, attention reads the stored positions and records the new ones' keys
        and values (by call site) in the yielded dict instead of storing them."""
        self.captured = {}
        try:
            with self.frozen():
                yield self.captured
        finally:
            self.captured = None

    def append(self, staged: dict[tuple, tuple[torch.Tensor, torch.Tensor]], n: int) -> None:
        """Store the first n positions of each staged (B, H, L, Dh) pair under its slot and
        advance `length` by n."""
        for slot, (k, v) in staged.items():
            past = self.entries.get(slot)
            k, v = k[:, :, :n], v[:, :, :n]
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            self.entries[slot] = (k, v)
        self.length += n


@dataclass(frozen=True)
class ExitRule:
    """Stop a position once its prediction has settled: KL(p_i || p_(i-1)) < `kl` or
    |s_i - s_(i-1)| / |s_i| < `latent` (0: that test is off; both 0: never)."""

    kl: float = 0.0
    latent: float = 0.0

    def __post_init__(self):
        if not (self.kl >= 0 and self.latent >= 0 and math.isfinite(self.kl) and math.isfinite(self.latent)):
            raise ValueError(f"exit thresholds must be finite and >= 0, got kl={self.kl}, latent={self.latent}")

    @property
    def active(self) -> bool:
        return self.kl > 0 or self.latent > 0

    def settled(
        self, s_prev: torch.Tensor, s_new: torch.Tensor, logits_prev: torch.Tensor | None, logits_new: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, L) bool: which positions have settled between two iterates, states (B, L, D)
        and, for the KL test, output logits (B, L, V)."""
        settled = torch.zeros(s_new.shape[:-1], dtype=torch.bool, device=s_new.device)
        if self.latent > 0:
            change = (s_new - s_prev).float().norm(dim=-1) / s_new.float().norm(dim=-1).clamp_min(1e-12)
            settled |= change < self.latent
        if self.kl > 0 and logits_prev is not None:
            settled |= kl_divergence(logits_new, logits_prev) < self.kl
        return settled


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position, in nats: (..., V) logits -> (...)."""
    log_p, log_q = F.log_softmax(logits_p.float(), -1), F.log_softmax(logits_q.float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@dataclass
class Decoded:
    """Generated tokens and what they cost."""

    tokens: torch.Tensor  # (B, T + new): the prompt followed by the generated tokens
    new_tokens: int  # per row
    forward_passes: int  # prelude / core / coda passes, the prompt's included
    core_calls: int  # sequential core iterations, the prompt's included
    # per token after the first (which the prompt's pass predicts): its position's core iterations, mean over rows
    iterations: list[float] = field(default_factory=list)
    cache_bytes: int = 0  # keys and values stored at the end (one sequence's, times B)
    seconds: float = 0.0

    def summary(self) -> dict:
        """Per-token costs as plain numbers (for tables and --json)."""
        n = max(self.new_tokens, 1)
        return {
            "new_tokens": self.new_tokens, "forward_passes_per_token": self.forward_passes / n,
            "core_calls_per_token": self.core_calls / n,
            "iterations_per_token": sum(self.iterations) / max(len(self.iterations), 1),
            "cache_bytes": self.cache_bytes, "seconds": self.seconds,
        }


def check_decodable(model, prompt_length: int, max_new: int) -> None:
    """The fast decoders need a recurrent LM and a prompt plus continuation that fit
    its context (they do not slide the window)."""
    if not isinstance(model, RecurrentLM) or type(model).recur is not RecurrentLM.recur:
        raise ValueError(f"fast decoding needs a recurrent-lm model, not {type(model).__name__}")
    if max_new < 1:
        raise ValueError(f"max_new must be >= 1, got {max_new}")
    if prompt_length < 1:
        raise ValueError("the prompt is empty")
    if prompt_length + max_new - 1 > model.context:
        raise ValueError(
            f"a prompt of {prompt_length} tokens and {max_new} new ones need {prompt_length + max_new - 1} positions; "
            f"the model's context is {model.context}"
        )


def read_positions(
    model: RecurrentLM, idx: torch.Tensor, cache: DepthCache, r: int, rule: ExitRule = ExitRule(),
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run new positions idx (B, L) through prelude, up to r core iterations (each
    position stopping by `rule`) and coda, then store them in the cache ->
    (logits (B, L, V), core iterations per position (B, L), sequential core calls)."""
    B, L = idx.shape
    x = model.embed(idx, offset=cache.length)  # (B, L, D)
    staged: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    latest: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # per core layer: the newest kept iteration's
    with cache.capturing() as captured:
        e = model.prelude(x, cache, ("prelude",))
        s = model.initial_state(e, None)
        active = torch.ones(B, L, dtype=torch.bool, device=idx.device)
        used = torch.zeros(B, L, dtype=torch.long, device=idx.device)
        logits = None
        calls = 0
        for i in range(r):
            s_new = model.core_step(s, e, cache, i)
            calls += 1
            keep = active[..., None]  # (B, L, 1)
            s_new = torch.where(keep, s_new, s)  # settled positions keep their state
            used += active
            for key in [key for key in captured if key[:2] == ("core", i)]:
                k, v = captured.pop(key)
                layer = key[2:]
                if layer in latest:  # a settled position keeps the keys of its last iteration
                    mask = keep[:, None]  # (B, 1, L, 1)
                    k, v = torch.where(mask, k, latest[layer][0]), torch.where(mask, v, latest[layer][1])
                latest[layer] = (k, v)
                staged[cache.slot(key)] = (k, v)
            logits_prev, logits = logits, (model.decode_state(s_new, cache) if rule.kl > 0 else None)
            if i > 0 and rule.active:
                active &= ~rule.settled(s, s_new, logits_prev, logits)
            s = s_new
            if not active.any():
                break
        if logits is None:
            logits = model.decode_state(s, cache)  # (B, L, V)
        if cache.kind == "per-iteration":  # iterations no position ran: the last one's keys stand in
            for j in range(calls, r):
                for layer, pair in latest.items():
                    staged[("core", j, *layer)] = pair
        staged.update(captured)  # prelude and coda: the last call's, on the final states
    cache.append(staged, L)
    return logits, used, calls


@torch.no_grad()
def autoregressive(
    model: RecurrentLM, idx: torch.Tensor, max_new: int, r: int | None = None, cache: str = "per-iteration",
    rule: ExitRule = ExitRule(), temperature: float = 0.0, top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Decoded:
    """One token per forward pass; each new position runs up to r core iterations
    (`rule` may stop it sooner) against a `DepthCache` of kind `cache`. The prompt idx
    (B, T) is read at full depth. Per-iteration cache, no exit: the same tokens as
    `model.generate`, with the same logits as recomputing the whole sequence."""
    check_decodable(model, idx.shape[1], max_new)
    r = model.check_recurrence(r, None)
    start = time.perf_counter()
    depth_cache = DepthCache(cache)
    logits, _, calls = read_positions(model, idx, depth_cache, r)
    out = Decoded(idx, 0, 1, calls)
    token = sample_token(logits[:, -1], temperature, top_k, generator)  # (B, 1)
    tokens = [token]
    for _ in range(max_new - 1):
        logits, used, calls = read_positions(model, token, depth_cache, r, rule)
        out.forward_passes += 1
        out.core_calls += calls
        out.iterations.append(used.float().mean().item())
        token = sample_token(logits[:, -1], temperature, top_k, generator)
        tokens.append(token)
    out.tokens = torch.cat([idx, *tokens], dim=1)
    out.new_tokens, out.cache_bytes, out.seconds = max_new, depth_cache.nbytes(), time.perf_counter() - start
    return out


@torch.no_grad()
def diffusion_forcing(
    model: RecurrentLM, idx: torch.Tensor, max_new: int, r: int | None = None, window: int = 4,
    rule: ExitRule = ExitRule(), temperature: float = 0.0, top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Decoded:
    """The diffusion-forcing sampler (see the module) on one prompt idx (1, T): a window
    of at most `window` positions in flight, one core iteration per pass, a position
    committed once it has had r iterations or `rule` says it settled. It uses the shared
    cache (positions in one pass are at different iterations, so there is no single
    iteration's keys for them to read)."""
    if idx.shape[0] != 1:
        raise ValueError(f"the diffusion-forcing sampler decodes one sequence at a time, got a batch of {idx.shape[0]}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    check_decodable(model, idx.shape[1], max_new)
    r = model.check_recurrence(r, None)
    start = time.perf_counter()
    cache = DepthCache("shared")
    logits, _, calls = read_positions(model, idx, cache, r)
    out = Decoded(idx, 0, 1, calls)
    committed = [sample_token(logits[:, -1], temperature, top_k, generator)]  # each (1, 1)
    inputs = committed[-1]  # (1, L): the window's input tokens; the first one is committed
    states = model.initial_state(model.embed(inputs, offset=cache.length), None)  # (1, L, D): s_0, shaped like e
    done = torch.zeros(1, dtype=torch.long)  # (L,) core iterations each position has had
    logits_prev = None
    while len(committed) < max_new:
        L = inputs.shape[1]
        x = model.embed(inputs, offset=cache.length)  # (1, L, D)
        with cache.capturing() as captured:
            e = model.prelude(x, cache, ("prelude",))
            s_new = model.core_step(states, e, cache, 0)  # (1, L, D)
            logits = model.decode_state(s_new, cache)  # (1, L, V)
        out.forward_passes += 1
        out.core_calls += 1
        done = done + 1
        finished = done >= r
        if rule.active:
            seen = logits_prev.shape[1] if logits_prev is not None else 0  # positions that have a previous pass
            settled = torch.zeros(L, dtype=torch.bool)
            if seen:
                settled[:seen] = rule.settled(states[:, :seen], s_new[:, :seen], logits_prev, logits[:, :seen])[0]
            finished |= settled & (done >= 2)
        m = int(finished.long().cumprod(0).sum())  # the leading run of finished positions
        m = min(m, max_new - len(committed))
        guesses = sample_token(logits[0], temperature, top_k, generator).view(1, L)  # position j's guess for j + 1
        if m:
            cache.append({cache.slot(key): pair for key, pair in captured.items()}, m)
            committed.extend(guesses[:, j : j + 1] for j in range(m))
            out.iterations.extend(float(n) for n in done[:m].tolist())
        # the positions still in flight: inputs are their predecessors' latest guesses
        inputs = torch.cat([inputs[:, :1], guesses[:, :-1]], dim=1)[:, m:]
        states, done, logits_prev = s_new[:, m:], done[m:], logits[:, m:]
        in_flight = inputs.shape[1]
        if in_flight < window and len(committed) + in_flight < max_new:  # room for a new position
            new_input = guesses[:, -1:]
            e_new = model.embed(new_input, offset=cache.length + in_flight)
            inputs = torch.cat([inputs, new_input], dim=1)
            states = torch.cat([states, model.initial_state(e_new, None)], dim=1)
            done = torch.cat([done, torch.zeros(1, dtype=torch.long)])
    out.tokens = torch.cat([idx, *committed], dim=1)
    out.new_tokens, out.cache_bytes, out.seconds = max_new, cache.nbytes(), time.perf_counter() - start
    return out


def decode(
    model: RecurrentLM, idx: torch.Tensor, max_new: int, r: int | None = None, method: str = "autoregressive",
    cache: str = "per-iteration", window: int = 4, exit_kl: float = 0.0, exit_latent: float = 0.0,
    temperature: float = 0.0, top_k: int | None = None, generator: torch.Generator | None = None,
) -> Decoded:
    """`autoregressive` or `diffusion_forcing` by name, with flat options (the CLI's)."""
    rule = ExitRule(exit_kl, exit_latent)
    if method == "autoregressive":
        return autoregressive(model, idx, max_new, r, cache, rule, temperature, top_k, generator)
    if method == "diffusion":
        if cache != "shared":
            raise ValueError("the diffusion-forcing sampler reads the shared cache: use cache='shared'")
        return diffusion_forcing(model, idx, max_new, r, window, rule, temperature, top_k, generator)
    raise ValueError(f"method: expected 'autoregressive' or 'diffusion', got {method!r}")


METHODS = ("autoregressive", "diffusion")

__all__ = [
    "CACHE_KINDS", "METHODS", "Decoded", "DepthCache", "ExitRule", "autoregressive", "check_decodable", "decode",
    "diffusion_forcing", "kl_divergence", "read_positions",
]
