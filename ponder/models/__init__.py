"""Model families and the registry that builds them from a `ModelConfig`."""

from __future__ import annotations

import torch
import torch.nn as nn

from ponder.config import ModelConfig
from ponder.models.trm import TRM, SegmentOutput


def build_trm(cfg: ModelConfig, vocab: int, seq_len: int, task_mask: torch.Tensor | None) -> TRM:
    return TRM(
        vocab=vocab,
        seq_len=seq_len,
        hidden=cfg.hidden,
        heads=cfg.heads,
        layers=cfg.layers,
        expansion=cfg.expansion,
        mixer=cfg.mixer,
        rope=cfg.rope,
        latent_steps=cfg.latent_steps,
        cycles=cfg.cycles,
        attention_mask=task_mask if cfg.attention_mask == "task" else None,
    )


# family name -> builder(config, vocab, seq_len, task_mask). Add a family by adding one entry.
REGISTRY = {"trm": build_trm}


def build_model(cfg: ModelConfig, vocab: int, seq_len: int, task_mask: torch.Tensor | None = None) -> nn.Module:
    """`task_mask`: the task's (L, L) attention structure, used when
    `cfg.attention_mask == "task"`."""
    if cfg.attention_mask == "task" and task_mask is None:
        raise ValueError("model.attention_mask=task but the task defines no attention structure")
    return REGISTRY[cfg.family](cfg, vocab, seq_len, task_mask)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["REGISTRY", "TRM", "SegmentOutput", "build_model", "count_params"]
