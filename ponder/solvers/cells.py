"""Recurrent cells h_t = f(h_{t-1}, x_t) with analytic Jacobians, for Newton-in-time.

A cell splits f into an input projection u_t = project(x_t), computed once for the
whole sequence, and a state update f = update(h_{t-1}, u_t). Both broadcast over any
leading dimensions, so the same code runs one step (B, D) or all T steps at once
(B, T, D): the parallel solver evaluates f and its Jacobian at every time step of a
guessed trajectory in one call.

`linearise(h, u, kind)` returns f and df/dh together (they share the gates) in one of
three layouts ("kinds"):

dense      (..., D, D)     the full Jacobian
diagonal   (..., D)        its diagonal only (exact for DiagGRUCell; quasi-DEER otherwise)
blocks     (..., k, k, H)  H blocks of k x k on a state laid out as k groups of H
                           units, [g_0 (H), ..., g_{k-1} (H)]; block j (the last index)
                           couples entries j, H + j, ..., (k-1) H + j (exact for
                           DiagLSTMCell, k = 2); H last keeps the scan elementwise

`jacobian_structure` names the cheapest exact kind; DEER solves with it. Cells here:

GRUCell       torch.nn.GRUCell equations and parameter layout (r, z, n), dense W_hh
LSTMCell      torch.nn.LSTMCell equations (i, f, g, o); the state is [h, c] (2 H)
DiagGRUCell   ParaRNN-style: recurrent weights are per-unit scalars (W_hh diagonal), so
              df/dh is exactly diagonal and quasi-DEER is exact Newton
DiagLSTMCell  the same for the LSTM; df/d[h, c] is then 2 x 2 blocks per unit

A new cell subclasses `RecurrentCell` and defines `project` and `update`; the base
`linearise` then takes Jacobians with torch.func (jacrev under vmap), which is
exact but slower and memory-hungrier than an analytic formula.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ponder.solvers.newton import solve_recurrence

KINDS = ("dense", "diagonal", "blocks")


class RecurrentCell(nn.Module):
    """Base class: f(h, x) = update(h, project(x)) on a state of `state_size` numbers."""

    state_size: int
    jacobian_structure: str = "dense"
    block_size: int = 1  # k for the "blocks" kind

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Input-only part of f, (..., input_size) -> (..., P); computed once per sequence."""
        raise NotImplementedError

    def update(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """f from the previous state h (..., D) and projected input u (..., P) -> (..., D)."""
        raise NotImplementedError

    def step(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One step h_t = f(h_{t-1}, x_t); also works on (B, T, ...) stacks of steps."""
        return self.update(h, self.project(x))

    def linearise(self, h: torch.Tensor, u: torch.Tensor, kind: str = "dense") -> tuple[torch.Tensor, torch.Tensor]:
        """f(h, u) and df/dh at h in layout `kind` (see the module docstring).

        Generic version: jacrev under vmap over all leading dimensions."""
        _check_kind(self, kind)
        lead = h.shape[:-1]
        flat_h = h.reshape(-1, h.shape[-1])  # (N, D)
        flat_u = u.reshape(-1, u.shape[-1])  # (N, P)
        single = lambda hh, uu: self.update(hh, uu)  # noqa: E731
        jac = torch.func.vmap(torch.func.jacrev(single))(flat_h, flat_u)  # (N, D, D)
        jac = jac.reshape(*lead, h.shape[-1], h.shape[-1])
        return self.update(h, u), _from_dense(jac, kind, self.block_size)

    def jacobian(self, h_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Dense df/dh_prev (..., D, D) at (h_prev, x)."""
        return self.linearise(h_prev, self.project(x), "dense")[1]

    def jacobian_diag(self, h_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Diagonal of df/dh_prev (..., D) at (h_prev, x)."""
        return self.linearise(h_prev, self.project(x), "diagonal")[1]


class GatedCell(RecurrentCell):
    """What the GRU and LSTM share: `gates` gate blocks of `hidden_size` units each,
    torch.nn's parameter layout (weight_ih, weight_hh, bias_ih, bias_hh) and init, and
    per-unit scalar recurrent weights when `diagonal_recurrence` (ParaRNN)."""

    gates: int
    state_multiple: int = 1  # state_size = state_multiple x hidden_size
    diagonal_recurrence = False

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size}, {hidden_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.state_size = self.state_multiple * hidden_size
        rows = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows) if self.diagonal_recurrence else torch.empty(rows, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(rows))
        self.bias_hh = nn.Parameter(torch.empty(rows))
        # PyTorch's RNN init U(-1/sqrt(H), 1/sqrt(H)): small recurrent gain, so f contracts
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_ih.T + self.bias_ih  # (..., gates H)

    def recurrent(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The recurrent term W_hh h + b_hh of each gate, (..., H) each."""
        if self.diagonal_recurrence:
            return tuple(h * w + b for w, b in zip(self.weight_hh.chunk(self.gates), self.bias_hh.chunk(self.gates)))
        return (h @ self.weight_hh.T + self.bias_hh).chunk(self.gates, dim=-1)

    def recurrent_diagonal(self) -> tuple[torch.Tensor, ...]:
        """The diagonal of each gate's W_hh, (H,) each: all of it for diagonal cells."""
        w = self.weight_hh
        if not self.diagonal_recurrence:
            w = w.view(self.gates, self.hidden_size, -1).diagonal(dim1=1, dim2=2).reshape(-1)
        return w.chunk(self.gates)


class GRUCell(GatedCell):
    """Standard GRU (torch.nn.GRUCell layout): r, z gates, candidate n, h' = (1 - z) n + z h."""

    gates = 3

    def _gates(self, h: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        u_r, u_z, u_n = u.chunk(3, dim=-1)
        g_r, g_z, g_n = self.recurrent(h)  # (..., H) each
        r = torch.sigmoid(u_r + g_r)
        z = torch.sigmoid(u_z + g_z)
        n = torch.tanh(u_n + r * g_n)
        return r, z, n, g_n

    def update(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        _, z, n, _ = self._gates(h, u)
        return n + z * (h - n)  # (..., H)

    def linearise(self, h: torch.Tensor, u: torch.Tensor, kind: str = "dense") -> tuple[torch.Tensor, torch.Tensor]:
        """Analytic: dh'/dh = (1 - z) dn/dh + diag(z) + diag(h - n) dz/dh, with
        dz/dh = diag(z(1 - z)) W_z, dn/dh = diag(1 - n^2) (diag(r) W_n + diag(g_n r(1 - r)) W_r)."""
        _check_kind(self, kind)
        r, z, n, g_n = self._gates(h, u)
        out = n + z * (h - n)
        # per-row coefficients of W_r, W_z, W_n in the Jacobian, (..., H) each
        one_minus_z = 1 - z
        c_n = one_minus_z * (1 - n * n) * r
        c_r = c_n * g_n * (1 - r)
        c_z = (h - n) * z * one_minus_z
        if kind == "diagonal" or self.diagonal_recurrence:
            w_r, w_z, w_n = self.recurrent_diagonal()  # (H,) each
            diag = c_r * w_r + c_z * w_z + c_n * w_n + z  # (..., H)
            return out, diag if kind == "diagonal" else torch.diag_embed(diag)
        w_r, w_z, w_n = self.weight_hh.chunk(3, dim=0)  # (H, H) each
        eye = torch.eye(self.hidden_size, dtype=h.dtype, device=h.device)
        # z on the diagonal as a broadcast product (not diag_embed), so torch.compile fuses it
        jac = c_r[..., None] * w_r + c_z[..., None] * w_z + c_n[..., None] * w_n + z[..., None] * eye  # (..., H, H)
        return out, jac


class DiagGRUCell(GRUCell):
    """GRU with per-unit scalar recurrent weights (ParaRNN): exactly diagonal Jacobian."""

    diagonal_recurrence = True
    jacobian_structure = "diagonal"


class LSTMCell(GatedCell):
    """Standard LSTM (torch.nn.LSTMCell layout i, f, g, o) on the state [h, c] of size 2 H."""

    gates = 4
    state_multiple = 2

    def _gates(self, s: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, c = s.chunk(2, dim=-1)  # (..., H) each
        i, f, g, o = (u_k + r_k for u_k, r_k in zip(u.chunk(4, dim=-1), self.recurrent(h)))
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        return c, i, f, g, o, c_new, torch.tanh(c_new)

    def update(self, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        _, _, _, _, o, c_new, tc = self._gates(s, u)
        return torch.cat([o * tc, c_new], dim=-1)  # (..., 2H)

    def linearise(self, s: torch.Tensor, u: torch.Tensor, kind: str = "dense") -> tuple[torch.Tensor, torch.Tensor]:
        """Analytic: dc'/dh = diag(c f') W_f + diag(g i') W_i + diag(i g') W_g, dc'/dc = diag(f),
        dh'/dh = diag(tanh(c') o') W_o + diag(o tanh'(c')) dc'/dh, dh'/dc = diag(o tanh'(c') f)."""
        _check_kind(self, kind)
        c, i, f, g, o, c_new, tc = self._gates(s, u)
        out = torch.cat([o * tc, c_new], dim=-1)
        # row coefficients of W_i, W_f, W_g in dc'/dh and of W_o in dh'/dh, (..., H)
        k_i, k_f, k_g = g * i * (1 - i), c * f * (1 - f), i * (1 - g * g)
        k_o = tc * o * (1 - o)
        o_dtc = o * (1 - tc * tc)
        if kind == "dense" and not self.diagonal_recurrence:
            w_i, w_f, w_g, w_o = self.weight_hh.chunk(4, dim=0)  # (H, H) each
            dc_dh = k_i[..., None] * w_i + k_f[..., None] * w_f + k_g[..., None] * w_g  # (..., H, H)
            dh_dh = k_o[..., None] * w_o + o_dtc[..., None] * dc_dh
            top = torch.cat([dh_dh, torch.diag_embed(o_dtc * f)], dim=-1)  # (..., H, 2H)
            bottom = torch.cat([dc_dh, torch.diag_embed(f)], dim=-1)
            return out, torch.cat([top, bottom], dim=-2)  # (..., 2H, 2H)
        w_i, w_f, w_g, w_o = self.recurrent_diagonal()  # (H,) each
        a_ch = k_i * w_i + k_f * w_f + k_g * w_g  # (..., H) diagonal of dc'/dh
        a_hh = k_o * w_o + o_dtc * a_ch  # diagonal of dh'/dh
        if kind == "diagonal":
            return out, torch.cat([a_hh, f], dim=-1)  # (..., 2H)
        blocks = torch.stack([torch.stack([a_hh, o_dtc * f], -2), torch.stack([a_ch, f], -2)], -3)  # (..., 2, 2, H)
        return out, blocks if kind == "blocks" else blocks_to_dense(blocks)


class DiagLSTMCell(LSTMCell):
    """LSTM with per-unit scalar recurrent weights (ParaRNN): 2 x 2 Jacobian block per unit."""

    diagonal_recurrence = True
    jacobian_structure = "blocks"
    block_size = 2


CELLS = {"gru": GRUCell, "lstm": LSTMCell, "diag_gru": DiagGRUCell, "diag_lstm": DiagLSTMCell}


def make_cell(name: str, input_size: int, hidden_size: int) -> RecurrentCell:
    """A cell by name: one of CELLS."""
    if name not in CELLS:
        raise ValueError(f"cell: expected one of {', '.join(CELLS)}, got {name!r}")
    return CELLS[name](input_size, hidden_size)


# Newton-in-time states (B, T, D) beside the sequential reference: `run_parallel(cell, x,
# h0, method=...)` returns a NewtonResult (h, trace) matching `run_sequential` to within
# its tolerance (see `ponder.solvers.newton.solve_recurrence`).
run_parallel = solve_recurrence


def run_sequential(cell: RecurrentCell, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: states (B, T, D) from a plain loop h_t = f(h_{t-1}, x_t) over t.

    x is (B, T, input_size), h0 (B, D) or None (zeros). Ordinary autograd; the input
    projection is done once for all t, as any fair sequential implementation would, and
    its steps are taken by `unbind` (indexing u[:, t] would make the backward write a
    zero tensor the size of the whole sequence for every step: O(T^2))."""
    if x.dim() != 3:
        raise ValueError(f"x: expected shape (B, T, input_size), got {tuple(x.shape)}")
    h = x.new_zeros(x.shape[0], cell.state_size) if h0 is None else h0  # (B, D)
    u = cell.project(x)  # (B, T, P)
    out = []
    for u_t in u.unbind(1):  # (B, P) each
        h = cell.update(h, u_t)
        out.append(h)
    return torch.stack(out, dim=1)  # (B, T, D)


def blocks_to_dense(blocks: torch.Tensor) -> torch.Tensor:
    """(..., k, k, H) blocks -> the dense (..., kH, kH) matrix on the [g_0, ..., g_{k-1}] layout."""
    k = blocks.shape[-2]
    # entry (a H + j, b H + j) = blocks[a, b, j]
    diag = torch.diag_embed(blocks)  # (..., k, k, H, H)
    rows = [torch.cat(list(diag[..., a, :, :, :].unbind(-3)), dim=-1) for a in range(k)]  # (..., H, kH) each
    return torch.cat(rows, dim=-2)


def _from_dense(jac: torch.Tensor, kind: str, k: int) -> torch.Tensor:
    """A dense Jacobian (..., D, D) in layout `kind`."""
    if kind == "dense":
        return jac
    if kind == "diagonal":
        return jac.diagonal(dim1=-2, dim2=-1)
    dim = jac.shape[-1]
    h = dim // k
    grid = jac.reshape(*jac.shape[:-2], k, h, k, h)  # (..., a, j, b, j')
    return grid.diagonal(dim1=-3, dim2=-1)  # (..., k, k, H)


def _check_kind(cell: RecurrentCell, kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "blocks" and cell.jacobian_structure != "blocks":
        raise ValueError(f"kind: 'blocks' is exact only for cells with block Jacobians, not {type(cell).__name__}")
