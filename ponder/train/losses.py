"""Per-token classification losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ponder.tasks.grids import IGNORE


def stablemax_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log of stablemax ("Grokking at the Edge of Numerical Stability"):
    s(x) = x + 1 for x >= 0 and 1 / (1 - x) otherwise, normalised over the last axis.
    Unlike softmax it grows linearly, so confident logits do not blow up."""
    x = logits.double()
    s = torch.where(x >= 0, x + 1, 1 / (1 - torch.where(x >= 0, torch.zeros_like(x), x)))
    return (s / s.sum(dim=-1, keepdim=True)).log()


def token_loss_per_position(logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """logits (B, L, V), labels (B, L) -> (B, L) loss of each token; 0 where the
    label is IGNORE."""
    if kind == "stablemax":
        logp = stablemax_log_probs(logits)
        scored = labels != IGNORE
        picked = logp.gather(-1, torch.where(scored, labels, 0).unsqueeze(-1)).squeeze(-1)
        return torch.where(scored, -picked, 0.0).to(logits.dtype)
    return F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none", ignore_index=IGNORE)


def mean_over_scored(per_position: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(..., B, L) per-token values -> (..., B) mean over the positions whose label is
    not IGNORE (a row with none scores 0)."""
    scored = (labels != IGNORE).sum(dim=-1).clamp_min(1)  # (B,)
    return per_position.sum(dim=-1) / scored


def token_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Mean over scored tokens of the per-token loss. logits (B, L, V), labels (B, L) -> (B,)."""
    return mean_over_scored(token_loss_per_position(logits, labels, kind), labels)


def expected_token_loss(step_logits: torch.Tensor, step_probs: torch.Tensor, labels: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """PonderNet's loss: sum_k p_k loss(step k), per token, then the mean over tokens.
    step_logits (K, B, L, V), step_probs (K, B, L), labels (B, L) -> (B,)."""
    per_step = torch.stack([token_loss_per_position(logits, labels, kind) for logits in step_logits])  # (K, B, L)
    return mean_over_scored((step_probs * per_step).sum(dim=0), labels)


def answer_correct(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(..., L) predicted and target tokens -> (...,) whether every scored position is right."""
    return ((preds == labels) | (labels == IGNORE)).all(dim=-1)


def segment_token_loss(out, labels: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """A segment's per-example token loss (B,): the loss of its answer, or, when the
    segment carries a halting distribution over its inner steps (PonderNet), the
    expected loss under it."""
    if out.step_probs is None:
        return token_loss(out.logits, labels, kind)
    return expected_token_loss(out.step_logits, out.step_probs, labels, kind)


def winners(loss: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Winner-take-all: (b,) per-row losses and (b,) int64 group of each row (the
    example it is a start of) -> (b,) bool marking each group's lowest-loss row (the
    first one on ties). Only the winners' losses are trained."""
    b = loss.shape[0]
    n = int(group.max()) + 1 if b else 0
    low = torch.full((n,), torch.inf, device=loss.device, dtype=loss.dtype).scatter_reduce(0, group, loss, "amin")
    index = torch.arange(b, device=loss.device)
    candidates = torch.where(loss == low[group], index, b)  # (b,) own index where lowest, else b
    first = torch.full((n,), b, device=loss.device, dtype=index.dtype).scatter_reduce(0, group, candidates, "amin")
    return index == first[group]
