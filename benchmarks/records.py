"""Writing a benchmark's record folder: its table, its plot, and each run's files."""

from __future__ import annotations

import shutil
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
