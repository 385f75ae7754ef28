"""A run folder: the one place that knows its file names and how each is written.

    config.json              the resolved config
    metrics.jsonl            one JSON line per logged event (start/resume, train, val, test, stop)
    checkpoint.safetensors   the resumable training state (`ponder.train.checkpoint`), with
                             any extra shards beside it
    results.json             the final test evaluation
    curves.png               the plots of `ponder.viz.plots`

Every text file is written whole or not at all (`write_atomic`); the log is append-only
and, on resume, cut back to the checkpoint's step so a resumed run logs exactly what an
uninterrupted one does.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from ponder.config import RunConfig, config_from_dict
from ponder.errors import PonderInputError, read_json

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
RESULTS = "results.json"
PLOT = "curves.png"


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file so a reader never sees it half-written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class RunLog:
    """Append-only JSONL metrics log. On resume, lines past the checkpoint's step (and
    any final test or stop line, which the resumed run writes again) are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = [json.dumps(r) for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step and r.get("event") not in ("test", "stop")]
            write_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a JSONL file; a last line cut off by a crash is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    return read_jsonl(path) if path.exists() else []


def read_results(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RESULTS
    return json.loads(path.read_text()) if path.exists() else None


def load_config(run_dir: Path) -> RunConfig:
    """The config a run folder was trained with, checked key by key."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise PonderInputError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise PonderInputError(f"{run_dir}: not a run folder (no {CONFIG}); expected a folder written by 'ponder train'")
    return config_from_dict(read_json(path, "a corrupt config"), str(path))


def environment(device) -> dict[str, Any]:
    """Who ran this: versions, git revision of the ponder source, device."""
    import torch

    import ponder

    src = Path(ponder.__file__).parent
    try:
        git = lambda *args: subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, timeout=5).stdout.strip()  # noqa: E731
        rev = git("rev-parse", "--short", "HEAD")
        if rev and git("status", "--porcelain", "--untracked-files=no", "."):
            rev += "+dirty"  # uncommitted changes to tracked files
    except (OSError, subprocess.SubprocessError):
        rev = ""
    env = {
        "ponder": ponder.__version__,
        "git": rev or "unknown",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
