"""Hard Sudoku on a CPU: a model trained on generated puzzles only (easiest first, up to
minimal puzzles), scored on the hardest published puzzles (`sudoku-hard-test`).

    python benchmarks/hard_sudoku.py files --out DIR
        DIR/hard-val.txt: the validation sample of `sudoku-extreme-1k` (forum-hardest
        puzzles, disjoint from the test sample and from the Sudoku-Extreme training
        puzzles), one per line, for the run's task.val_file; DIR/hard-test: the
        `sudoku-hard-test` dataset folder for `ponder eval --data`

    ponder train --preset trm-sudoku-hard-cpu --out RUN task.val_file=DIR/hard-val.txt

    python benchmarks/hard_sudoku.py difficulty RUN --data DIR/hard-test [--n 200]
        how much search the training puzzles and the test puzzles need: quantiles of
        `ponder.tasks.sudoku.difficulty` (blanks + the exact solver's guesses)

    python benchmarks/hard_sudoku.py report RUN --data DIR/hard-test [--segments 32] [--starts 4]
                                     [--val DIR/hard-val.txt --noises 0.5 1] [--out DIR]
        validation accuracy on hard puzzles against training time (from the run's log),
        and test accuracy on `sudoku-hard-test` by segments x starts, two ways: vote over
        the starts, and verified (the first answer that is a valid grid keeping the
        givens, every start stopping there; `ponder.eval.breadth`), with the segments it
        runs. With --val the starts' initial-noise scale is chosen on those validation
        puzzles (verified accuracy at the most segments and starts), then tested

    python benchmarks/hard_sudoku.py hints RUN --data DIR/hard-val.txt [--given 0 1 3 5 10] [--segments 8]
        a diagnostic that reads the labels: exact accuracy when k random blank cells of
        each puzzle get their right digit before the model runs. It says how far the
        model is from solving once a few cells are right (what `ponder eval --branch`
        searches for without labels)

    python benchmarks/hard_sudoku.py seeds EVAL.json EVAL.json ... [--depths 0 5 8 9]
        the branching table over training seeds: each file is one seed's
        `ponder eval --branch D --json` output (same settings, same puzzles); exact
        accuracy per seed and its mean ± standard deviation, and the mean segment-runs
        per puzzle, by depth limit

Nothing here trains on a test file: training data are generated (`task.max_blanks`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ponder import api
from ponder.config import TaskConfig
from ponder.run_folder import read_log
from ponder.tasks import sudoku
from ponder.tasks.builders import build
from ponder.tasks.dataset import save_dataset


def write_files(out: Path, val_size: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    val = build(TaskConfig(name="sudoku-extreme-1k", val_size=val_size), splits=("val",), progress=True).splits["val"]
    lines = [sudoku.format_grid(p) for p in val.inputs]
    (out / "hard-val.txt").write_text("# forum-hardest puzzles: the validation sample of sudoku-extreme-1k (seed 0)\n" + "\n".join(lines) + "\n")
    print(f"wrote {out / 'hard-val.txt'} ({len(lines)} puzzles)")
    test = build(TaskConfig(name="sudoku-hard-test"), splits=("test",), progress=True)
    save_dataset(test, out / "hard-test")
    print(f"wrote {out / 'hard-test'}")


def val_curve(run: Path) -> list[dict]:
    """(step, training minutes, validation accuracy) at every validation of the run."""
    return [{"step": e["step"], "minutes": e["train_seconds"] / 60, "accuracy": e["exact_accuracy"]}
            for e in read_log(run) if e.get("event") == "val"]


def choose_noise(run: Path, val: Path, segments: int, starts: int, noises: list[float]) -> tuple[float, dict[float, float]]:
    """The initial-noise scale with the best verified accuracy on the validation
    puzzles, at `segments` x `starts` (ties: the first listed)."""
    scores = {}
    for noise in noises:
        b = api.evaluate(str(run), data=str(val), segments=segments, breadth=starts, init_noise=noise)["breadth"]
        scores[noise] = b["accuracy"]["verified"][-1][-1]
        print(f"validation, init noise {noise}: verified {scores[noise]:.1%} at {segments} segments x {starts} starts", file=sys.stderr)
    return max(noises, key=lambda n: scores[n]), scores


def report(run: Path, data: Path, segments: int, starts: int, out: Path | None,
           val: Path | None = None, noises: tuple[float, ...] = (0.5,)) -> str:
    """The validation curve from the run's log, and one evaluation of the test set with
    `starts` starting states run for `segments` segments, read at every (segments,
    starts) of the table under vote and verified selection."""
    lines = [f"# Hard Sudoku: {run}", "", "## Validation (forum-hardest puzzles, disjoint from test) against training time", "",
             "| step | training minutes | exact accuracy (16 segments) |", "|---|---|---|"]
    for r in val_curve(run):
        lines.append(f"| {r['step']} | {r['minutes']:.1f} | {r['accuracy']:.1%} |")
    noise, val_scores = (choose_noise(run, val, segments, starts, list(noises)) if val is not None else (noises[0], {}))
    result = api.evaluate(str(run), data=str(data), segments=segments, breadth=starts, init_noise=noise)
    if val_scores:
        result["val_verified_accuracy_by_noise"] = val_scores
    b = result["breadth"]
    shown = [s for s in (1, 2, 4, 8, 16, 32, 64, 128) if s <= segments]
    lines += ["", f"## Test: {result['data']}, {result['n']} puzzles; exact accuracy by segments x starts", "",
              f"One start: {result['exact_accuracy']:.1%} after {segments} segments, {result['halting_accuracy']:.1%} where the halting head stops "
              f"({result['mean_segments']:.2f} segments on average). Starts 2..{starts}: initial noise {noise}"
              + (" (chosen on validation: " + ", ".join(f"{n}: {a:.1%}" for n, a in val_scores.items()) + ")" if val_scores else "")
              + f". Network calls per puzzle = segments x starts x {b['calls_per_segment']}.", "",
              "Vote: the most frequent answer of the starts after the given segments.", "",
              "| segments | " + " | ".join(f"{k} start{'s' if k > 1 else ''}" for k in b["breadths"]) + " |",
              "|---" * (len(b["breadths"]) + 1) + "|"]
    for s in shown:
        lines.append(f"| {s} | " + " | ".join(f"{acc:.1%}" for acc in b["accuracy"]["vote"][s - 1]) + " |")
    lines += ["", "Verified: the first answer that is a valid grid keeping the givens, all starts stopping there "
              "(no label read; else the vote at the limit); in brackets the segment-runs it spends per puzzle (segments x starts).", "",
              "| segment limit | " + " | ".join(f"{k} start{'s' if k > 1 else ''}" for k in b["breadths"]) + " |",
              "|---" * (len(b["breadths"]) + 1) + "|"]
    for s in shown:
        cells = [f"{acc:.1%} ({used * k:.1f})" for acc, used, k in zip(b["accuracy"]["verified"][s - 1], b["verified_segments"][s - 1], b["breadths"])]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(text + "\n")
        (out / "eval.json").write_text(json.dumps(result, indent=1))
    return text


def difficulty_table(run: Path, data: Path, n: int) -> str:
    """Quantiles of `sudoku.difficulty` over the run's first `n` training puzzles (its
    dataset, read from the cache where the run left it, with the difficulty stored at the
    build) and over the first `n` test puzzles."""
    from ponder.run_folder import load_config
    from ponder.tasks import load_dataset_for
    from ponder.tasks.dataset import load_dataset

    train = load_dataset_for(load_config(run).task, progress=True).splits["train"]
    test = load_dataset(data).splits["test"]
    rows = {f"training puzzles (first {n})": train.extra["difficulty"][:n].tolist(),
            f"test puzzles (first {n})": [sudoku.difficulty(p) for p in test.inputs[:n]]}
    qs = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
    lines = ["| puzzles | " + " | ".join(f"{int(q * 100)}th pct" for q in qs) + " | max |", "|---" * (len(qs) + 2) + "|"]
    for name, values in rows.items():
        values = sorted(values)
        pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
        lines.append(f"| {name} | " + " | ".join(str(pick(q)) for q in qs) + f" | {values[-1]} |")
    return "\n".join(lines)


def with_hints(puzzles, solutions, k: int, gen):
    """(N, 81) puzzles with `k` random blank cells each (all where fewer) set to the
    solution's digit."""
    import torch

    hinted = puzzles.clone()
    for row in range(len(puzzles)):
        blanks = (puzzles[row] == sudoku.BLANK).nonzero().flatten()
        cells = blanks[torch.randperm(len(blanks), generator=gen)[:k]]
        hinted[row, cells] = solutions[row, cells]
    return hinted


