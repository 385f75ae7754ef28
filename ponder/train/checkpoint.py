"""Checkpoints: one `safetensors` file holding everything needed to resume exactly.

Tensors: `model.*` (weights), `ema.*` (EMA weights), `optim.<param index>.<key>`
(optimizer state), `rng.torch` (global CPU RNG). Everything else (step, data position,
config, optimizer hyper-parameters, EMA update count, versions) is JSON in the file's
metadata. Loading never unpickles. Writes go to a temporary file that is fsynced and
renamed over the old one, so a kill at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ponder.errors import PonderInputError

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "ponder-checkpoint-1"


def save_checkpoint(path: Path, model, ema, optimizer, meta: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v
    if ema is not None:
        for k, v in ema.model.state_dict().items():
            tensors[f"ema.{k}"] = v
    opt_state = optimizer.state_dict()
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = dict(meta, format=FORMAT, param_groups=opt_state["param_groups"], ema_updates=ema.updates if ema else 0)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"ponder": json.dumps(meta)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata, or a one-line PonderInputError for a missing/corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise PonderInputError(f"{path}: no checkpoint; expected a run folder written by 'ponder train'")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("ponder")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise PonderInputError(f"{path}: corrupt checkpoint ({str(e).splitlines()[0][:120]})") from None
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PonderInputError(f"{path}: not a ponder checkpoint (missing or unknown '{FORMAT}' metadata)")
    return tensors, meta


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    try:
        module.load_state_dict(_prefixed(tensors, prefix), strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0][:160]
        raise PonderInputError(f"{path}: checkpoint weights do not match the model in its config ({first})") from None


def restore(path: Path, model, ema, optimizer) -> dict[str, Any]:
    """Load a full training state in place; returns the metadata."""
    tensors, meta = read_checkpoint(path)
    load_weights(model, tensors, "model.", path)
    if ema is not None:
        load_weights(ema.model, tensors, "ema.", path)
        ema.updates = int(meta.get("ema_updates", 0))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in _prefixed(tensors, "optim.").items():
        idx, key = k.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    return meta
