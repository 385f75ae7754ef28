"""Language models side by side: the same corpus and tokenizer, the same wall-clock
budget per model, several seeds.

    python benchmarks/lm.py run --out runs/lm --minutes 3 --seeds 0 1 2
    python benchmarks/lm.py report runs/lm --record records/lm-shakespeare-cpu

`run` trains each `<model>-<corpus>` preset (default: gpt, recurrent-lm, ilr,
attractor-lm on shakespeare-char) into `OUT/<model>/seed<k>` with
`train.budget_minutes=MINUTES` (training time; the final evaluation comes on top),
`train.seed=k` and enough steps that the budget, not the step count, ends the run; one
run at a time, so each has the machine to itself. A folder that already holds results is
skipped. `report` writes a Markdown table (parameters; validation loss at the training
depth and at the best test-time depth, mean and spread over seeds; tokens per second;
steps; wall time), a plot of validation loss against test-time recurrence, and copies
each run's config, log and results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ("gpt", "recurrent-lm", "ilr", "attractor-lm")


def run(out: Path, minutes: float, seeds: list[int], models: list[str], corpus: str, threads: int, extra: list[str]) -> None:
    from ponder import api

    for seed in seeds:
        for model in models:
            folder = out / model / f"seed{seed}"
            if (folder / "results.json").exists():
                continue
            if folder.exists():
                import shutil

                shutil.rmtree(folder)
            print(f"{model} seed {seed}: {minutes} min", flush=True)
            overrides = [f"train.budget_minutes={minutes}", "train.steps=1000000", f"train.seed={seed}", f"train.threads={threads}", *extra]
            api.train(overrides, preset=f"{model}-{corpus}", out=str(folder), progress=False)


def summarise(root: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for results in sorted(root.glob("*/seed*/results.json")):
        model = results.parent.parent.name
        result = json.loads(results.read_text())
        log = [json.loads(line) for line in (results.parent / "metrics.jsonl").read_text().splitlines()]
        start = next(r for r in log if r["event"] == "start")
        config = json.loads((results.parent / "config.json").read_text())
        tokens = result["step"] * config["train"]["batch_size"] * config["model"]["context"]
        row = rows.setdefault(model, {"params": start["params"], "loss": [], "best": [], "best_r": [], "tokens_per_s": [], "steps": [], "wall": [], "curves": []})
        row["loss"].append(result["loss"])
        row["best"].append(result.get("best_loss", result["loss"]))
        row["best_r"].append(result.get("best_recurrence"))
        row["tokens_per_s"].append(tokens / result["train_seconds"])  # over the whole budget, periodic validation included
        row["steps"].append(result["step"])
        row["wall"].append(result["total_seconds"])
        row["curves"].append(result["loss_by_recurrence"])
        if "answers" in result:
            row.setdefault("answers", []).append(result["answers"])
            row["train_depths"] = trained_depths(config)
    return rows


def ordered(rows: dict[str, dict]) -> list[str]:
    """The models of `rows`, those of MODELS first in its order."""
    return [m for m in MODELS if m in rows] + sorted(set(rows) - set(MODELS))


def trained_depths(config: dict) -> tuple[int, int]:
    """The run's training depth range (its task option, else the corpus default)."""
    from ponder.config import parse_depth_range
    from ponder.lm.text import TEXT_TASKS

    spec = config["task"].get("train_depths") or TEXT_TASKS[config["task"]["name"]].options["train_depths"]
    return parse_depth_range(spec)


def answers_table(rows: dict[str, dict]) -> str:
    """Exact match of generated test answers by problem depth (columns; * marks the
    trained depths) for each model and test-time recurrence r (rows), mean over seeds."""
    rows = {m: r for m, r in rows.items() if "answers" in r}
    if not rows:
        return ""
    lo, hi = next(iter(rows.values()))["train_depths"]
    depths = sorted({int(d) for r in rows.values() for runs in r["answers"] for a in runs.values() for d in a["by_depth"]})
    head = " | ".join(f"{d}{'*' if lo <= d <= hi else ''}" for d in depths)
    lines = [f"| model | r | all | {head} |", "|---|---|---|" + "---|" * len(depths)]
    for model in ordered(rows):
        runs = rows[model]["answers"]
        for r in sorted(runs[0], key=lambda k: -1 if k == "default" else int(k)):
            cells = [statistics.mean(run[r]["by_depth"].get(str(d), float("nan")) for run in runs) for d in depths]
            overall = statistics.mean(run[r]["accuracy"] for run in runs)
            lines.append(f"| {model} | {'—' if r == 'default' else r} | {overall:.1%} | " + " | ".join(f"{c:.1%}" for c in cells) + " |")
    return "\n".join(lines)


