"""`ponder <verb>`: subcommands generated from the typed signatures in `ponder.api`.

Positional parameters of an API function become positional arguments; keyword
parameters become `--flags` of their declared type (required when keyword-only without
a default); a `list[str]` parameter collects
the remaining `key=value` words. The "Args:" lines of each docstring are the help text.
Every verb that returns data also takes `--json`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

from ponder import __version__, api
from ponder.errors import PonderInputError

VERBS: dict[str, Callable[..., Any]] = {
    "train": api.train,
    "eval": api.evaluate,
    "solve": api.solve,
    "export": api.export,
    "trace": api.trace,
    "compare": api.compare,
    "sample": api.sample,
    "probe": api.probe,
    "presets": api.presets,
    "data build": api.data_build,
    "data show": api.data_show,
    "data list": api.data_list,
    "bench solvers": api.bench_solvers,
}
HIDDEN_PARAMS = {"progress"}
OPTIONAL_POSITIONALS = {("solve", "puzzle"), ("trace", "puzzle")}  # `ponder solve [PUZZLE]`: positional, with a default


def _arg_help(fn: Callable) -> dict[str, str]:
    """`name: text` lines under "Args:"; a line indented deeper continues the one before."""
    help_by_name: dict[str, str] = {}
    in_args, indent, last = False, None, None
    for line in (fn.__doc__ or "").splitlines():
        stripped = line.strip()
        depth = len(line) - len(line.lstrip())
        if stripped == "Args:":
            in_args = True
        elif in_args and stripped:
            if indent is None:
                indent = depth
            if depth > indent and last is not None:
                help_by_name[last] += " " + stripped
            elif ":" in stripped:
                name, _, text = stripped.partition(":")
                last = name.strip()
                help_by_name[last] = text.strip()
    return help_by_name


def _base_type(annotation: Any) -> Any:
    """`X` of `X | None` (or of Optional[X]); any other annotation as it is."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def finite_float(text: str) -> float:
    """A command-line number: NaN and infinities are refused by argparse (exit 2)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def bounded_int(text: str) -> int:
    """A command-line integer that fits in int64."""
    value = int(text)
    if abs(value) > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at most 2**63 - 1, got {text!r}")
    return value


ARG_TYPES = {float: finite_float, int: bounded_int}


def add_verb(sub: argparse._SubParsersAction, name: str, fn: Callable, full_name: str = "") -> None:
    paragraph = (fn.__doc__ or "").strip().split("\n\n")[0]  # the first paragraph: whole sentences
    summary = " ".join(line.strip() for line in paragraph.splitlines())
    parser = sub.add_parser(name, help=summary, description=summary)
    helps = _arg_help(fn)
    hints = typing.get_type_hints(fn)
    for pname, param in inspect.signature(fn).parameters.items():
        if pname in HIDDEN_PARAMS:
            continue
        typ = _base_type(hints.get(pname, str))
        typ = ARG_TYPES.get(typ, typ)
        text = helps.get(pname)
        if typing.get_origin(typ) is list and pname == "runs":
            parser.add_argument(pname, nargs="+", metavar="RUN", help=text)
        elif typing.get_origin(typ) is list:
            parser.add_argument(pname, nargs="*", default=[], metavar="KEY=VALUE", help=text)
        elif (full_name or name, pname) in OPTIONAL_POSITIONALS:
            parser.add_argument(pname, nargs="?", type=typ, default=param.default, help=text)
        elif param.default is inspect.Parameter.empty and param.kind is inspect.Parameter.KEYWORD_ONLY:
            parser.add_argument(f"--{pname}", type=typ, required=True, metavar=pname.upper(), help=text)
        elif param.default is inspect.Parameter.empty:
            parser.add_argument(pname, type=typ, help=text)
        else:
            flags = [f"-{pname}"] if len(pname) == 1 else sorted({f"--{pname.replace('_', '-')}", f"--{pname}"})  # --exit-tol or --exit_tol
            if typ is bool:
                parser.add_argument(*flags, dest=pname, action="store_true", help=text)
            else:
                parser.add_argument(*flags, dest=pname, type=typ, default=param.default, metavar=pname.upper(), help=text)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(_fn=fn, _verb=full_name or name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponder", description="Recurrent-depth reasoning: train, evaluate and run models that think by looping.")
    parser.add_argument("--version", action="version", version=f"ponder {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, fn in VERBS.items():
        group, _, verb = name.rpartition(" ")
        if group and group not in groups:  # "data build": verb "build" of the group "data"
            group_parser = sub.add_parser(group, help=f"{group} commands: {', '.join(n.split()[-1] for n in VERBS if n.startswith(group + ' '))}")
            groups[group] = group_parser.add_subparsers(dest=f"{group}_verb", metavar="VERB", required=True)
        add_verb(groups[group] if group else sub, verb, fn, full_name=name)
    return parser


# ------------------------------------------------------------------ human-readable output

def plural(n: int, word: str) -> str:
    """'1 example', '2 examples'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def show_train(result: dict[str, Any]) -> None:
    if "stopped" in result:
        why = "the time limit (train.max_minutes)" if result["stopped"] == "time" else "a signal"
        print(f"\nstopped by {why} at step {result['step']} of {result['steps']} ({result['train_seconds']:.0f} s training); "
              f"checkpointed, no test run. Continue with: ponder train --resume {result['run']}")
        return
    if "resumed_at" in result:  # training time counts every invocation; the total, this one only
        times = f"{result['train_seconds']:.0f} s training over all invocations, {result['total_seconds']:.0f} s this invocation (resumed at step {result['resumed_at']})"
    else:
        times = f"{result['train_seconds']:.0f} s training, {result['total_seconds']:.0f} s total"
    if "loss_by_recurrence" in result:
        print(f"\n{times}")
        show_language(result)
        return
    print(f"\ntest split: {plural(result['n'], 'example')}, {plural(result['segments'], 'segment')}, {times}")
    show_scores(result)


