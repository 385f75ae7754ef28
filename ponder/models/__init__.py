"""Model families and the registry that builds them from a `ModelConfig`."""

from __future__ import annotations

import torch
import torch.nn as nn

from ponder.config import ModelConfig
from ponder.models.attractor import Attractor
from ponder.models.base import RecurrentModel, SegmentOutput
from ponder.models.depthrec import DepthRecurrent
from ponder.models.hrm import HRM
from ponder.models.looped import LoopedTransformer
from ponder.models.transformer import Transformer
from ponder.models.trm import TRM
from ponder.train.optim import is_puzzle_table

# family name -> (class, its own gradient mode, the family-specific ModelConfig keys it
# takes). Add a family by adding one entry.
REGISTRY: dict[str, tuple[type[RecurrentModel], str, tuple[str, ...]]] = {
    "trm": (TRM, "last_cycle", ("latent_steps", "cycles")),
    "hrm": (HRM, "one_step", ("latent_steps", "cycles")),
    "looped": (LoopedTransformer, "full", ("cycles", "loop_halting", "ponder_cost", "pondernet_prior", "score_dt")),
    "depthrec": (DepthRecurrent, "truncated", ("cycles", "iteration_sigma")),
    "attractor": (Attractor, "last_cycle", ("latent_steps", "cycles", "solver", "solver_iters", "solver_tol", "solver_backward", "jacobian_weight", "proposal_weight")),
    "transformer": (Transformer, "full", ()),
}


def build_model(cfg: ModelConfig, vocab: int, seq_len: int, task_mask: torch.Tensor | None = None, num_puzzles: int = 0) -> RecurrentModel:
    """`task_mask`: the task's (L, L) attention structure, used when
    `cfg.attention_mask == "task"`. `num_puzzles`: size of the task's puzzle-identifier
    table (identifiers 0..num_puzzles-1), used when `cfg.puzzle_embedding` is on."""
    if cfg.attention_mask == "task" and task_mask is None:
        raise ValueError("model.attention_mask=task but the task defines no attention structure")
    if cfg.puzzle_embedding and num_puzzles < 2:
        raise ValueError("model.puzzle_embedding=true but the task defines no puzzle identifiers")
    cls, own_grad_mode, own_keys = REGISTRY[cfg.family]
    return cls(
        **{key: getattr(cfg, key) for key in own_keys},
        vocab=vocab,
        seq_len=seq_len,
        hidden=cfg.hidden,
        heads=cfg.heads,
        layers=cfg.layers,
        expansion=cfg.expansion,
        mixer=cfg.mixer,
        positions=cfg.positions,
        grad_mode=own_grad_mode if cfg.grad_mode == "auto" else cfg.grad_mode,
        truncate_steps=cfg.truncate_steps,
        mlp_multiple=cfg.mlp_multiple,
        mlp_conv=cfg.mlp_conv,
        attention_mask=task_mask if cfg.attention_mask == "task" else None,
        norm=cfg.norm,
        halting=cfg.halting,
        halt_readout=cfg.halt_readout,
        puzzle_prefix=cfg.puzzle_prefix,
        latent_init_std=cfg.latent_init_std,
        num_puzzles=num_puzzles if cfg.puzzle_embedding else 0,
    )


def count_params(model: nn.Module, embeddings: bool = False) -> int:
    """Trainable parameters, excluding the per-task/puzzle embedding table unless
    `embeddings=True`, in which case only that table is counted."""
    table = {id(p) for n, p in model.named_parameters() if is_puzzle_table(n)}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and ((id(p) in table) == embeddings))


__all__ = ["Attractor", "DepthRecurrent", "HRM", "REGISTRY", "TRM", "LoopedTransformer", "Transformer", "RecurrentModel", "SegmentOutput", "build_model", "count_params"]