def recurrence_table(rows: dict[str, dict]) -> str:
    """Validation loss by test-time recurrence r (columns), mean over seeds, for the
    models that have a recurrent core."""
    rows = {m: r for m, r in rows.items() if "default" not in r["curves"][0]}
    if not rows:
        return ""
    depths = sorted({int(k) for r in rows.values() for c in r["curves"] for k in c})
    lines = ["| model | " + " | ".join(f"r = {d}" for d in depths) + " |", "|---|" + "---|" * len(depths)]
    for model in ordered(rows):
        r = rows[model]
        cells = [statistics.mean(c[str(d)] for c in r["curves"]) if str(d) in r["curves"][0] else float("nan") for d in depths]
        lines.append(f"| {model} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: dict[str, dict]) -> str:
    lines = ["| model | params | seeds | validation loss at the training depth | best test-time depth: loss | tokens / s | steps | wall time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for model in ordered(rows):
        r = rows[model]
        depth = "—" if r["best_r"][0] is None else f"r = {'/'.join(str(x) for x in r['best_r'])}: {mean_std(r['best'])}"
        lines.append(f"| {model} | {r['params'] / 1e6:.3f}M | {len(r['loss'])} | {mean_std(r['loss'])} | {depth} | "
                     f"{statistics.mean(r['tokens_per_s']):,.0f} | {'/'.join(str(s) for s in r['steps'])} | {statistics.mean(r['wall']):.0f} |")
    return "\n".join(lines)


def plot(rows: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    means = {}  # model -> {r: mean loss over seeds} (r = None: no recurrence)
    for model, r in rows.items():
        curves = r["curves"]
        keys = ["default"] if "default" in curves[0] else sorted(curves[0], key=int)
        means[model] = {(None if k == "default" else int(k)): statistics.mean(c[k] for c in curves) for k in keys}
    low = min(v for m in means.values() for v in m.values())
    top = low + 0.5  # the interesting range; a point above it is written at the top edge
    for i, (model, curve) in enumerate(means.items()):
        if None in curve:
            ax.axhline(curve[None], color=f"C{i}", ls="--", label=f"{model} (no recurrence)")
            continue
        depths = sorted(curve)
        ax.plot(depths, [min(curve[d], top) for d in depths], "o-", color=f"C{i}", label=model)
        for d in depths:
            if curve[d] > top:
                ax.annotate(f"{curve[d]:.2f} (off scale)", (d, top), textcoords="offset points", xytext=(6, -12), fontsize=8, color=f"C{i}")
    ax.set_ylim(top=top + 0.02)
    ax.set(xscale="log", xlabel="test-time recurrence r", ylabel="validation loss (nats per character)", title="loss vs thinking depth (mean of seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run")
    go.add_argument("--out", type=Path, required=True)
    go.add_argument("--minutes", type=float, default=3.0)
    go.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    go.add_argument("--models", default=",".join(MODELS))
    go.add_argument("--corpus", default="shakespeare-char")
    go.add_argument("--threads", type=int, default=2)
    go.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    rep = sub.add_parser("report")
    rep.add_argument("root", type=Path)
    rep.add_argument("--record", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "run":
        run(args.out, args.minutes, args.seeds, args.models.split(","), args.corpus, args.threads, args.set)
        return
    rows = summarise(args.root)
    text = table(rows)
    by_depth = recurrence_table(rows)
    if by_depth:
        text += "\n\nValidation loss by test-time recurrence r, mean over seeds:\n\n" + by_depth
    answers = answers_table(rows)
    if answers:
        text += "\n\nExact match of generated test answers by problem depth (* trained depths), mean over seeds:\n\n" + answers
    print(text)
    if args.record:
        from records import write_record

        write_record(args.root, "*/seed*/results.json", args.record, text, lambda p: plot(rows, p), "loss_vs_recurrence.png")


if __name__ == "__main__":
    main()