def hint_curve(run: Path, data: Path, given: list[int], segments: int, seed: int = 0) -> dict[int, float]:
    """Exact accuracy after `segments` segments when `k` random blank cells per puzzle of
    a puzzle file hold their label's digit, for each k in `given` (seeded; reads labels)."""
    import torch

    from ponder.eval.evaluate import run_segments
    from ponder.train.losses import answer_correct

    _, model, device = api.load_trained(str(run))
    model.eval()
    puzzles, solutions = (torch.from_numpy(a).long() for a in sudoku.read_puzzles(data))
    gen = torch.Generator().manual_seed(seed)
    curve = {}
    for k in given:
        preds = run_segments(model, with_hints(puzzles, solutions, k, gen).to(device), segments).preds[:, -1].cpu()  # (N, L)
        curve[k] = round(float(answer_correct(preds, solutions).float().mean()), 6)
    return curve


SAME_SETTINGS = ("n", "segments", "branch_segments", "depth", "width")  # what every seed's branching run must share


def seeds_table(paths: list[Path], depths: list[int] | None = None) -> str:
    """Markdown: exact accuracy by depth limit for each seed's branching evaluation, the
    mean ± sample standard deviation over seeds, and the mean segment-runs per puzzle."""
    import statistics

    runs = []
    for path in paths:
        try:
            branch = json.loads(Path(path).read_text())["branch"]
            runs.append({key: branch[key] for key in (*SAME_SETTINGS, "accuracy", "segment_runs")})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}: expected the JSON of 'ponder eval --branch D --json' ({type(e).__name__}: {e})")
    for path, run in zip(paths[1:], runs[1:]):
        differ = [key for key in SAME_SETTINGS if run[key] != runs[0][key]]
        if differ:
            raise SystemExit(f"{path}: {', '.join(f'{k} {run[k]}' for k in differ)}; {paths[0]} has "
                             f"{', '.join(f'{k} {runs[0][k]}' for k in differ)}: the seeds must share their settings")
    depths = list(range(runs[0]["depth"] + 1)) if depths is None else depths
    if not depths or max(depths) > runs[0]["depth"] or min(depths) < 0:
        raise SystemExit(f"--depths: expected limits within 0..{runs[0]['depth']}, got {depths}")
    lines = ["| depth limit | " + " | ".join(Path(p).stem for p in paths) + " | mean ± std | segment-runs per puzzle (mean) |",
             "|---" * (len(runs) + 3) + "|"]
    for d in depths:
        accs = [run["accuracy"][d] for run in runs]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {d} | " + " | ".join(f"{a:.1%}" for a in accs)
                     + f" | {statistics.mean(accs):.1%} ± {spread:.1%} | {statistics.mean(r['segment_runs'][d] for r in runs):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    f = sub.add_parser("files")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--val-size", type=int, default=250)
    d = sub.add_parser("difficulty")
    d.add_argument("run", type=Path)
    d.add_argument("--data", type=Path, required=True)
    d.add_argument("--n", type=int, default=500)
    r = sub.add_parser("report")
    r.add_argument("run", type=Path)
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--segments", type=int, default=32)
    r.add_argument("--starts", type=int, default=4)
    r.add_argument("--val", type=Path, help="validation puzzles (a puzzle-per-line file) to choose the initial noise on")
    r.add_argument("--noises", type=float, nargs="+", default=[0.5], help="initial-noise scales to try on --val (the first without it)")
    r.add_argument("--out", type=Path)
    h = sub.add_parser("hints")
    h.add_argument("run", type=Path)
    h.add_argument("--data", type=Path, required=True, help="a puzzle file with solutions (one puzzle per line or a CSV)")
    h.add_argument("--given", type=int, nargs="+", default=[0, 1, 3, 5, 10])
    h.add_argument("--segments", type=int, default=8)
    e = sub.add_parser("seeds")
    e.add_argument("evals", type=Path, nargs="+", help="one 'ponder eval --branch D --json' output per training seed")
    e.add_argument("--depths", type=int, nargs="+", help="depth limits to show (default: all)")
    args = parser.parse_args(argv)
    if args.verb == "seeds":
        print(seeds_table(args.evals, args.depths))
    elif args.verb == "hints":
        curve = hint_curve(args.run, args.data, args.given, args.segments)
        print("| right cells given | " + " | ".join(str(k) for k in curve) + " |")
        print("|---" * (len(curve) + 1) + "|")
        print(f"| exact accuracy, {args.segments} segments | " + " | ".join(f"{a:.1%}" for a in curve.values()) + " |")
    elif args.verb == "files":
        write_files(args.out, args.val_size)
    elif args.verb == "difficulty":
        print(difficulty_table(args.run, args.data, args.n))
    else:
        print(report(args.run, args.data, args.segments, args.starts, args.out, args.val, tuple(args.noises)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