def show_language(result: dict[str, Any]) -> None:
    """A language model's evaluation: validation loss (bits per character for a
    character corpus) by test-time recurrence, and generated-answer accuracy."""
    bpc = f", {result['bits_per_character']:.4f} bits per character" if "bits_per_character" in result else ""
    print(f"  validation loss {result['loss']:.4f} nats per token{bpc}")
    losses = result["loss_by_recurrence"]
    if "default" not in losses:
        print("  validation loss vs test-time recurrence r:")
        low = min(losses.values())
        for r, loss in losses.items():
            mark = "  <- best" if loss == low else ""
            print(f"    r={int(r):<4d} {loss:.4f}{mark}")
    for r, answers in (result.get("answers") or {}).items():
        depth = ", ".join(f"depth {d}: {a:.3f}" for d, a in answers["by_depth"].items())
        label = "" if r == "default" else f" at r={r}"
        print(f"  generated answers{label}: exact {answers['accuracy']:.4f} of {answers['n']} ({depth})")


def show_scores(result: dict[str, Any]) -> None:
    """The lines an evaluation result gets, in `ponder train` and `ponder eval` alike."""
    print(f"  exact accuracy {result['exact_accuracy']:.4f}   cell accuracy {result['cell_accuracy']:.4f}")
    print(f"  with halting:  exact accuracy {result['halting_accuracy']:.4f} using {result['mean_segments']:.2f} segments on average")
    if "converged_accuracy" in result:
        print(f"  exit on convergence: exact accuracy {result['converged_accuracy']:.4f} using {result['converged_segments']:.2f} segments on average")
    if "calibrated_halting" in result:
        show_calibration(result["calibrated_halting"])
    if "solver_iters" in result:
        print(f"  attractor solver: at most {result['solver_iters']} iterations per segment")
    show_curve(result["accuracy_by_segment"], result.get("accuracy_by_depth"))
    show_task_metrics(result.get("task_metrics"))
    for name, scores in (result.get("identifier_ablation") or {}).items():
        print(f"  with a {name} puzzle identifier: exact accuracy {scores['exact_accuracy']:.4f}   cell accuracy {scores['cell_accuracy']:.4f}")
        show_task_metrics({k: v for k, v in (scores.get("task_metrics") or {}).items() if isinstance(v, (float, dict))}, indent="    ")
    if "breadth" in result:
        show_breadth(result["breadth"])
    if "commit" in result:
        show_commit(result["commit"])
    if "branch" in result:
        show_branch(result["branch"])


