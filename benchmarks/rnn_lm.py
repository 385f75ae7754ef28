"""The nonlinear RNN language model (`rnn-lm`) trained in parallel over the sequence by
Newton's method (ParaRNN) against the same model trained by a loop over positions.

    python benchmarks/rnn_lm.py speed  --threads 1 --out records/lm-rnn-cpu
    python benchmarks/rnn_lm.py curves --threads 1 --steps 300 --out records/lm-rnn-cpu
    python benchmarks/rnn_lm.py report records/lm-rnn-cpu        # the Markdown tables again
    python benchmarks/rnn_lm.py speed --quick --out /tmp/x        # seconds: a smoke test

`speed`: the training step (forward, backward, AdamW step) of the preset's model at each
context length (`--contexts`, default 256 ... 4096), with the batch chosen so that every
step holds `--tokens` tokens (default 8192), on random tokens (the time does not depend on
the text). Variants, each its own copy of the same initial weights with its own
optimizer, all stepping on the same batches:

- newton: `model.rnn_solver=newton` (each layer's recurrence by Newton-in-time);
- sequential: `model.rnn_solver=sequential`, the library's loop (`run_sequential`);
- sequential, compiled step: the same loop with the cell step `torch.compile`d
  (`--compile`; skipped, with a note, when compiling fails; compiled afresh for each
  context, in the warm-up step, whose time the notes give).

Timings are interleaved (variant after variant on each batch), `--warmup` steps first,
then the median of `--repeats` steps; torch runs `--threads` threads. Each row also gives
the largest difference of a variant's loss from newton's over the steps (they train the
same model on the same batches, so it should stay at float32 rounding) and the Newton
iterations per layer.

`curves`: trains the preset (`--preset`, with `key=value` overrides after the options)
twice from the same seed, `model.rnn_solver=newton` then `sequential`, for `--steps`
steps (the learning-rate schedule compressed to them), and writes both training-loss
curves (every `--log-every` steps) and validation losses (every `--eval-every`) to
`curves.json` and `curves.png`.

Each subcommand writes its JSON and a Markdown table (`speed.md`, `curves.md`) to `--out`
and prints the table; `report DIR` prints the tables of a folder's JSON files again (and
redraws `curves.png`).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ponder.config import build_config, parse_overrides  # noqa: E402
from ponder.lm.train import build_language_model  # noqa: E402

PRESET = "rnn-lm-shakespeare-char"
VOCAB = 65  # Tiny Shakespeare's characters
VARIANTS = ("newton", "sequential", "sequential, compiled step")
QUICK_MODEL = ["model.hidden=32", "model.layers=2"]


def environment() -> dict:
    """Versions, the ponder source's git revision, torch threads (`ponder.run_folder`'s record) and the CPU."""
    from ponder.run_folder import environment as run_environment

    return {**run_environment(torch.device("cpu")), "machine": platform.processor() or platform.machine()}


# ------------------------------------------------------------------------------ speed

def make_variant(name: str, model, lr: float, betas: tuple[float, float], weight_decay: float) -> dict:
    """A copy of `model` set up as variant `name` (see the module docstring), with its own AdamW."""
    model = copy.deepcopy(model)
    model.rnn_solver = "newton" if name == "newton" else "sequential"
    if name == "sequential, compiled step":
        for mixer in model.mixers():
            mixer.cell.update = torch.compile(mixer.cell.update, dynamic=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    return {"name": name, "model": model, "optimizer": optimizer}


def train_step(variant: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """One forward, backward and optimizer step on x, y (B, T) -> (seconds, loss)."""
    model, optimizer = variant["model"], variant["optimizer"]
    start = time.perf_counter()
    loss = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, loss.item()


def speed(args) -> dict:
    contexts = [16, 32] if args.quick else args.contexts
    tokens = 64 if args.quick else args.tokens
    overrides = (QUICK_MODEL if args.quick else []) + args.overrides
    variants = [v for v in VARIANTS if v != "sequential, compiled step" or (args.compile and not args.quick)]
    notes = [] if "sequential, compiled step" in variants else ["sequential, compiled step: not run (--no-compile or --quick)"]
    rows = []
    for T in contexts:
        if tokens % T:
            raise SystemExit(f"--tokens {tokens} is not a multiple of the context {T}")
        batch = tokens // T
        if "sequential, compiled step" in variants:
            torch._dynamo.reset()  # a fresh start per context: the graphs of earlier shapes would count against the recompile limit
        cfg = build_config(args.preset, overrides=parse_overrides([*overrides, f"model.context={T}"]))
        torch.manual_seed(cfg.train.seed)
        model = build_language_model(cfg.model, VOCAB)
        tc = cfg.train
        live = [make_variant(v, model, tc.lr, (tc.beta1, tc.beta2), tc.weight_decay) for v in variants]
        times: dict[str, list[float]] = {v["name"]: [] for v in live}
        losses: dict[str, list[float]] = {v["name"]: [] for v in live}
        iterations: list[int] = []
        generator = torch.Generator().manual_seed(T)
        for rep in range(args.warmup + args.repeats):
            idx = torch.randint(0, VOCAB, (batch, T + 1), generator=generator)
            x, y = idx[:, :-1], idx[:, 1:]
            for variant in list(live):
                name = variant["name"]
                try:
                    seconds, loss = train_step(variant, x, y)
                except Exception as e:  # a compile that fails: note it and go on without
                    if name != "sequential, compiled step":
                        raise
                    notes.append(f"{name}: failed at context {T} ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
                    live.remove(variant)
                    continue
                if rep == 0 and name == "sequential, compiled step":
                    notes.append(f"{name}: first step at context {T} (compiling, or loading from the compile cache) took {seconds:.1f} s")
                losses[name].append(loss)
                if rep >= args.warmup:
                    times[name].append(seconds)
                if name == "newton" and rep >= args.warmup:
                    iterations += [m.trace.iterations for m in variant["model"].mixers()]
        here = []  # this context's rows
        for name in variants:
            if not times.get(name):
                continue
            median = statistics.median(times[name])
            diff = max(abs(a - b) for a, b in zip(losses[name], losses["newton"]))
            here.append({"context": T, "batch": batch, "variant": name, "seconds": [round(s, 4) for s in times[name]],
                         "median_s": round(median, 4), "tokens_per_s": round(batch * T / median, 1),
                         "max_loss_diff_vs_newton": diff, "losses": losses[name]})
        here[0]["newton_iterations"] = {"mean": statistics.mean(iterations), "max": max(iterations)}  # here[0]: newton's row
        rows += here
        print(f"context {T}: " + ", ".join(f"{r['variant']} {r['tokens_per_s']:.0f} tok/s" for r in here), file=sys.stderr, flush=True)
    params = sum(p.numel() for p in model.parameters())
    return {"command": " ".join(sys.argv), "preset": args.preset, "overrides": overrides, "tokens_per_step": tokens, "params": params,
            "warmup": args.warmup, "repeats": args.repeats, "environment": environment(), "rows": rows, "notes": notes}


def speed_table(result: dict) -> str:
    """One line per context: tokens/s of each variant, newton's speed-up over each loop,
    and Newton's iterations per layer (mean, max)."""
    present = [v for v in VARIANTS if any(r["variant"] == v for r in result["rows"])]
    loops = [v for v in present if v != "newton"]
    head = ["context", "batch"] + [f"{v} (tok/s)" for v in present] + [f"newton / {v}" for v in loops] + ["Newton iterations", "max loss diff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for T in sorted({r["context"] for r in result["rows"]}):
        rows = {r["variant"]: r for r in result["rows"] if r["context"] == T}
        newton = rows["newton"]
        cells = [str(T), str(newton["batch"])]
        cells += [f"{rows[v]['tokens_per_s']:,.0f}" if v in rows else "—" for v in present]
        cells += [f"{newton['tokens_per_s'] / rows[v]['tokens_per_s']:.2f}x" if v in rows else "—" for v in loops]
        its = newton.get("newton_iterations", {})
        cells.append(f"{its['mean']:.1f} / {its['max']}" if its else "—")
        cells.append(f"{max(r['max_loss_diff_vs_newton'] for r in rows.values()):.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    env = result["environment"]
    lines.append("")
    lines.append(f"Training step (forward, backward, AdamW) of `{result['preset']}`'s model ({result['params']:,} parameters"
                 f"{', overrides ' + ' '.join(result['overrides']) if result['overrides'] else ''}), {result['tokens_per_step']:,} tokens "
                 f"per step, median of {result['repeats']} steps after {result['warmup']} warm-up, interleaved; torch {env['torch']}, "
                 f"{env['threads']} thread(s). Newton iterations: per layer per step, mean / max. Max loss diff: the largest "
                 f"|loss - newton's loss| of any variant over all steps.")
    lines += [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ curves

def read_run(folder: Path) -> dict:
    """Training losses, validation losses and the result of one run folder."""
    log = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result = json.loads((folder / "results.json").read_text())
    return {"train": [[r["step"], r["loss"]] for r in log if r.get("event") == "train"],
            "val": [[r["step"], r["loss"]] for r in log if r.get("event") == "val"],
            "final_val_loss": result["loss"], "bits_per_character": result.get("bits_per_character"),
            "train_seconds": result["train_seconds"]}


def curves(args) -> dict:
    from ponder import api

    steps = 4 if args.quick else args.steps
    eval_every = 2 if args.quick else args.eval_every
    log_every = 1 if args.quick else args.log_every
    overrides = (QUICK_MODEL + ["train.eval_batches=1", "train.batch_size=4", "model.context=16"] if args.quick else []) + args.overrides
    common = [f"train.steps={steps}", f"train.eval_every={eval_every}", f"train.log_every={log_every}", f"train.checkpoint_every={steps}",
              f"train.threads={args.threads}", "train.budget_minutes=0", *overrides]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.runs) if args.runs else Path(tmp)
        for solver in ("newton", "sequential"):
            print(f"{solver}: {steps} steps", file=sys.stderr, flush=True)
            folder = root / solver
            api.train([*common, f"model.rnn_solver={solver}"], preset=args.preset, out=str(folder), progress=False)
            runs[solver] = read_run(folder)
    a, b = runs["newton"], runs["sequential"]
    result = {"command": " ".join(sys.argv), "preset": args.preset, "steps": steps, "overrides": common, "environment": environment(),
              "runs": runs,
              "max_train_loss_diff": max(abs(p[1] - q[1]) for p, q in zip(a["train"], b["train"])),
              "max_val_loss_diff": max((abs(p[1] - q[1]) for p, q in zip(a["val"], b["val"])), default=0.0)}
    return result


def plot_curves(result: dict, out: Path) -> None:
    from ponder.viz.plots import plot_loss_curves

    plot_loss_curves(result["runs"], out / "curves.png", title=result["preset"])


def curves_table(result: dict) -> str:
    lines = ["| rnn_solver | final train loss | final val loss | bits per char | training time (s) |", "|---|---|---|---|---|"]
    for solver, run in result["runs"].items():
        bpc = run["bits_per_character"]
        lines.append(f"| {solver} | {run['train'][-1][1]:.4f} | {run['final_val_loss']:.4f} | {'—' if bpc is None else f'{bpc:.3f}'} | {run['train_seconds']:.1f} |")
    env = result["environment"]
    lines.append("")
    lines.append(f"`{result['preset']}` for {result['steps']} steps from the same seed (overrides: {' '.join(result['overrides'])}); "
                 f"largest difference between the two runs: {result['max_train_loss_diff']:.1e} (logged training loss), "
                 f"{result['max_val_loss_diff']:.1e} (validation loss). Torch {env['torch']}, {env['threads']} thread(s); the "
                 f"runs were one after the other, so their times are not an interleaved comparison (see the speed table).")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main

TABLES = {"speed": speed_table, "curves": curves_table}


def write(kind: str, result: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{kind}.json").write_text(json.dumps(result, indent=1) + "\n")
    table = TABLES[kind](result)
    (out / f"{kind}.md").write_text(table)
    if kind == "curves":
        plot_curves(result, out)
    return table


def report(folder: Path) -> str:
    """The Markdown tables of the JSON files in `folder` (and curves.png drawn again)."""
    found = [(kind, folder / f"{kind}.json") for kind in TABLES if (folder / f"{kind}.json").is_file()]
    if not found:
        raise SystemExit(f"{folder}: no speed.json or curves.json")
    results = {kind: json.loads(path.read_text()) for kind, path in found}
    if "curves" in results:
        plot_curves(results["curves"], folder)
    return "\n".join(TABLES[kind](result) for kind, result in results.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("speed", "curves"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, help="folder for the JSON, the Markdown table (and the plot)")
        p.add_argument("--preset", default=PRESET)
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        p.add_argument("--quick", action="store_true", help="a tiny run of seconds (a smoke test)")
        p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.layers=2")
        if name == "speed":
            p.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
            p.add_argument("--tokens", type=int, default=8192, help="tokens per training step (batch = tokens / context)")
            p.add_argument("--warmup", type=int, default=1)
            p.add_argument("--repeats", type=int, default=3)
            p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="add the compiled-step loop")
            p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
        else:
            p.add_argument("--steps", type=int, default=300)
            p.add_argument("--eval-every", type=int, default=50)
            p.add_argument("--log-every", type=int, default=10)
            p.add_argument("--runs", default="", help="keep the two run folders here (default: a temporary folder)")
    p = sub.add_parser("report")
    p.add_argument("folder")
    args = parser.parse_args(argv)
    if args.command == "report":
        print(report(Path(args.folder)), end="")
        return
    if args.threads < 1:
        raise SystemExit(f"--threads: expected >= 1, got {args.threads}")
    if args.command == "speed" and (args.repeats < 1 or args.warmup < 0 or min(args.contexts) < 1 or args.tokens < 1):
        raise SystemExit("--repeats >= 1, --warmup >= 0, --contexts >= 1 and --tokens >= 1 expected")
    torch.set_num_threads(args.threads)
    result = speed(args) if args.command == "speed" else curves(args)
    table = write(args.command, result, Path(args.out))
    print(json.dumps(result, indent=1) if getattr(args, "json", False) else table, end="" if not getattr(args, "json", False) else "\n")


if __name__ == "__main__":
    main()
