"""Test-time compute of trained runs, three ways, each a Markdown table plus JSON.

    python benchmarks/test_time.py solver RUN --iters 0 1 2 4 8 16 --out DIR
    python benchmarks/test_time.py exit RUN [RUN ...] --tols 0.1 0.03 0.01 0.003 --out DIR
    python benchmarks/test_time.py breadth RUN --starts 8 --noises 0.25 0.5 1 2 --out DIR

solver   an attractor run's test accuracy with the solver's iteration limit set to each
         value; 0 removes the solver ("equilibrium internalisation": the heads read the
         backbone's proposal).
exit     each run's test accuracy and mean segments when every example exits once its
         relative state change over a segment falls below each tolerance, beside its
         halting head and the full segment budget (one per-segment record per run, read
         under every rule). All tolerances are reported; none is selected.
breadth  K starts per puzzle (`ponder.eval.breadth`). The initial-noise scale is chosen
         on the validation split (best mean vote accuracy over the whole segments x
         breadth table); only that scale is then run on the test split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ponder import api
from ponder.eval.breadth import RULES


def timed_eval(run: str, **kwargs) -> dict:
    start = time.perf_counter()
    result = api.evaluate(run, **kwargs)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def solver_sweep(run: str, iters: list[int]) -> tuple[list[dict], str]:
    rows = []
    for k in iters:
        r = timed_eval(run, solver_iters=k)
        rows.append({"solver_iters": k, **{key: r[key] for key in ("n", "segments", "exact_accuracy", "accuracy_by_segment", "halting_accuracy", "mean_segments", "seconds")}})
    lines = ["| solver iterations per segment (at most) | exact, 1 segment | exact, 4 segments | exact, 16 segments | with halting (mean segments) |", "|---|---|---|---|---|"]
    for r in rows:
        curve = r["accuracy_by_segment"]
        label = "0 (solver removed)" if r["solver_iters"] == 0 else str(r["solver_iters"])
        lines.append(f"| {label} | {curve[0]:.1%} | {curve[min(3, len(curve) - 1)]:.1%} | {curve[-1]:.1%} | {r['halting_accuracy']:.1%} ({r['mean_segments']:.2f}) |")
    return rows, "\n".join(lines)


def exit_sweep(runs: list[str], tols: list[float]) -> tuple[list[dict], str]:
    """One per-segment record of each run's test split, read under every tolerance."""
    from ponder.eval.evaluate import first_halt, first_true, run_segments
    from ponder.tasks import Split, load_dataset_for
    from ponder.train.losses import answer_correct

    rows = []
    lines = ["| run | family | exit rule | test exact | mean segments |", "|---|---|---|---|---|"]
    for run in runs:
        cfg, model, device = api.load_trained(run)
        test = Split.from_arrays(load_dataset_for(cfg.task, splits=("test",)).splits["test"])
        S = cfg.train.eval_segments
        preds, halts, changes, _ = run_segments(model, test.inputs.to(device), S, autocast=cfg.train.autocast)
        exact = answer_correct(preds, test.labels[:, None, :])  # (N, S)

        def at(stop):  # (N,) segment index -> (accuracy, mean segments)
            return float(exact.gather(1, stop[:, None]).float().mean()), float((stop + 1).float().mean())

        rules = [(f"state change < {tol:g}", first_true(changes < tol)) for tol in tols]
        rules += [("halting head", first_halt(halts)), (f"all {S} segments", first_true(torch.zeros_like(exact)))]
        for name, stop in rules:
            accuracy, segments = at(stop)
            rows.append({"run": run, "family": cfg.model.family, "rule": name, "n": len(test), "exact_accuracy": accuracy, "mean_segments": segments})
            lines.append(f"| {run} | {cfg.model.family} | {name} | {accuracy:.1%} | {segments:.2f} |")
    return rows, "\n".join(lines)


def breadth_sweep(run: str, starts: int, noises: list[float], langevin: float) -> tuple[dict, str]:
    val = {}
    for noise in noises:
        table = timed_eval(run, split="val", breadth=starts, init_noise=noise, langevin=langevin)["breadth"]["accuracy"]["vote"]
        val[noise] = sum(map(sum, table)) / sum(map(len, table))
    best = max(noises, key=lambda s: val[s])
    test = timed_eval(run, breadth=starts, init_noise=best, langevin=langevin)
    b = test["breadth"]
    shown = sorted({1, 2, 4, 8, 16, b["segments"]} & set(range(1, b["segments"] + 1)))
    lines = [
        f"Initial-noise scale chosen on the validation split: {best} (mean vote accuracy over the table: "
        + ", ".join(f"{s}: {v:.3f}" for s, v in val.items()) + f"). Test split, {b['n']} puzzles, langevin {langevin}.",
        "",
        "| segments | rule | " + " | ".join(f"k={k}" for k in b["breadths"]) + " |",
        "|---|---|" + "---|" * len(b["breadths"]),
    ]
    for s in shown:
        for rule in [r for r in RULES if r in b["accuracy"]]:  # verified: only where the task has a check
            lines.append(f"| {s} | {rule} | " + " | ".join(f"{a:.1%}" for a in b["accuracy"][rule][s - 1]) + " |")
    return {"val_mean_vote_accuracy": val, "init_noise": best, "test": test}, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("solver")
    p.add_argument("run")
    p.add_argument("--iters", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16])
    p = sub.add_parser("exit")
    p.add_argument("runs", nargs="+")
    p.add_argument("--tols", type=float, nargs="+", default=[0.1, 0.03, 0.01, 0.003])
    p = sub.add_parser("breadth")
    p.add_argument("run")
    p.add_argument("--starts", type=int, default=8)
    p.add_argument("--noises", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    p.add_argument("--langevin", type=float, default=0.0)
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, required=True, help="folder for <what>.md and <what>.json")
    args = parser.parse_args()
    if args.what == "solver":
        data, text = solver_sweep(args.run, args.iters)
    elif args.what == "exit":
        data, text = exit_sweep(args.runs, args.tols)
    else:
        data, text = breadth_sweep(args.run, args.starts, args.noises, args.langevin)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.what}.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / f"{args.what}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
