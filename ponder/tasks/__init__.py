"""Tasks: fixed-length token sequences with labels, split into train / val / test.

`load_task(cfg)` returns a task's splits as tensors, either read from a folder written
by `ponder data build` (`task.data_dir`) or built in memory by the task's builder in
`ponder.tasks.builders`. Validation is for watching a run and for choosing settings;
test is run once at the end and must never be used to choose anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ponder.config import TaskConfig
from ponder.errors import PonderInputError
from ponder.tasks.dataset import MANIFEST, ArraySplit, Dataset, load_dataset
from ponder.tasks.grids import IGNORE

__all__ = ["IGNORE", "Split", "TaskData", "load_task", "scorer", "task_data"]


@dataclass
class Split:
    inputs: torch.Tensor  # (N, L) int64 tokens
    labels: torch.Tensor  # (N, L) int64 target tokens, IGNORE where not scored
    ids: torch.Tensor | None = None  # (N,) int64 puzzle identifiers (0 = none)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # task-specific (N, ...) arrays, e.g. "depth"

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def difficulty(self) -> torch.Tensor | None:
        """(N,) how hard each example is, for a curriculum: the split's "difficulty"
        (generated Sudoku with task.max_blanks), else its "depth" (compositional
        tasks), else None."""
        return self.extra.get("difficulty", self.extra.get("depth"))

    @staticmethod
    def from_arrays(split: ArraySplit) -> "Split":
        tensors = {k: torch.from_numpy(v.astype("int64")) for k, v in split.extra.items()}
        return Split(
            inputs=torch.from_numpy(split.inputs.astype("int64")),
            labels=torch.from_numpy(split.labels.astype("int64")),
            ids=tensors.pop("ids", None),
            extra=tensors,
        )


@dataclass
class TaskData:
    name: str
    vocab: int
    seq_len: int
    train: Split
    val: Split
    test: Split
    attention_mask: torch.Tensor | None = None  # (L, L) bool structure, if the task has one
    num_puzzles: int = 0  # size of the puzzle-identifier table (largest id + 1), 0 if the task has none
    augment: Callable | None = None  # (inputs, labels, generator) -> (inputs, labels): a random symmetry per row
    score: Callable | None = None  # the task's own metrics, see `ponder.tasks.builders.Builder.score`
    info: dict = field(default_factory=dict)  # the dataset's task-specific metadata
    nearest_answer: Callable | None = None  # see `ponder.tasks.builders.Builder.nearest_answer`


def task_data(dataset: Dataset) -> TaskData:
    """Tensors and the task's helpers for a built dataset."""
    from ponder.tasks.builders import get_builder

    builder = get_builder(dataset.name)
    missing = [s for s in ("train", "val", "test") if s not in dataset.splits]
    if missing:
        raise PonderInputError(f"dataset '{dataset.name}' has no {', '.join(missing)} split; it cannot be trained on (it is an evaluation set)")
    splits = {name: Split.from_arrays(split) for name, split in dataset.splits.items()}
    ids = [s.ids for s in splits.values() if s.ids is not None]
    for split in splits.values():
        if ids and split.ids is None:  # puzzles without an identifier (held out): id 0 adds nothing
            split.ids = torch.zeros(len(split), dtype=torch.long)
    return TaskData(
        name=dataset.name,
        vocab=dataset.vocab,
        seq_len=dataset.seq_len,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        attention_mask=builder.attention_mask() if builder.attention_mask else None,
        num_puzzles=int(max(int(i.max()) for i in ids)) + 1 if ids else 0,
        augment=builder.augment,
        score=builder.score,
        info=dataset.info,
        nearest_answer=builder.nearest_answer,
    )


def cache_root() -> Path | None:
    """Where built datasets are kept for the next run: `$PONDER_CACHE` ("off": nowhere),
    default `~/.cache/ponder`."""
    env = os.environ.get("PONDER_CACHE", "")
    if env.lower() == "off":
        return None
    return Path(env) if env else Path.home() / ".cache" / "ponder"


def code_fingerprint() -> str:
    """SHA-256 of the task code (`ponder/tasks/*.py`): a cached build is used only by
    the generators that made it; a changed generator or encoding builds again."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def load_dataset_for(cfg: TaskConfig, progress: bool = False, splits: tuple[str, ...] = ("train", "val", "test")) -> Dataset:
    """The config's dataset: the folder `task.data_dir`, or built from the config (only
    `splits`). A whole build (all three splits) is kept in the cache folder under a
    hash of its spec, its raw files and the task code, so the next start or resume
    reads it instead of building it again."""
    from ponder.tasks.builders import SPLITS, build, get_builder, raw_fingerprint
    from ponder.tasks.dataset import save_dataset

    if cfg.data_dir:
        dataset = load_dataset(Path(cfg.data_dir))
        if dataset.name != cfg.name:
            raise PonderInputError(f"{cfg.data_dir}: holds a '{dataset.name}' dataset but task.name is '{cfg.name}'")
        return dataset
    root = cache_root()
    if root is None or tuple(splits) != SPLITS:
        return build(cfg, splits=splits, progress=progress)
    builder = get_builder(cfg.name)
    resolved = builder.resolve(cfg)
    files = [Path(f) for f in (resolved.train_file, resolved.val_file, resolved.test_file) if f]
    sources = raw_fingerprint(builder) + [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]
    spec = {"spec": builder.spec(resolved), "sources": sources, "code": code_fingerprint(), "format": 1}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    folder = root / "datasets" / f"{cfg.name}-{key}"
    if (folder / MANIFEST).is_file():
        try:
            return load_dataset(folder)
        except PonderInputError:
            pass  # damaged: build it again below
    dataset = build(cfg, splits=splits, progress=progress)
    try:  # write beside, then rename into place: another process may be building the same
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=_made(folder.parent)))
        save_dataset(dataset, tmp)
        if (folder / MANIFEST).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
    except OSError:
        pass  # a cache that cannot be written only costs the next run a build
    return dataset


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load_task(cfg: TaskConfig, progress: bool = False) -> TaskData:
    return task_data(load_dataset_for(cfg, progress))


def scorer(score: Callable | None, split: Split, info: dict, out_dir: Path | None = None) -> Callable | None:
    """`score` bound to one split, in the form `evaluate(..., score=)` takes."""
    if score is None:
        return None
    return lambda preds, halt_probs: score(split.inputs, preds, halt_probs, split, info, out_dir)
