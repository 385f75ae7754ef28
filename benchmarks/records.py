"""Writing a benchmark's record folder (its table, its plot, and each run's files), and
running the benchmark's training commands a few at a time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

RUN_FILES = ("config.json", "metrics.jsonl", "results.json", "eval.json")


def write_record(root: Path, pattern: str, record: Path, text: str, plot: Callable[[Path], None], plot_name: str) -> None:
    """`record/table.md`, `record/<plot_name>`, and for each `root/<pattern>` results
    file the run's config, log and results under the same two trailing folder names."""
    record.mkdir(parents=True, exist_ok=True)
    (record / "table.md").write_text(text + "\n")
    plot(record / plot_name)
    for path in root.glob(pattern):
        dest = record / path.parent.parent.name / path.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (path.parent / name).exists():
                shutil.copy(path.parent / name, dest / name)


def train_command(folder: Path, *args: str) -> list[str] | None:
    """`ponder train --out folder --json args...`, or None when the folder already holds a
    finished run. A folder left by an unfinished run is removed: a time-bound run cannot
    be resumed exactly, so it starts again."""
    if (folder / "results.json").exists():
        return None
    if folder.exists():
        shutil.rmtree(folder)
    return [sys.executable, "-m", "ponder.cli", "train", "--out", str(folder), "--json", *args]


def run_jobs(commands: list[list[str] | None], jobs: int) -> None:
    """Run the training commands `jobs` at a time, each writing its output to
    `<its --out folder>.log`; a failure is reported and the others go on."""
    pending = [c for c in commands if c is not None]
    running: list[tuple[Path, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < jobs:
            cmd = pending.pop(0)
            folder = Path(cmd[cmd.index("--out") + 1])
            folder.parent.mkdir(parents=True, exist_ok=True)
            print(f"== {folder}", flush=True)
            with open(folder.parent / f"{folder.name}.log", "w") as log:
                running.append((folder, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        folder, proc = running.pop(0)
        if proc.wait() != 0:
            print(f"!! {folder} failed (exit {proc.returncode}); see {folder}.log", flush=True)
