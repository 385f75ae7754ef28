"""Depth extrapolation on the compositional suite: train on shallow problems, test on
deeper ones, and watch accuracy as test-time segments grow.

    python benchmarks/depth.py run --out runs/depth --minutes 10 --jobs 2
    python benchmarks/depth.py evaluate runs/depth      # optional: re-score with per-depth cell accuracy
    python benchmarks/depth.py report runs/depth --record records/depth-cpu

`run` trains `<family>-<task>` (TRM and its parameter-matched transformer baseline by
default) for each task into `OUT/<task>/<family>` with `train.budget_minutes=MINUTES`,
`JOBS` runs at a time, each on `train.threads=THREADS`; a folder that already holds
results is skipped. `evaluate` re-scores each finished run's test split (EMA weights)
into `eval.json` beside its `results.json`, which `report` then prefers. `report` writes a Markdown table (test exact accuracy per problem
depth after the last segment and after the segments training ran, the training depths
marked, and the accuracy on depths beyond training after 1, 2, 4, 8 and 16 segments) and a PNG, and copies each run's
config, log and results next to them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from records import run_jobs, train_command, write_record

from ponder.tasks.compositional import TASKS as COMPOSITIONAL_TASKS

TASKS = ("graph-reach", "bool-depth", "khop", "cellular")  # the default run: each has a trm- and a transformer- preset
FAMILIES = ("trm", "transformer")
SHOWN_SEGMENTS = (1, 2, 4, 8, 16)


def run(out: Path, minutes: float, tasks: list[str], families: list[str], seed: int, jobs: int, threads: int) -> None:
    from ponder.config import preset_names

    missing = sorted({f"{family}-{task}" for task in tasks for family in families} - set(preset_names()))
    if missing:  # e.g. graph-lists has looped- and transformer- presets: --tasks graph-lists --families looped transformer
        raise SystemExit(f"no preset named {', '.join(missing)}: pick --families with a preset for each of --tasks")
    run_jobs([train_command(out / task / family, "--preset", f"{family}-{task}", f"train.budget_minutes={minutes}",
                            f"train.seed={seed}", f"train.threads={threads}")
              for task in tasks for family in families], jobs)


def evaluate(root: Path) -> None:
    from ponder import api

    for path in sorted(root.glob("*/*/results.json")):
        print(f"== {path.parent}", flush=True)
        result = api.evaluate(str(path.parent))
        (path.parent / "eval.json").write_text(json.dumps({**result, "step": json.loads(path.read_text())["step"]}, indent=2) + "\n")


def collect(root: Path) -> dict[str, dict[str, dict]]:
    """{task: {family: results}}, with each run's training depth range."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted(root.glob("*/*/results.json")):
        rescored = path.parent / "eval.json"
        result = json.loads((rescored if rescored.exists() else path).read_text())
        config = json.loads((path.parent / "config.json").read_text())
        result["train_depths"] = config["task"]["train_depths"]
        result["train_segments"] = config["train"]["max_segments"]
        out.setdefault(path.parent.parent.name, {})[path.parent.name] = result
    return out


def _train_max(result: dict, task: str) -> int:
    from ponder.config import TaskConfig
    from ponder.tasks.builders import get_builder

    depths = result["train_depths"] or get_builder(task).resolve(TaskConfig(name=task)).train_depths
    return int(depths.split("-")[-1])


def _beyond(result: dict, train_max: int, segment: int) -> float:
    """Mean over the depths beyond training of the accuracy after `segment` segments."""
    by_depth = result["accuracy_by_depth"]
    deep = [d for d in by_depth if int(d) > train_max]
    return sum(by_depth[d][segment - 1] for d in deep) / len(deep)


