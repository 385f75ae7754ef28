"""A run folder: the one place that knows its file names and how each is written.

    .lock                    held by the one process writing the folder (`FolderLock`)
    config.json              the resolved config
    metrics.jsonl            one JSON line per logged event (start/resume, train, val, test, stop)
    checkpoint.safetensors   the resumable training state (`ponder.train.checkpoint`), with
                             any extra shards beside it
    results.json             the final test evaluation
    curves.png               the plots of `ponder.viz.plots`

Every text file is written whole or not at all (`write_atomic`, through a temporary
name unique to the writer); one process writes a folder at a time; the log is append-only
and, on resume, cut back to the checkpoint's step so a resumed run logs exactly what an
uninterrupted one does.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
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


LOCK = ".lock"


def temporary_name(path: Path) -> Path:
    """A temporary file beside `path`, unique to this process and call, so two writers
    never share one: `<name>.<pid>-<random>.tmp`."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file so a reader never sees it half-written."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_temporaries(folder: Path) -> None:
    """Delete temporary files (`*.tmp`) that killed writers left in `folder`; call only
    while holding its `FolderLock`."""
    for f in Path(folder).glob("*.tmp"):
        try:
            f.unlink()
        except OSError:
            pass


class FolderLock:
    """An exclusive lock on a folder for the life of one writer (`ponder train`,
    `ponder data build`): `<folder>/.lock`, locked with `flock` and holding the writer's
    pid. A second writer gets a one-line error naming the holder. The lock dies with
    its process, so a killed writer never leaves the folder locked. (Where `flock` does
    not exist the lock is advisory only: the file is written, nothing is enforced.)"""

    def __init__(self, folder: Path, what: str = "run folder"):
        self.folder, self.what = Path(folder), what
        self.file = None
        self.created = False

    def __enter__(self) -> "FolderLock":
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise PonderInputError(f"{folder}: exists and is not a folder; expected a {self.what} (or a new path)")
        self.created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.file = open(folder / LOCK, "a+")
        except OSError as e:
            raise PonderInputError(f"{folder}: cannot write the {self.what} ({e.strerror or e})") from None
        try:
            import fcntl
        except ImportError:  # not POSIX: advisory only
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.file.seek(0)
                holder = self.file.read().strip() or "unknown"
                self.file.close()
                self.file = None
                raise PonderInputError(f"{folder}: another process (pid {holder}) is writing this {self.what}; wait for it or use another folder") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self.file is None:
            return
        failed_empty = kind is not None and self.created and [p.name for p in self.folder.iterdir()] == [LOCK]
        if failed_empty:  # a writer that failed before writing anything leaves no folder behind
            (self.folder / LOCK).unlink(missing_ok=True)
        self.file.close()  # closing releases the flock
        self.file = None
        if failed_empty:
            try:
                self.folder.rmdir()
            except OSError:
                pass


def holds_work(folder: Path) -> bool:
    """Whether `folder` holds anything besides its lock file."""
    return Path(folder).is_dir() and any(p.name != LOCK for p in Path(folder).iterdir())


class RunLog:
    """Append-only JSONL metrics log. On resume, lines past the checkpoint's step (and
    any final test or stop line, which the resumed run writes again) are dropped."""

    def __init__(self, path: Path, resume_step: int | None, mirror=None):
        """`mirror`: an object whose `write(record)` also gets every record (TensorBoard)."""
        self.path, self.mirror = Path(path), mirror
        if resume_step is not None and self.path.exists():
            kept = [json.dumps(r) for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step and r.get("event") not in ("test", "stop")]
            write_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.mirror is not None:
            self.mirror.write(record)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete record (a JSON object per line) of a JSONL log; a line that is not
    one (a last line cut off by a crash, bytes damaged on disk) is skipped: a log
    records a run, it does not steer it."""
    records = []
    for line in Path(path).read_bytes().decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    return read_jsonl(path) if path.exists() else []


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The final test results, or None if there are none (or they cannot be read: the
    plots that show them go without)."""
    try:
        results = json.loads((Path(run_dir) / RESULTS).read_bytes())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def load_config(run_dir: Path) -> RunConfig:
    """The config a run folder was trained with, checked key by key."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise PonderInputError(f"{run_dir}: no such run folder")
    if not path.is_file():
        if not any(p.name != LOCK for p in run_dir.iterdir()):
            raise PonderInputError(f"{run_dir}: empty, not a run folder (no {CONFIG}); a run stopped before it wrote anything starts again with 'ponder train --out {run_dir}'")
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
