"""Counter-based random numbers: every draw is a pure function of an int64 key and a
salt, computed with tensor ops on the key's device.

A training stream names each example it serves by a key (`example_keys`: the run's seed
and the example's position in the stream). Drawing an example's augmentation from its
key alone, instead of from a generator that advances batch by batch, gives the same
augmented example at the same stream position after a resume, on any number of GPUs
and under any batching, with no generator state to save and no host round trip.

The hash works on 31-bit words. A round multiplies the state by a constant modulo the
prime M = 2**31 - 1 (a Park-Miller step, which is linear modulo M) and then xors the
state's high bits into its low bits, which breaks that linearity. Every state and every word is
below 2**31 and every multiplier below 2**31, so a product is below 2**62 and the
int64 arithmetic can never overflow (the shifts and xors only ever see values below
2**31). The same helpers run on Python's unbounded integers, which is how the tests
check that. Only integer operations are used, so CPU and CUDA give the same bits.

Keys are meant to be non-negative. A negative key still hashes (all 64 bits of it are
read) and still gives draws in range, but `example_keys` never makes one.

Use a different salt for each independent draw made from the same keys.
"""

from __future__ import annotations

import torch

from ponder.tasks.grids import seed_int

M = 2**31 - 1  # a prime: multiplication by a nonzero constant modulo M is a bijection on 1..M-1
_WORD = 2**31 - 1  # mask of a 31-bit word
_START = 0x2545F491  # the state before any word is absorbed (any value below 2**31)
_MULTIPLIERS = (742938285, 950706376, 1226874159)  # full-period multipliers modulo M, all below 2**31


def _round(h, a: int):
    """One mixing round on a state in [0, 2**31): stays in [0, 2**31)."""
    h = h * a % M  # h < 2**31 and a < 2**31: the product is below 2**62
    return h ^ (h >> 16)  # both operands below 2**31, so is the result


def _absorb(h, word):
    """Fold a 31-bit word into the state; both in [0, 2**31)."""
    return _round(_round(h ^ word, _MULTIPLIERS[0]), _MULTIPLIERS[1])


def _words(x):
    """The 64 bits of an int64 key (or a Python int, read modulo 2**64) as three words
    of 31, 31 and 2 bits, each non-negative whatever the sign of x."""
    return x & _WORD, (x >> 31) & _WORD, (x >> 62) & 3


def _state(keys, salt: int):
    """The state after absorbing the salt and then the key: keys and salt may be Python
    ints or int64 tensors (the salt a Python int)."""
    h = _START
    for word in _words(salt) + _words(keys):
        h = _absorb(h, word)
    return h


def _finish(h):
    """A state in [0, 2**31) to a draw in [0, M): the last product is reduced modulo M."""
    return h * _MULTIPLIERS[2] % M


def mix(keys: torch.Tensor, salt: int) -> torch.Tensor:
    """A hash of each int64 key (any shape) into [0, 2**31 - 1), different for each salt."""
    return _finish(_state(keys.long(), salt))


def example_keys(seed: int, positions: torch.Tensor) -> torch.Tensor:
    """The key of the example at each (non-negative, below 2**62) stream position of a
    run with this seed. Within one run distinct positions get distinct keys (xor with a
    constant is a bijection), and the keys are non-negative and below 2**62."""
    offset = seed_int("ponder-example-keys", seed) >> 2  # below 2**62
    return positions.long() ^ offset


def _draws(keys: torch.Tensor, count: int, salt: int) -> torch.Tensor:
    """(...,) keys -> (..., count) 31-bit draws in [0, M): draw j absorbs the counter j."""
    counter = torch.arange(count, device=keys.device)  # (count,)
    return _finish(_absorb(_state(keys.long(), salt)[..., None], counter))


def uniform(keys: torch.Tensor, count: int, salt: int = 0) -> torch.Tensor:
    """(B,) keys -> (B, count) float32 in [0, 1): the top 24 bits of each draw, which
    float32 holds exactly, so 1.0 can never appear by rounding."""
    return (_draws(keys, count, salt) >> 7).float() * 2.0**-24


def normal(keys: torch.Tensor, count: int, salt: int = 0) -> torch.Tensor:
    """(B,) keys -> (B, count) float32 standard normal draws (Box-Muller on two
    uniforms each; 1 - u is in (0, 1], so the logarithm is finite)."""
    u = uniform(keys, 2 * count, salt)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[:, :count]))
    return radius * torch.cos(2 * torch.pi * u[:, count:])


def permutations(keys: torch.Tensor, n: int, salt: int) -> torch.Tensor:
    """(B,) keys -> (B, n) int64, each row a uniform permutation of 0..n-1: the argsort
    of n draws. Ties (equal 31-bit draws) go to the lower position, which makes every
    sort key distinct, so CPU and CUDA sorts cannot disagree."""
    if not 1 <= n <= 2**31:
        raise ValueError(f"permutations: expected 1 <= n <= 2**31, got {n}")
    order = torch.arange(n, device=keys.device)  # (n,)
    return torch.argsort(_draws(keys, n, salt) * n + order, dim=-1)  # draw * n + order < 2**62


def integers(keys: torch.Tensor, high: int, salt: int) -> torch.Tensor:
    """(B,) keys -> (B,) int64 uniform in [0, high) (to within high / 2**31), by
    multiplying a draw by `high` and keeping the bits above the 31st."""
    if not 1 <= high <= 2**31:
        raise ValueError(f"integers: expected 1 <= high <= 2**31, got {high}")
    return mix(keys, salt) * high >> 31  # mix < 2**31 and high <= 2**31: below 2**62