def table(results: dict[str, dict[str, dict]]) -> str:
    lines = []
    for task, runs in results.items():
        any_run = next(iter(runs.values()))
        depths = sorted(any_run["accuracy_by_depth"], key=int)
        train_max = _train_max(any_run, task)
        segments = any_run["segments"]
        shown = [k for k in SHOWN_SEGMENTS if k <= segments]
        lines.append(f"**{task}** (trained on depths 1-{train_max}; test: {any_run['n']} problems, depths {depths[0]}-{depths[-1]}, {segments} segments)\n")
        head = ["family", "batches"] + [f"depth {d}{'*' if int(d) <= train_max else ''}" for d in depths] + [f"deeper, {k} seg" for k in shown]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for family in [f for f in FAMILIES if f in runs] + sorted(set(runs) - set(FAMILIES)):
            r = runs[family]
            cells = [family, str(r["step"])] + [f"{100 * r['accuracy_by_depth'][d][-1]:.1f}%" for d in depths]
            cells += [f"{100 * _beyond(r, train_max, k):.1f}%" for k in shown]
            lines.append("| " + " | ".join(cells) + " |")
            trained = r["train_segments"]
            if trained < segments:  # thinking past the segments training ran can lose what they reached
                cells = [f"{family} (after {trained} seg)", ""] + [f"{100 * r['accuracy_by_depth'][d][trained - 1]:.1f}%" for d in depths]
                lines.append("| " + " | ".join(cells + [""] * len(shown)) + " |")
            if "cell_accuracy_by_depth" in r:  # per-position accuracy: progress that exact match hides
                cells = [f"{family} (cells)", ""] + [f"{100 * r['cell_accuracy_by_depth'][d]:.1f}%" for d in depths] + [""] * len(shown)
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4 * len(results), 7), squeeze=False)
    for col, (task, runs) in enumerate(results.items()):
        top, bottom = axes[0][col], axes[1][col]
        for i, (family, r) in enumerate(sorted(runs.items())):
            color = f"C{i}"  # one colour per family in both panels
            depths = sorted(r["accuracy_by_depth"], key=int)
            train_max = _train_max(r, task)
            top.plot([int(d) for d in depths], [r["accuracy_by_depth"][d][-1] for d in depths], "o-", ms=3, color=color, label=f"{family}, {r['segments']} seg")
            top.plot([int(d) for d in depths], [r["accuracy_by_depth"][d][3] for d in depths], "x--", ms=3, alpha=0.6, color=color, label=f"{family}, 4 seg")
            segs = range(1, r["segments"] + 1)
            bottom.plot(list(segs), [_beyond(r, train_max, k) for k in segs], "o-", ms=3, color=color, label=family)
        top.axvspan(0.5, train_max + 0.5, color="0.9", zorder=0)
        top.set(title=task, xlabel="problem depth (shaded: trained)", ylabel="test exact accuracy", ylim=(0, 1.02))
        bottom.set(xlabel="segments at test time", ylabel=f"accuracy on depths > {train_max}", ylim=(0, 1.02))
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(root: Path, record: Path | None) -> None:
    results = collect(root)
    if not results:
        raise SystemExit(f"{root}: no */*/results.json found; run `python benchmarks/depth.py run --out {root}` first")
    text = table(results)
    print(text)
    if record is None:
        return
    write_record(root, "*/*/results.json", record, text, lambda path: plot(results, path), "accuracy_by_depth.png")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, default=Path("runs/depth"))
    r.add_argument("--minutes", type=float, default=10.0)
    r.add_argument("--tasks", nargs="+", default=list(TASKS), choices=sorted(COMPOSITIONAL_TASKS))
    r.add_argument("--families", nargs="+", default=list(FAMILIES))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--jobs", type=int, default=2, help="runs at a time")
    r.add_argument("--threads", type=int, default=1, help="torch threads per run")
    e = sub.add_parser("evaluate")
    e.add_argument("root", type=Path)
    p = sub.add_parser("report")
    p.add_argument("root", type=Path)
    p.add_argument("--record", type=Path)
    args = parser.parse_args()
    if args.verb == "run":
        run(args.out, args.minutes, args.tasks, args.families, args.seed, args.jobs, args.threads)
    elif args.verb == "evaluate":
        evaluate(args.root)
    else:
        report(args.root, args.record)


if __name__ == "__main__":
    main()
