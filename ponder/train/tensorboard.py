"""TensorBoard event files beside a run's JSONL log (`train.tensorboard=true`).

Every number the log records becomes a scalar named by its event and key (`train/loss`,
`train/speed/examples_per_s`, `val/exact_accuracy`, ...) at the record's step; each
validation also adds the accuracy-vs-segments curve as a figure and, for puzzle runs, a
picture of the model thinking about the first validation example
(`ponder.viz.trace`). The files go to `RUN/tensorboard`; view them with
`tensorboard --logdir RUN/tensorboard` (or several runs' folders at once to compare).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ponder.errors import PonderInputError

FOLDER = "tensorboard"


def require():
    """The SummaryWriter class, or a one-line error when the `tensorboard` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PonderInputError("config key 'train.tensorboard': needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter


def _numbers(record: dict[str, Any], prefix: str = ""):
    """(name, value) of every int or float in a (nested) record, bools and the step aside."""
    for key, value in record.items():
        if key in ("event", "step"):
            continue
        if isinstance(value, dict):
            yield from _numbers(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


class TensorBoardLog:
    """Mirrors the records of a `RunLog` into TensorBoard (see the module docstring)."""

    def __init__(self, run_dir: Path):
        self.writer = require()(str(Path(run_dir) / FOLDER))

    def write(self, record: dict[str, Any]) -> None:
        step, event = record.get("step"), record.get("event", "log")
        if not isinstance(step, int) or event in ("start", "resume"):
            return
        for name, value in _numbers(record):
            self.writer.add_scalar(f"{event}/{name}", value, step)
        curve = record.get("accuracy_by_segment")
        if event in ("val", "test") and isinstance(curve, list) and curve:
            self.writer.add_figure(f"{event}/accuracy_by_segment", _curve_figure(curve), step)
        self.writer.flush()

    def trace(self, data: dict[str, Any], step: int) -> None:
        """The PNG strip of a trace (`ponder.viz.trace.write_strip`) as an image."""
        import numpy as np
        from PIL import Image

        from ponder.viz.trace import write_strip

        with tempfile.TemporaryDirectory() as tmp:
            path = write_strip(data, Path(tmp) / "strip.png")
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image("val/thinking", pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _curve_figure(curve: list[float]):
    from ponder.viz.plots import _figure

    fig, ax = _figure(4.0, 1)
    ax.plot(range(1, len(curve) + 1), curve, marker="o")
    ax.set_xlabel("segments (thinking steps)")
    ax.set_ylabel("exact accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
