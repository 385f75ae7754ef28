"""Every family under one harness: same data, same training-time budget, several seeds.

    python benchmarks/zoo.py run --out runs/zoo --minutes 3 --seeds 0 1 2
    python benchmarks/zoo.py report runs/zoo --record records/zoo-cpu

`run` trains `<family>-sudoku-cpu` for each family into `OUT/<family>/seed<k>` with
`train.budget_minutes=MINUTES` (training time; data generation and evaluation come on
top) and `train.seed=k`; a folder that already holds results is skipped, so an
interrupted comparison continues where it stopped. `report` reads those folders and
writes a Markdown table (test exact accuracy, mean and sample std over seeds; batches
trained; accuracy after 1, 2, 4, 8 and 16 segments) and a PNG of accuracy vs segments,
and copies each run's config, log and results next to them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from records import write_record

FAMILIES = ("trm", "hrm", "looped", "urm", "score", "depthrec", "transformer")


def run(out: Path, minutes: float, seeds: list[int], families: list[str]) -> None:
    from ponder import api

    for seed in seeds:  # seeds outermost: a cut-short comparison still covers every family
        for family in families:
            folder = out / family / f"seed{seed}"
            if (folder / "results.json").exists():
                continue
            if folder.exists():
                shutil.rmtree(folder)  # an interrupted time-bound run cannot be resumed exactly: start it again
            print(f"== {family} seed {seed}", flush=True)
            api.train([f"train.budget_minutes={minutes}", f"train.seed={seed}"], preset=f"{family}-sudoku-cpu", out=str(folder))


def collect(root: Path) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for path in sorted(root.glob("*/seed*/results.json")):
        results.setdefault(path.parent.parent.name, []).append(json.loads(path.read_text()))
    return results


def table(results: dict[str, list[dict]]) -> str:
    shown = [1, 2, 4, 8, 16]
    head = "| family | seeds | test exact accuracy (mean ± std) | batches trained | " + " | ".join(f"{k} seg" for k in shown) + " |"
    lines = [head, "|" + "---|" * (4 + len(shown))]
    for family in [f for f in FAMILIES if f in results] + sorted(set(results) - set(FAMILIES)):
        runs = results[family]
        acc = [r["exact_accuracy"] for r in runs]
        spread = f" ± {100 * statistics.stdev(acc):.1f}" if len(acc) > 1 else ""
        curve = [statistics.mean(r["accuracy_by_segment"][k - 1] for r in runs) for k in shown]
        steps = "/".join(str(r["step"]) for r in runs)
        lines.append(f"| {family} | {len(runs)} | {100 * statistics.mean(acc):.1f}%{spread} | {steps} | " + " | ".join(f"{100 * c:.1f}%" for c in curve) + " |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family, runs in results.items():
        curves = [r["accuracy_by_segment"] for r in runs]
        mean = [statistics.mean(c[k] for c in curves) for k in range(len(curves[0]))]
        ax.plot(range(1, len(mean) + 1), mean, "o-", ms=3, label=f"{family} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
    ax.set(xlabel="segments (thinking steps)", ylabel="test exact accuracy", ylim=(0, 1.02), title="every family, same data and training-time budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(root: Path, record: Path | None) -> None:
    results = collect(root)
    if not results:
        raise SystemExit(f"{root}: no */seed*/results.json found; run `python benchmarks/zoo.py run --out {root}` first")
    text = table(results)
    print(text)
    if record is None:
        return
    write_record(root, "*/seed*/results.json", record, text, lambda path: plot(results, path), "accuracy_vs_segments.png")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, default=Path("runs/zoo"))
    r.add_argument("--minutes", type=float, default=3.0)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p = sub.add_parser("report")
    p.add_argument("root", type=Path)
    p.add_argument("--record", type=Path)
    args = parser.parse_args()
    if args.verb == "run":
        run(args.out, args.minutes, args.seeds, args.families)
    else:
        report(args.root, args.record)


if __name__ == "__main__":
    main()
