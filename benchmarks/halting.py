"""Stopping and winner-take-all tables for the README, from trained Sudoku runs.

    python benchmarks/halting.py stop RUN [RUN ...] [--out DIR]
        per run: test accuracy after every segment, with the trained halting head, and
        with the stop rule chosen on validation (`calibrated_halting` of its results, or
        `ponder eval --calibrate-halting` for a run trained before it existed); and the
        trade-off curve of the first run

    python benchmarks/halting.py breadth RUN [RUN ...] [--starts 4] [--segments 8] [--out DIR]
        per run: test-time breadth with vote and first-to-halt at equal compute
        (segments x starts network calls), from `ponder eval --breadth`

A RUN may also be the saved output of that `ponder eval ... --json`. The runs' own
results are read as they are; nothing here trains.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ponder import api
from ponder.run_folder import read_results


def saved_or(run: str, evaluate) -> dict:
    """A saved `ponder eval --json` output, or `evaluate(run)`."""
    return json.loads(Path(run).read_text()) if run.endswith(".json") else evaluate(run)


def stop_rows(runs: list[str]) -> list[dict]:
    rows = []
    for run in runs:
        results = {} if run.endswith(".json") else read_results(Path(run)) or {}
        if "calibrated_halting" not in results:
            results = saved_or(run, lambda r: api.evaluate(r, calibrate_halting=True))
        c = results["calibrated_halting"]
        rows.append({
            "run": run, "n": results["n"], "segments": results["segments"], "all_segments": results["exact_accuracy"],
            "head": results["halting_accuracy"], "head_segments": results["mean_segments"],
            "rule": c["describe"], "accuracy": c["accuracy"], "mean_segments": c["mean_segments"],
            "val_accuracy": c["val_accuracy"], "val_segments": c["val_segments"], "val_all_segments": c["val_all_segments"],
            "frontier": c["frontier"],
        })
    return rows


def stop_table(rows: list[dict]) -> str:
    lines = ["| run | all segments | halting head (mean segments) | stop rule chosen on validation (mean segments) | gap | the rule |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['all_segments']:.1%} | {r['head']:.1%} ({r['head_segments']:.2f}) | "
                     f"**{r['accuracy']:.1%} ({r['mean_segments']:.2f})** | {100 * (r['accuracy'] - r['all_segments']):+.1f} | {r['rule']} |")
    if len(rows) > 1:
        mean = lambda key: statistics.mean(r[key] for r in rows)  # noqa: E731
        sd = lambda key: statistics.stdev(r[key] for r in rows)  # noqa: E731
        lines.append(f"| mean ± sd | {mean('all_segments'):.1%} ± {sd('all_segments'):.1%} | {mean('head'):.1%} ({mean('head_segments'):.2f}) | "
                     f"**{mean('accuracy'):.1%} ± {sd('accuracy'):.1%} ({mean('mean_segments'):.2f})** | "
                     f"{100 * (mean('accuracy') - mean('all_segments')):+.1f} | |")
    first = rows[0]
    lines += ["", f"Trade-off curve of {first['run']} (the validation frontier, each rule then scored on the test split):", "",
              "| validation mean segments | validation accuracy | test mean segments | test accuracy | rule |", "|---|---|---|---|---|"]
    lines += [f"| {p['val_segments']:.2f} | {p['val_accuracy']:.1%} | {p['segments']:.2f} | {p['accuracy']:.1%} | {p['describe']} |" for p in first["frontier"]]
    return "\n".join(lines)


def breadth_rows(runs: list[str], starts: int, segments: int) -> list[dict]:
    rows = []
    for run in runs:
        result = saved_or(run, lambda r: api.evaluate(r, segments=segments, breadth=starts))
        b = result["breadth"]
        rows.append({"run": run, "n": result["n"], "breadths": b["breadths"], "vote": b["accuracy"]["vote"],
                     "first_halt": b["accuracy"]["first_halt"], "first_halt_segments": b["first_halt_segments"],
                     "oracle": b["accuracy"]["oracle"]})
    return rows


def breadth_table(rows: list[dict]) -> str:
    """Vote at s segments x k starts against first-to-halt with the limit s (which runs
    at most s x k, reported as its mean)."""
    lines = ["| run | starts k | segment limit s | vote: accuracy (segments x k) | first to halt: accuracy (mean segments x k) | oracle |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for j, k in enumerate(r["breadths"]):
            for s in (2, 4, len(r["vote"])):
                if s > len(r["vote"]):
                    continue
                lines.append(f"| {r['run']} | {k} | {s} | {r['vote'][s - 1][j]:.1%} ({s * k}) | "
                             f"{r['first_halt'][s - 1][j]:.1%} ({r['first_halt_segments'][s - 1][j] * k:.1f}) | {r['oracle'][s - 1][j]:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("stop", "breadth"))
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--starts", type=int, default=4)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.what == "stop":
        rows = stop_rows(args.runs)
        table = stop_table(rows)
    else:
        rows = breadth_rows(args.runs, args.starts, args.segments)
        table = breadth_table(rows)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.what}.json").write_text(json.dumps(rows, indent=1) + "\n")
        (args.out / f"{args.what}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
