"""Hard Sudoku on a CPU: a model trained on generated puzzles only (easiest first, up to
minimal puzzles), scored on the hardest published puzzles (`sudoku-hard-test`).

    python benchmarks/hard_sudoku.py files --out DIR
        DIR/hard-val.txt: the validation sample of `sudoku-extreme-1k` (forum-hardest
        puzzles, disjoint from the test sample and from the Sudoku-Extreme training
        puzzles), one per line, for the run's task.val_file; DIR/hard-test: the
        `sudoku-hard-test` dataset folder for `ponder eval --data`

    ponder train --preset trm-sudoku-hard-cpu --out RUN task.val_file=DIR/hard-val.txt

    python benchmarks/hard_sudoku.py report RUN --data DIR/hard-test [--segments 16,32,64] [--breadth 1,4] [--out DIR]
        validation accuracy on hard puzzles against training time (from the run's log),
        and test accuracy on `sudoku-hard-test` by segments x starts (vote over starts)

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


def report(run: Path, data: Path, segments: list[int], breadth: list[int], out: Path | None) -> str:
    lines = [f"# Hard Sudoku: {run}", "", "## Validation (forum-hardest puzzles, disjoint from test) against training time", "",
             "| step | training minutes | exact (16 segments) |", "|---|---|---|"]
    for r in val_curve(run):
        lines.append(f"| {r['step']} | {r['minutes']:.1f} | {r['accuracy']:.1%} |")
    lines += ["", f"## Test: sudoku-hard-test ({data}), exact accuracy by segments x starts (vote over starts)", ""]
    header = "| starts \\ segments | " + " | ".join(str(s) for s in segments) + " |"
    lines += [header, "|---" * (len(segments) + 1) + "|"]
    raw = {}
    for k in breadth:
        cells = []
        for s in segments:
            result = api.evaluate(str(run), data=str(data), segments=s, breadth=k if k > 1 else 0)
            raw[f"{k}x{s}"] = result
            acc = result["breadth"]["vote"][-1] if k > 1 else result["exact_accuracy"]
            cells.append(f"{acc:.1%}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(text + "\n")
        (out / "eval.json").write_text(json.dumps(raw, indent=1))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    f = sub.add_parser("files")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--val-size", type=int, default=250)
    r = sub.add_parser("report")
    r.add_argument("run", type=Path)
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--segments", default="16,32,64")
    r.add_argument("--breadth", default="1,4")
    r.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.verb == "files":
        write_files(args.out, args.val_size)
    else:
        ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
        print(report(args.run, args.data, ints(args.segments), ints(args.breadth), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
