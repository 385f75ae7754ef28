"""Tuning the attractor family on validation, and the runs it is compared with.

    python benchmarks/attractor.py sweep --out runs/attractor-sweep --jobs 2
    python benchmarks/attractor.py report runs/attractor-sweep --record records/attractor-sudoku-cpu/tuning

`sweep` trains `attractor-sudoku-cpu` for `--steps` batches (150: a quarter of the
preset, its cosine schedule compressed to fit) once per setting in `GRID` (learning
rate, Jacobian regulariser weight, proposal loss weight), `JOBS` at a time on one thread
each, with a one-puzzle test split: the choice is made on the 250 validation puzzles
alone. A folder that already holds results is skipped. `report` tabulates each run's
validation exact accuracy after 16 segments and after one, and with the solver removed
(`--solver-iters 0`: the heads read the proposal; exact after 1 and 16 segments, and
the share of cells right), and copies the runs' files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from records import run_jobs, train_command, write_record

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (learning rate, Jacobian weight, proposal weight), in the order they were run
GRID = [(0.00125, 1.0, 0.0), (0.0025, 1.0, 0.0), (0.005, 1.0, 0.0), (0.00125, 0.3, 0.0), (0.00125, 3.0, 0.0),
        (0.00125, 1.0, 1.0), (0.000625, 1.0, 0.0)]


def name_of(lr: float, jacobian: float, proposal: float) -> str:
    return f"lr{lr:g}_jw{jacobian:g}" + (f"_prop{proposal:g}" if proposal else "")


def sweep(out: Path, steps: int, jobs: int) -> None:
    run_jobs([train_command(out / name_of(lr, jacobian, proposal), "--preset", "attractor-sudoku-cpu", f"train.steps={steps}",
                            f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "task.test_size=1", "train.threads=1",
                            f"train.lr={lr}", f"model.jacobian_weight={jacobian}", f"model.proposal_weight={proposal}")
              for lr, jacobian, proposal in GRID], jobs)


def last_val(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("event") == "val"][-1]


def report(root: Path, record: Path | None) -> str:
    from ponder import api

    lines = ["| learning rate | Jacobian weight | proposal weight | val exact, 16 segments | val exact, 1 segment | "
             "solver removed: val exact, 1 / 16 segments | solver removed: val cells, 16 segments | training s |",
             "|---|---|---|---|---|---|---|---|"]
    for lr, jacobian, proposal in GRID:
        run = root / name_of(lr, jacobian, proposal)
        if not (run / "results.json").exists():
            continue
        val = last_val(run)
        removed = run / "val-solver0.json"
        if not removed.exists():
            removed.write_text(json.dumps(api.evaluate(str(run), split="val", solver_iters=0)) + "\n")
        without = json.loads(removed.read_text())
        seconds = json.loads((run / "results.json").read_text())["train_seconds"]
        lines.append(f"| {lr:g} | {jacobian:g} | {proposal:g} | {val['exact_accuracy']:.1%} | {val['accuracy_by_segment'][0]:.1%} | "
                     f"{without['accuracy_by_segment'][0]:.1%} / {without['exact_accuracy']:.1%} | {without['cell_accuracy']:.1%} | {seconds:.0f} |")
    text = "\n".join(lines)
    if record is not None:
        write_record(root, "*/results.json", record, text, lambda path: None, "")
        for run in root.glob("*/val-solver0.json"):
            shutil.copy(run, record / root.name / run.parent.name / run.name)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--out", type=Path, default=Path("runs/attractor-sweep"))
    s.add_argument("--steps", type=int, default=150)
    s.add_argument("--jobs", type=int, default=2)
    r = sub.add_parser("report")
    r.add_argument("root", type=Path)
    r.add_argument("--record", type=Path)
    args = parser.parse_args()
    if args.command == "sweep":
        sweep(args.out, args.steps, args.jobs)
    else:
        print(report(args.root, args.record))


if __name__ == "__main__":
    main()
