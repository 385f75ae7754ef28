"""The `ponder` verbs as Python functions. The CLI (`ponder.cli`) is generated from
these signatures, so each verb takes the same arguments in both places.

    >>> import ponder.api as api
    >>> result = api.train(["train.steps=50"], out="runs/quick")   # doctest: +SKIP
    >>> api.evaluate("runs/quick", segments=8)["accuracy_by_segment"]  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import torch

from ponder.config import apply_values, build_config, load_yaml, parse_overrides, preset_names, preset_path
from ponder.errors import PonderInputError
from ponder.eval.evaluate import evaluate as evaluate_model
from ponder.eval.evaluate import run_early_exit
from ponder.models import build_model, count_params
from ponder.tasks import file_split, load_split
from ponder.tasks import sudoku
from ponder.train.checkpoint import CHECKPOINT, load_weights, read_checkpoint
from ponder.train.loop import load_run_config, pick_device
from ponder.train.loop import train as train_loop


def train(overrides: list[str] | None = None, preset: str | None = None, config: str | None = None, out: str | None = None, resume: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train a model; with no arguments, the embedded default (TRM on generated Sudoku, CPU).

    Args:
        overrides: `key=value` settings applied last, e.g. train.steps=200 model.hidden=64
        preset: a shipped preset (see `ponder presets`)
        config: a YAML config file
        out: the run folder to create (default: a new folder under runs/)
        resume: a run folder to continue from its last checkpoint
    """
    pairs = parse_overrides(list(overrides or []))
    if resume:
        if preset or config or out:
            raise PonderInputError("--resume continues a run with its own config; drop --preset/--config/--out")
        cfg = load_run_config(Path(resume))
        extendable = {"train.steps", "train.max_minutes", "train.eval_every", "train.checkpoint_every", "train.threads", "train.device"}
        bad = sorted(set(pairs) - extendable)
        if bad:
            raise PonderInputError(f"override '{bad[0]}': a resumed run keeps its config; only {', '.join(sorted(extendable))} may change")
        if pairs:
            apply_values(cfg, pairs, "override")
        return train_loop(cfg, Path(resume), resume=True, progress=progress)
    cfg = build_config(preset=preset, config_file=config, overrides=pairs)
    run_dir = Path(out) if out else _new_run_dir(preset or Path(config or "default").stem)
    return train_loop(cfg, run_dir, progress=progress)


def evaluate(run: str, data: str | None = None, segments: int | None = None, split: str = "test") -> dict[str, Any]:
    """Evaluate a trained run (its EMA weights) with every segment's answer recorded.

    Args:
        run: the run folder
        data: a Sudoku CSV or puzzle-per-line file (default: the run's own split)
        segments: segments to run (default: the run's train.eval_segments)
        split: the run's own split when --data is not given: test or val
    """
    cfg, model, device = load_trained(run)
    if data:
        puzzles = file_split(data)
        source = str(data)
    else:
        if split not in ("test", "val"):
            raise PonderInputError(f"--split: expected test or val, got {split!r}")
        puzzles = load_split(cfg.task, split)
        source = f"{split} split of {run}"
    n_segments = check_segments(segments, cfg.train.eval_segments)
    result = evaluate_model(model, puzzles.inputs.to(device), puzzles.labels.to(device), n_segments, autocast=cfg.train.autocast, progress=sys.stderr.isatty())
    return {"data": source, **result.to_dict()}


def solve(run: str, puzzle: str, segments: int | None = None) -> dict[str, Any]:
    """Solve one Sudoku (81 characters, '.' or '0' for a blank) with a trained run.

    Args:
        run: the run folder
        puzzle: 81 characters, row by row
        segments: most segments to think for (default: the run's train.eval_segments)
    """
    grid = sudoku.parse_puzzle(puzzle, where="puzzle")
    cfg, model, device = load_trained(run)
    n_segments = check_segments(segments, cfg.train.eval_segments)
    tokens = torch.from_numpy(grid).long()[None].to(device)  # (1, 81)
    halting = cfg.model.halting != "none"
    preds, used = run_early_exit(model, tokens, n_segments, autocast=cfg.train.autocast, halting=halting)
    answer, segments_used = preds[0].numpy(), int(used[0])
    valid = sudoku.is_solution(answer) and bool(((grid == 0) | (grid == answer)).all())
    return {
        "puzzle": sudoku.format_grid(grid),
        "solution": sudoku.format_grid(answer),
        "valid": valid,
        "segments": segments_used,
        "network_calls": segments_used * model.calls_per_segment,
        "halted": segments_used < n_segments,
    }


def presets() -> list[dict[str, Any]]:
    """The shipped presets: name, trainable parameters (without any per-task/puzzle
    embedding table), embedding-table parameters, and a one-line description."""
    rows = []
    for name in preset_names():
        cfg = build_config(preset=name)
        model = build_model(cfg.model, sudoku.VOCAB, sudoku.SIZE, sudoku.peer_mask())
        raw = load_yaml(preset_path(name))
        rows.append({
            "name": name,
            "params": count_params(model),
            "embedding_params": count_params(model, embeddings=True),
            "description": str(raw.get("description", "")),
        })
    return rows


# ------------------------------------------------------------------------------ helpers

def load_trained(run: str | Path):
    """(config, model with EMA weights in eval mode, device) from a run folder."""
    run_dir = Path(run)
    cfg = load_run_config(run_dir)
    tensors, meta = read_checkpoint(run_dir / CHECKPOINT)
    device = pick_device(cfg.train.device)
    model = build_model(cfg.model, sudoku.VOCAB, sudoku.SIZE, sudoku.peer_mask())
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    load_weights(model, tensors, prefix, run_dir / CHECKPOINT)
    return cfg, model.to(device).eval(), device


def check_segments(segments: int | None, default: int) -> int:
    if segments is None:
        return default
    if segments < 1:
        raise PonderInputError(f"--segments: expected an integer >= 1, got {segments}")
    return segments


def _new_run_dir(tag: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{tag}-{stamp}"
    k = 1
    while path.exists():
        k += 1
        path = Path("runs") / f"{tag}-{stamp}-{k}"
    return path