def show_calibration(c: dict[str, Any], points: int = 12) -> None:
    """The stop rule chosen on validation, its score here, and the trade-off curve."""
    print(f"  stop rule chosen on validation ({c['describe']}):")
    print(f"    exact accuracy {c['accuracy']:.4f} using {c['mean_segments']:.2f} segments on average "
          f"(validation, {plural(c['val_n'], 'example')}: {c['val_accuracy']:.4f} at {c['val_segments']:.2f}; all segments {c['val_all_segments']:.4f}"
          + (f"; aimed at the best rule's {c['val_target']:.4f})" if c.get("target") == "best" else ")"))
    frontier = c["frontier"]
    step = max(1, -(-len(frontier) // points))
    shown = frontier[::step] + ([frontier[-1]] if (len(frontier) - 1) % step else [])
    print("    trade-off (validation frontier):  val segments  val acc   segments  accuracy   rule")
    for p in shown:
        print(f"    {'':33s}{p['val_segments']:>6.2f}  {p['val_accuracy']:>8.4f}  {p['segments']:>8.2f}  {p['accuracy']:>8.4f}   {p['describe']}")


def show_curve(curve: list[float], by_depth: dict[str, list[float]] | None = None) -> None:
    print("  accuracy vs segments (thinking steps):")
    for k, acc in enumerate(curve, start=1):
        print(f"    {k:3d}  {acc:.4f}  {'#' * round(acc * 40)}")
    if by_depth:
        depths = sorted(by_depth, key=int)
        print("  accuracy by problem depth (rows) and segments (columns):")
        print("    depth " + " ".join(f"{k:>6d}" for k in range(1, len(curve) + 1)))
        for d in depths:
            print(f"    {int(d):5d} " + " ".join(f"{a:6.3f}" for a in by_depth[d]))


def show_task_metrics(metrics: dict[str, Any] | None, indent: str = "  ") -> None:
    """The task's own scores, one line each (nested ones like ARC's pass@k flattened)."""
    for key, value in (metrics or {}).items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4f}"
        print(f"{indent}{key.replace('_', ' ')}: {value}")


def show_eval(result: dict[str, Any]) -> None:
    if "loss_by_recurrence" in result:
        print(f"{result['data']}:")
        show_language(result)
        return
    print(f"{result['data']}: {plural(result['n'], 'example')}, {plural(result['segments'], 'segment')}")
    show_scores(result)


def show_sample(result: dict[str, Any]) -> None:
    print(result["prompt"] + result["text"])
    if "decoding" in result:
        d = result["decoding"]
        print(f"\n[{d['decoder']}, {d['cache']} cache: {d['core_calls_per_token']:.2f} sequential core calls and "
              f"{d['iterations_per_token']:.2f} iterations per token, {d['forward_passes_per_token']:.2f} forward passes "
              f"per token, cache {d['cache_bytes'] / 2**10:.0f} KiB, {d['new_tokens'] / max(d['seconds'], 1e-9):.0f} tokens/s]")


def show_probe(result: dict[str, Any]) -> None:
    """Rank of each token of interest after each iteration, one table per lens."""
    print(f"{result['prompt']!r}: predicts {result['predicted']!r} after {result['recurrence']} iterations; rank (1 = likeliest) after each iteration")
    for lens, by_token in result["ranks"].items():
        print(f"  {lens}:")
        width = max(len(label) for label in by_token)
        for label, ranks in by_token.items():
            print(f"    {label:<{width}}  " + " ".join(f"{r:>4d}" for r in ranks))
    if "plot" in result:
        print(f"  plot: {result['plot']}")


def show_breadth(b: dict[str, Any]) -> None:
    """Exact accuracy by segments (rows) x breadth (columns), one table per rule."""
    print(f"  breadth: {b['starts']} starts (init noise {b['init_noise']}, langevin {b['langevin']}); exact accuracy, segments x starts")
    for rule, table in b["accuracy"].items():
        print(f"  {rule}:")
        print("    segments " + "".join(f"{'k=' + str(k):>9}" for k in b["breadths"]))
        for s, row in enumerate(table, start=1):
            print(f"    {s:>8} " + "".join(f"{a:>9.4f}" for a in row))
    for rule in ("first_halt", "verified"):
        if b.get(f"{rule}_segments"):
            print(f"  {rule}: mean segments each start runs (it stops all starts at the first {'halt' if rule == 'first_halt' else 'answer that checks'})")
            for s, row in enumerate(b[f"{rule}_segments"], start=1):
                print(f"    {s:>8} " + "".join(f"{a:>9.2f}" for a in row))


def show_commit(c: dict[str, Any]) -> None:
    """Commitment: exact accuracy by round limit (rows) x starts (columns), with the
    segment-runs it spends per puzzle."""
    how = "from the initial state" if c["restart"] else "state carried over"
    print(f"  commit: {c['per_round']} cells per round after {c['segments']} segments ({how}), {c['starts']} starts "
          f"(init noise {c['init_noise']}); exact accuracy (segment-runs per puzzle), rounds x starts")
    print("    rounds " + "".join(f"{'k=' + str(k):>17}" for k in c["breadths"]))
    for r, (row, runs) in enumerate(zip(c["accuracy"], c["segment_runs"]), start=1):
        print(f"    {r:>6} " + "".join(f"{a:>8.4f} ({n:>6.1f})" for a, n in zip(row, runs)))
    stuck = f"; stopped on a contradiction in {c['contradicted']:.1%}" if c["filtered"] else " (unfiltered)"
    print(f"  commit, start 0: {c['committed']:.1f} cells committed per puzzle on average; some wrong in {c['spoiled']:.1%} of puzzles{stuck}")


def show_branch(b: dict[str, Any]) -> None:
    """Branching: exact accuracy, share passed, segment-runs and nodes by depth limit."""
    print(f"  branch: {b['segments']} segments, then {b['branch_segments']} per child from its parent's state, "
          f"at most {b['width']} nodes per puzzle and level")
    print(f"    {'depth':>5} {'exact':>8} {'passed':>8} {'segment-runs':>13} {'nodes':>8}")
    for d, row in enumerate(zip(b["accuracy"], b["passed"], b["segment_runs"], b["nodes"])):
        print(f"    {d:>5} {row[0]:>8.4f} {row[1]:>8.4f} {row[2]:>13.1f} {row[3]:>8.1f}")


def show_solve(result: dict[str, Any]) -> None:
    from ponder.tasks.sudoku import render_example

    grid = lambda text: [0 if c == "." else int(c) for c in text]  # noqa: E731
    if result.get("example"):
        print("an example puzzle (give your own as: ponder solve PUZZLE):")
    print(f"puzzle                 answer of {result['model']}")
    print(render_example(grid(result["puzzle"]), grid(result["solution"])))
    verdict = "a valid solution" if result["valid"] else "NOT a valid solution"
    how = "halted" if result["halted"] else "stopped at the segment limit"
    print(f"{verdict}; {how} after {plural(result['segments'], 'segment')} = {plural(result['network_calls'], 'network call')}")
    if result.get("stop_rule"):
        print(f"stop rule: {result['stop_rule']}")
    if not result.get("unique", True):
        print("note: this puzzle has several solutions (a proper Sudoku has one); any of them counts as valid")


def show_trace(result: dict[str, Any]) -> None:
    marks = "".join("?" if c is None else ("+" if c else ".") for c in result["correct_by_segment"])
    print(f"{result['out']}: {', '.join(Path(f).name for f in result['files'])}")
    print(f"  {plural(result['segments'], 'segment')} drawn; the stop rule stops at segment {result['stop_segment']}; right by segment: {marks}")
    print(f"  open {Path(result['out']) / 'index.html'} in a browser")


def show_compare(result: dict[str, Any]) -> None:
    names = [chr(ord("A") + k) for k in range(len(result["runs"]))]
    for name, run in zip(names, result["runs"]):
        print(f"{name}: {run}")
    cell = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = list(result["config_differences"].items())
    width = max([len(k) for k, _ in rows] + [len(k) for k in result["results"]] + [10])
    print(("config keys that differ:".ljust(width + 2) + "".join(f"{n:>14}" for n in names)) if rows else "the configs are the same")
    for key, values in rows:
        print(f"  {key:<{width}}  " + "  ".join(f"{cell(v):>12}" for v in values))
    print("results:".ljust(width + 2) + "".join(f"{n:>14}" for n in names))
    for key, values in result["results"].items():
        print(f"  {key.replace('_', ' '):<{width}}  " + "  ".join(f"{cell(v):>12}" for v in values))
    if result.get("plot"):
        print(f"curves: {result['plot']}")


def show_export(result: dict[str, Any]) -> None:
    print(f"{result['out']}: {', '.join(result['files'])} ({result['bytes'] / 1024:.0f} KiB)")
    print(f"  use it with: ponder solve PUZZLE --run {result['out']}   or   ponder.load({result['out']!r})")


def show_presets(rows: list[dict[str, Any]]) -> None:
    """Name, parameters, training budget (example-segments and FLOP; "<=" where halting
    makes it an upper bound) and description."""
    width = max(len(r["name"]) for r in rows)
    print(f"{'preset':<{width}}  {'params':>7}  {'example-segments, FLOP':>26}  description")
    for r in rows:
        bound = "<=" if r["budget_is_bound"] else "  "
        unit = " tok" if r.get("unit") == "tokens" else ""
        budget = f"{bound}{r['example_segments'] / 1e6:7.2f}M{unit:4}, {r['train_flops']:8.2e}"
        print(f"{r['name']:<{width}}  {r['params'] / 1e6:6.2f}M  {budget}  {r['description']}")


def show_data_build(result: dict[str, Any]) -> None:
    counts = ", ".join(f"{k} {v:,}" for k, v in result["counts"].items())
    if result.get("unit") == "tokens":
        problems = ", ".join(f"{k} {v:,}" for k, v in result.get("problems", {}).items())
        print(f"{result['out']}: {result['name']} ({counts} tokens; vocabulary {result['vocab_size']}{'; problems ' + problems if problems else ''})")
    else:
        print(f"{result['out']}: {result['name']} ({counts} examples; vocab {result['vocab']}, length {result['seq_len']})")
    print(f"  {result['bytes'] / 2**20:.1f} MiB in {result['seconds']:.1f} s; sha256 {result['sha256']}")


def show_data_show(result: dict[str, Any]) -> None:
    counts = ", ".join(f"{k} {v:,}" for k, v in result["counts"].items())
    print(f"{result['data']}: {result['name']} ({counts}); first {len(result['examples'])} of split '{result['split']}':")
    for text in result["examples"]:
        print()
        print(text)


def show_data_list(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        where = f" [reads $PONDER_DATA/{', '.join(r['raw'])}]" if r["raw"] else ""
        print(f"{r['name']:<{width}}  {r['description']}{where}")


def show_bench_solvers(rows: list[dict[str, Any]]) -> None:
    extra = [b for b in ("compiled", "torch") if rows and f"speedup_{b}" in rows[0]]
    head = "".join(f" {'vs ' + b:>12}" for b in extra)
    print(f"{'cell':<10} {'method':<19} {'T':>7} {'D':>4} {'dtype':<8} {'parallel s':>11} {'sequential s':>13} {'speedup':>8}{head} {'iters':>6} {'max abs err':>12}")
    for r in rows:
        method = r["method"] + (" compiled" if r.get("compiled") else "")
        ratios = "".join(f" {'—':>12}" if r[f"speedup_{b}"] is None else f" {r[f'speedup_{b}']:>11.2f}x" for b in extra)
        print(
            f"{r['cell']:<10} {method:<19} {r['T']:>7} {r['D']:>4} {r['dtype']:<8} {r['seconds_parallel']:>11.4f} "
            f"{r['seconds_sequential']:>13.4f} {r['speedup']:>7.2f}x{ratios} {r['iterations']:>6} {r['max_abs_err']:>12.1e}"
        )


SHOW = {
    "train": show_train, "eval": show_eval, "solve": show_solve, "export": show_export, "trace": show_trace, "compare": show_compare, "sample": show_sample, "probe": show_probe, "presets": show_presets,
    "data build": show_data_build, "data show": show_data_show, "data list": show_data_list,
    "bench solvers": show_bench_solvers,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    # argparse takes positionals in one run; KEY=VALUE words after a --flag come back
    # here and belong to the verb's KEY=VALUE list.
    list_param = next((n for n, v in vars(args).items() if isinstance(v, list) and not n.startswith("_")), None)
    if extra and (list_param is None or any(w.startswith("-") or "=" not in w for w in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, list_param).extend(extra)
    kwargs = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("verb", "json") and not k.endswith("_verb")}
    if args._verb in ("train", "data build", "bench solvers"):
        kwargs["progress"] = sys.stderr.isatty() or not args.json
    try:
        result = args._fn(**kwargs)
    except PonderInputError as e:
        print(f"ponder {args._verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ponder {args._verb}: interrupted", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 speaks for the run
    try:
        if args.json:
            print(json.dumps(result))
        else:
            SHOW[args._verb](result)
        sys.stdout.flush()
    except BrokenPipeError:  # `ponder ... | head`: the reader has gone; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
