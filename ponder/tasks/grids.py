"""Helpers shared by grid tasks (maze, ARC): the label that is not scored, the eight
symmetries of a square (the dihedral group D4), and string seeds.

A grid symmetry is an integer k in 0..7: `k % 4` quarter turns counter-clockwise,
then a transpose when `k >= 4`. `dihedral(grid, k)` acts on the last two axes, so it
works on one (H, W) grid or a stack (..., H, W); `DIHEDRAL_INVERSE[k]` undoes k.
"""

from __future__ import annotations

import hashlib

import numpy as np

IGNORE = -100  # label of a position that is neither scored nor trained on


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """The k-th symmetry of the square applied to the last two axes of `grid`."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral: expected k in 0..7, got {k}")
    out = np.rot90(grid, k % 4, axes=(-2, -1))
    if k >= 4:
        out = np.swapaxes(out, -2, -1)
    return np.ascontiguousarray(out)


def _inverse(k: int) -> int:
    probe = np.arange(6).reshape(2, 3)
    target = dihedral(probe, k)
    return next(j for j in range(8) if np.array_equal(dihedral(target, j), probe))


DIHEDRAL_INVERSE = tuple(_inverse(k) for k in range(8))


def seed_int(*parts: object) -> int:
    """A 64-bit integer seed from any parts (e.g. ("maze", 3, "train")), stable across
    machines and Python versions (unlike `hash`)."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
