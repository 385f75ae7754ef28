"""Optimizers and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from ponder.config import TrainConfig


class AdamATan2(torch.optim.Optimizer):
    """Adam with the division replaced by `atan2` ("Scaling Exponents Across
    Parameterizations and Optimizers"): the update `lr * a * atan2(m_hat, b * sqrt(v_hat))`
    is bounded by `lr * a * pi / 2` and needs no epsilon. Decoupled weight decay as AdamW.
    Plain PyTorch, no compiled extension. The defaults a = b = 1 are what the optimizer
    kernel the HRM/TRM code trains with computes (the paper's a = 1.27 would make every
    step 1.27x larger than the learning rate a preset states).

    The moments of a parameter group are updated with `torch._foreach_*` ops (one
    multi-tensor kernel per operation instead of one per parameter), and each step
    count is a CPU scalar, so a step never waits for the device."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.95), weight_decay: float = 0.0, a: float = 1.0, b: float = 1.0):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, a=a, b=b))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)  # on the CPU: read without a device sync
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
            states = [self.state[p] for p in params]
            grads = [p.grad for p in params]
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1.0)
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_lerp_(v, torch._foreach_mul(grads, grads), 1 - beta2)
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            t = [float(s) for s in steps]  # CPU scalars: no device sync
            m_hat = torch._foreach_div(m, [1 - beta1**k for k in t])
            v_root = torch._foreach_sqrt(torch._foreach_div(v, [1 - beta2**k for k in t]))
            torch._foreach_mul_(v_root, group["b"])
            updates = [torch.atan2(mh, vr) for mh, vr in zip(m_hat, v_root)]
            torch._foreach_add_(params, updates, alpha=-group["lr"] * group["a"])
        return loss


class SparseSignSGD(torch.optim.Optimizer):
    """HRM's optimizer for the puzzle-identifier table: for the rows looked up in the
    batch only, `row <- row * (1 - lr * weight_decay) - lr * sign(grad)`. Rows not in
    the batch are untouched (no decay either), so a puzzle seen rarely keeps its vector.

    Needs the sparse gradient of an `nn.Embedding(sparse=True)`; it keeps no state, so
    a checkpoint needs nothing from it beyond the config."""

    def __init__(self, params, lr: float = 1e-2, weight_decay: float = 0.1):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ValueError("SparseSignSGD needs a sparse gradient: use nn.Embedding(..., sparse=True)")
                grad = p.grad.coalesce()  # one entry per distinct row, gradients of repeats summed
                rows = grad.indices()[0]  # (R,)
                p[rows] = p[rows] * (1 - lr * decay) - lr * grad.values().sign()
        return loss


def is_puzzle_table(name: str) -> bool:
    return name.startswith("embed.puzzles.")


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices only (not on biases or 1-D vectors), or on every
    parameter with `decay_vectors` (as the HRM/TRM code does). The puzzle table, if
    any, is left to `build_puzzle_optimizer`."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not is_puzzle_table(n)]
    decay = [p for _, p in params if p.ndim >= 2 or cfg.decay_vectors]
    no_decay = [p for _, p in params if p.ndim < 2 and not cfg.decay_vectors]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamatan2":
        return AdamATan2(groups, lr=cfg.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, foreach=True)


def build_puzzle_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> SparseSignSGD | None:
    """Sign-SGD for the puzzle-identifier table (None when the model has none)."""
    table = [p for n, p in model.named_parameters() if p.requires_grad and is_puzzle_table(n)]
    return SparseSignSGD(table, lr=cfg.puzzle_lr, weight_decay=cfg.puzzle_weight_decay) if table else None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over `lr_warmup` batches, then constant or cosine down to
    `lr_min_ratio * lr` at `steps`."""
    if step < cfg.lr_warmup:
        return cfg.lr * (step + 1) / cfg.lr_warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.lr_warmup) / max(1, cfg.steps - cfg.lr_warmup))
    floor = cfg.lr_min_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
