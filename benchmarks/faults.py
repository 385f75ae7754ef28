"""Fault injection: damage every file a run folder and a dataset folder hold, fuzz every
CLI verb's options, kill training at random moments, start two writers at once, and
classify what ponder does with each case.

    python benchmarks/faults.py --out records/faults-cpu            # the soak: every case, several seeds
    python benchmarks/faults.py --out /tmp/faults --quick           # the subset the tests run

Every case ends in one of:

    error       a one-line error and exit status 2 (a usage error from argparse counts:
                exit 2, its usage line and one error line)
    identical   the same result as the undamaged case (timings aside)
    traceback   any other exception                                  -> a failure
    wrong       a different result without a word                    -> a failure
    mixed       a folder holding two runs (two writers)              -> a failure

Categories:

    run-file     a file of a trained run folder flipped (k random bytes), truncated,
                 emptied, deleted, given non-UTF-8 bytes or a JSON value of the wrong
                 type; then `ponder eval` and `ponder train --resume` on it
    data-file    the same for a dataset folder; then `ponder data show`, `ponder eval
                 --data` and training on it
    cli          every option of every verb given NaN, infinities, negative, zero, huge,
                 non-numeric and empty values (numbers must be refused when not finite)
    kill         SIGKILL at a random moment of a run (before its first checkpoint
                 included), then `--resume`: the log must equal an uninterrupted run's
    leftovers    a killed checkpoint write's files (a temporary main file, orphan shards,
                 a temporary config) in the folder, then `--resume`
    numerical    a diverging run (AdamW at lr 1e6), and NaN or inf in the weights, EMA
                 weights or optimizer state of a checkpoint (written with a valid hash, as
                 a buggy writer would), then eval and resume
    writers      two `ponder train` into one new folder at once, and two `ponder data
                 build`: one must refuse (naming the other's pid), the other finish

Writes `results.json` (every case) and `table.md` (counts per category and outcome).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY_TRM = [
    "model.hidden=16", "model.heads=2", "model.layers=1", "model.latent_steps=1", "model.cycles=1", "task.blanks=20",
    "task.train_size=64", "task.val_size=8", "task.test_size=8", "train.batch_size=8", "train.max_segments=2",
    "train.eval_segments=2", "train.eval_every=2", "train.checkpoint_every=2", "train.lr_warmup=1", "train.log_every=1",
    "train.threads=1",
]
TINY_LM = [
    "model.hidden=16", "model.heads=2", "model.context=16", "train.batch_size=4", "train.eval_batches=1",
    "train.eval_recurrence=1,2", "train.lr_warmup=1", "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2",
    "train.threads=1",
]
CORRUPTIONS = ("flip", "truncate", "empty", "delete", "non-utf8", "wrong-type")
VOLATILE = ("seconds", "per_s", "time", "env", "speed", "run", "out", "data")  # result keys that differ between equal runs
OK = ("error", "identical")


# ------------------------------------------------------------------------------ calling

def call(argv: list[str]) -> tuple[int | None, str, str, str | None]:
    """`ponder ARGV` in this process -> (exit status or None, stdout, stderr, the
    exception's type and first line if one escaped)."""
    from ponder import cli

    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
        except Exception as e:  # noqa: BLE001 - exactly what this audit looks for
            rc, escaped = None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    return rc, out.getvalue(), err.getvalue(), escaped


def comparable(value: Any) -> Any:
    """A result without what legitimately differs between two equal runs."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


def classify(result: tuple, baseline: Any) -> tuple[str, str]:
    """(outcome, detail) of one call against the undamaged call's JSON result."""
    rc, out, err, escaped = result
    if escaped is not None:
        return "traceback", escaped
    lines = [line for line in err.strip().splitlines() if line.strip() and "%|" not in line and not line.startswith("train:")]
    if rc == 2:
        usage = lines[:1] and lines[0].startswith("usage:")
        if len(lines) == 1 or (usage and len(lines) == 2 + sum(line.startswith(" ") for line in lines)):
            return "error", lines[-1][:200]
        return "traceback", "exit 2 with several lines: " + " | ".join(lines)[:200]
    if rc != 0:
        return "traceback", f"exit {rc}: " + " | ".join(lines[-3:])[:200]
    try:
        got = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    except json.JSONDecodeError:
        got = out
    if baseline is None or comparable(got) == comparable(baseline):
        return "identical", ""
    return "wrong", "result differs from the undamaged case"


# ------------------------------------------------------------------------------ damage

def corrupt(path: Path, kind: str, rng: random.Random) -> bool:
    """Damage one file in place; False if the damage does not apply (nothing to flip)."""
    data = path.read_bytes() if path.exists() else b""
    if kind == "delete":
        path.unlink(missing_ok=True)
    elif kind == "flip":
        if not data:
            return False
        buf = bytearray(data)
        for _ in range(rng.choice([1, 4, 64])):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(buf))
    elif kind == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "non-utf8":
        path.write_bytes(b"\xff\xfe\xfa" + data[3:])
    elif kind == "wrong-type":
        path.write_bytes(b"[1, 2, 3]\n")
    return True


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


# ------------------------------------------------------------------------------ fixtures

def train_tiny(out: Path, extra: list[str], preset: str | None = None) -> None:
    args = ["train", "--out", out, *([f"--preset={preset}"] if preset else []), *extra, "--json"]
    rc, _, err, escaped = call(args)
    if rc != 0:
        raise RuntimeError(f"fixture run failed: {escaped or err[-500:]}")


def fixtures(work: Path) -> dict[str, Path]:
    """A tiny TRM run stopped at step 4 of 6 (a resumable checkpoint), a tiny recurrent
    LM run, a dataset folder, and a text file."""
    work.mkdir(parents=True, exist_ok=True)
    paths = {"trm": work / "trm", "lm": work / "lm", "data": work / "data", "text": work / "tiny.txt"}
    paths["text"].write_text("to be, or not to be, that is the question:\nwhether tis nobler in the mind to suffer\n" * 40)
    train_tiny(paths["trm"], [*TINY_TRM, "train.steps=4"])
    train_tiny(paths["lm"], [*TINY_LM, "train.steps=2", f"task.text_file={paths['text']}"], "recurrent-lm-shakespeare-char")
    rc, _, err, escaped = call(["data", "build", "sudoku", "--out", paths["data"], "train_size=16", "val_size=4", "test_size=8", "blanks=20", "--json"])
    if rc != 0:
        raise RuntimeError(f"dataset fixture failed: {escaped or err[-500:]}")
    return paths


# ------------------------------------------------------------------------------ categories

def damage_cases(category: str, folder: Path, verbs: dict[str, Callable[[Path], list]], work: Path, seeds: int, kinds) -> list[dict]:
    """Each file of `folder` damaged each way (flips with `seeds` seeds), each verb run on
    a damaged copy and judged against the verb on an undamaged copy. A verb may write
    `<copy>-run` beside the copy; it is removed with it."""
    def fresh(name: str) -> Path:
        copy = work / name.replace(" ", "")
        shutil.copytree(folder, copy)
        return copy

    def remove(copy: Path) -> None:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.rmtree(copy.parent / (copy.name + "-run"), ignore_errors=True)

    baselines = {}
    for verb, argv in verbs.items():
        rc, out, err, escaped = call(argv(fresh(f"clean-{category}-{verb}")))
        assert rc == 0, (verb, escaped, err[-500:])
        baselines[verb] = json.loads(out.strip().splitlines()[-1])
    cases = []
    for target in files_of(folder):
        for kind in kinds:
            for seed in range(seeds if kind == "flip" else 1):
                for verb, argv in verbs.items():
                    damaged = fresh(f"{category}-{target.name}-{kind}-{seed}-{verb}")
                    if corrupt(damaged / target.name, kind, random.Random(f"{target.name}{kind}{seed}")):
                        outcome, detail = classify(call(argv(damaged)), baselines[verb])
                        cases.append({"category": category, "file": target.name, "damage": kind, "seed": seed, "verb": verb,
                                      "outcome": outcome, "detail": detail})
                    remove(damaged)
    return cases


def run_file_cases(paths: dict[str, Path], work: Path, seeds: int, kinds=CORRUPTIONS) -> list[dict]:
    """Damage each file of the TRM run folder; eval it and resume it (to step 6)."""
    verbs: dict[str, Callable[[Path], list]] = {
        "eval": lambda r: ["eval", r, "--json"],
        "resume": lambda r: ["train", "--resume", r, "train.steps=6", "--json"],
    }
    return damage_cases("run-file", paths["trm"], verbs, work, seeds, kinds)


def data_file_cases(paths: dict[str, Path], work: Path, seeds: int, kinds=CORRUPTIONS) -> list[dict]:
    """Damage each file of the dataset folder; show it, evaluate the run on it, train on it."""
    run = paths["trm"]
    verbs: dict[str, Callable[[Path], list]] = {
        "data show": lambda d: ["data", "show", d, "--json"],
        "eval --data": lambda d: ["eval", run, "--data", d, "--json"],
        "train on it": lambda d: ["train", "--out", d.parent / (d.name + "-run"), *TINY_TRM, "train.steps=1",
                                  "task.name=sudoku", f"task.data_dir={d}", "--json"],
    }
    return damage_cases("data-file", paths["data"], verbs, work, seeds, kinds)


FUZZ_NUMBERS = ("nan", "inf", "-inf", "-1", "0", "1e400", "99999999999999999999", "abc", "")
FUZZ_TEXT = ("", "missing/x", "-", "é\u2603")


def verb_calls(paths: dict[str, Path], work: Path) -> dict[str, list]:
    """A valid call of every verb, to fuzz one option at a time."""
    return {
        "eval": ["eval", paths["trm"]],
        "solve": ["solve", paths["trm"], "." * 40 + "1" + "." * 40],
        "sample": ["sample", paths["lm"], "--prompt", "to be", "--max-new", "4"],
        "probe": ["probe", paths["lm"], "to be"],
        "data show": ["data", "show", paths["data"]],
        "data build": ["data", "build", "sudoku", "--out", work / "fuzz-build", "train_size=4", "val_size=2", "test_size=2"],
        "bench solvers": ["bench", "solvers", "--lengths", "8", "--sizes", "2", "--repeats", "1", "--methods", "deer", "--cells", "gru"],
        "presets": ["presets"],
    }


def cli_cases(paths: dict[str, Path], work: Path, quick: bool) -> list[dict]:
    """Every option of every verb (but train: see config_cases) with bad values."""
    from ponder import cli

    parser = cli.build_parser()
    cases = []
    for verb, base in verb_calls(paths, work).items():
        sub = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - the verbs' own parsers
        for word in verb.split()[:-1]:
            sub = sub[word]._subparsers._group_actions[0].choices  # noqa: SLF001
        options = [a for a in sub[verb.split()[-1]]._actions if a.option_strings and a.dest not in ("help", "json")]  # noqa: SLF001
        for action in options:
            numeric = action.type in (cli.finite_float, cli.bounded_int)
            values = FUZZ_NUMBERS if numeric else FUZZ_TEXT if action.type is not None or action.nargs else ()
            if quick:
                values = tuple(dict.fromkeys(values[:3] + values[-2:-1]))
            for value in values:
                flag = action.option_strings[-1]
                shutil.rmtree(work / "fuzz-build", ignore_errors=True)
                rc, out, err, escaped = result = call([*base, flag, value, "--json"])
                outcome, detail = classify(result, None)
                if outcome == "identical":
                    outcome = "accepted"  # a value the verb took; wrong only if it is not a number it can honour
                    if numeric and value in ("nan", "inf", "-inf", "1e400"):
                        outcome, detail = "wrong", f"non-finite {value} accepted"
                cases.append({"category": "cli", "verb": verb, "option": flag, "value": value, "outcome": outcome, "detail": detail})
    return cases


def config_cases(paths: dict[str, Path], work: Path, quick: bool) -> list[dict]:
    """Every numeric config key with bad values: refused, or a config that builds."""
    import dataclasses

    from ponder.config import RunConfig, build_config
    from ponder.errors import PonderInputError

    cases = []
    cfg = RunConfig()
    for section in ("model", "task", "train"):
        for f in dataclasses.fields(getattr(cfg, section)):
            if f.type not in ("int", "float"):
                continue
            for value in (FUZZ_NUMBERS[:4] if quick else FUZZ_NUMBERS):
                key = f"{section}.{f.name}"
                try:
                    build_config(overrides={key: value})
                    outcome, detail = "accepted", ""
                    if value in ("nan", "inf", "-inf", "1e400") or (f.type == "int" and value == "99999999999999999999"):
                        outcome, detail = "wrong", f"{key}={value} accepted"  # not finite, or past int64
                except PonderInputError as e:
                    outcome, detail = ("error", str(e)[:200]) if "\n" not in str(e) else ("traceback", "multi-line error")
                except Exception as e:  # noqa: BLE001
                    outcome, detail = "traceback", f"{type(e).__name__}: {e}"[:200]
                cases.append({"category": "config", "key": key, "value": value, "outcome": outcome, "detail": detail})
    return cases


def ponder_cmd() -> list[str]:
    return [sys.executable, "-m", "ponder.cli"]


def kill_cases(work: Path, kills: int, seed: int) -> list[dict]:
    """SIGKILL a training subprocess after a random delay (some before the first
    checkpoint), resume it, and compare its log with an uninterrupted run's."""
    from ponder.run_folder import read_log

    args = ["--preset", "trm-sudoku-cpu", *TINY_TRM, "train.steps=12", "train.checkpoint_every=3"]
    full = work / "kill-full"
    subprocess.run([*ponder_cmd(), "train", "--out", full, *map(str, args)], check=True, capture_output=True, cwd=ROOT)
    expected = [comparable(r) for r in read_log(full) if r.get("event") in LOGGED]
    rng = random.Random(seed)
    cases = []
    for k in range(kills):
        run = work / f"kill-{k}"
        delay = rng.uniform(0.5, 6.0)
        proc = subprocess.Popen([*ponder_cmd(), "train", "--out", run, *map(str, args)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=ROOT)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = (run / "results.json").exists()
        rc = subprocess.run([*ponder_cmd(), "train", "--resume", run], capture_output=True, text=True, cwd=ROOT)
        if not (run / "config.json").exists():  # killed before anything was written: a fresh --out must work
            rc = subprocess.run([*ponder_cmd(), "train", "--out", run, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
        same = rc.returncode == 0 and [comparable(r) for r in read_log(run) if r.get("event") in LOGGED] == expected
        outcome = "identical" if same else ("error" if rc.returncode == 2 and len(rc.stderr.strip().splitlines()) == 1 else "wrong")
        cases.append({"category": "kill", "delay_s": round(delay, 2), "finished_before_kill": finished, "outcome": outcome,
                      "detail": "" if same else (rc.stderr.strip().splitlines() or ["log differs"])[-1][:200]})
        shutil.rmtree(run, ignore_errors=True)
    return cases


LOGGED = ("train", "val", "test")  # what a run computes; start, resume and checkpoint lines say how it ran


def leftover_cases(paths: dict[str, Path], work: Path) -> list[dict]:
    """A folder as a kill during a checkpoint write leaves it, resumed."""
    run = paths["trm"]
    clean = work / "leftovers-clean"
    shutil.copytree(run, clean)
    base = call(["train", "--resume", clean, "train.steps=6", "--json"])
    baseline = json.loads(base[1].strip().splitlines()[-1])
    cases = []
    for name, make in {
        "temporary main file": lambda d: (d / "checkpoint.safetensors.deadbeef.tmp").write_bytes(b"\0" * 1000),
        "orphan shard": lambda d: (d / "checkpoint.6-deadbeef-1.safetensors").write_bytes(b"\0" * 1000),
        "temporary config": lambda d: (d / "config.json.999-abcdef12.tmp").write_text("{"),
    }.items():
        damaged = work / f"leftovers-{name.replace(' ', '-')}"
        shutil.copytree(run, damaged)
        make(damaged)
        outcome, detail = classify(call(["train", "--resume", damaged, "train.steps=6", "--json"]), baseline)
        left = sorted(p.name for p in damaged.iterdir() if p.name.endswith(".tmp") or "deadbeef" in p.name)
        if left and outcome == "identical":
            outcome, detail = "wrong", f"left behind: {left}"
        cases.append({"category": "leftovers", "case": name, "outcome": outcome, "detail": detail})
    return cases


def rewrite_checkpoint(path: Path, change: Callable[[dict, dict], Any]) -> None:
    """Apply `change(tensors, meta)` and save the checkpoint with a consistent content
    hash: what a buggy writer, not a damaged disk, would leave."""
    from safetensors.torch import save_file

    from ponder.train.checkpoint import content_hash, read_checkpoint

    tensors, meta = read_checkpoint(path)
    change(tensors, meta)
    meta.pop("shards", None)
    meta.pop("split", None)
    meta["content_sha256"] = content_hash(tensors, meta)
    save_file(tensors, str(path), metadata={"ponder": json.dumps(meta)})


def poison(prefix: str, value: float) -> Callable[[dict, dict], None]:
    """Set the first element of the first floating tensor under `prefix` to `value`."""
    def change(tensors: dict, meta: dict) -> None:
        name = next(k for k, v in sorted(tensors.items()) if k.startswith(prefix) and v.is_floating_point() and v.numel() > 1)
        tensors[name].view(-1)[0] = value
    return change


def numerical_cases(paths: dict[str, Path], work: Path) -> list[dict]:
    """Non-finite numbers: a diverging run, and NaN or inf written into each group of a
    checkpoint by a buggy writer; then eval and resume must refuse, never use them."""
    cases = []
    run = work / "numerical-diverge"
    result = call(["train", "--out", run, *TINY_TRM, "train.optimizer=adamw", "train.lr=1e6", "train.steps=12", "train.checkpoint_every=1"])
    outcome, detail = classify(result, None)
    if outcome == "error" and "diverged" not in detail:
        outcome, detail = "wrong", f"refused for another reason: {detail}"
    elif outcome == "identical":
        outcome, detail = "wrong", "a diverging run exited 0"
    if (run / "checkpoint.safetensors").exists():
        import torch

        from ponder.train.checkpoint import read_checkpoint

        tensors, _ = read_checkpoint(run / "checkpoint.safetensors")
        if not all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()):
            outcome, detail = "wrong", "a non-finite checkpoint was written"
    cases.append({"category": "numerical", "case": "train.lr=1e6 (AdamW)", "outcome": outcome, "detail": detail})
    for prefix in ("model.", "ema.", "optim."):
        for value in (float("nan"), float("inf")):
            for verb, argv in {"eval": lambda r: ["eval", r, "--json"], "resume": lambda r: ["train", "--resume", r, "train.steps=6", "--json"]}.items():
                damaged = work / f"numerical-{prefix}{value}-{verb}"
                shutil.copytree(paths["trm"], damaged)
                try:
                    rewrite_checkpoint(damaged / "checkpoint.safetensors", poison(prefix, value))
                except StopIteration:  # the run keeps no such group (no EMA, say)
                    continue
                outcome, detail = classify(call(argv(damaged)), None)
                if outcome == "identical" and not (verb == "eval" and prefix != "ema."):  # eval reads the EMA weights only
                    outcome, detail = "wrong", f"{value} in '{prefix}*' used without a word"
                elif outcome == "identical":
                    outcome = "accepted"  # eval never reads these tensors
                cases.append({"category": "numerical", "case": f"{value} in {prefix}*", "verb": verb, "outcome": outcome, "detail": detail})
                shutil.rmtree(damaged, ignore_errors=True)
    return cases


def writer_argv(what: str, out: Path, seed: int) -> list[str]:
    if what == "train":
        return [*ponder_cmd(), "train", "--preset", "trm-sudoku-cpu", *TINY_TRM, "train.steps=6", f"train.seed={seed}", "--out", str(out)]
    return [*ponder_cmd(), "data", "build", "sudoku", "train_size=200", "val_size=4", "test_size=4", "--seed", str(seed), "--out", str(out)]


def writer_cases(paths: dict[str, Path], work: Path, trials: int) -> list[dict]:
    """Two writers started together on one new folder (different seeds): exactly one
    refuses, naming the other's pid, and the folder holds one run."""
    cases = []
    for trial in range(trials):
        for what in ("train", "data build"):
            out = work / f"writers-{what.replace(' ', '')}-{trial}"
            procs = [subprocess.Popen(writer_argv(what, out, seed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                     for seed in (trial, trial + 1)]
            done = [(p.wait(), p.communicate()[1]) for p in procs]
            codes = sorted(rc for rc, _ in done)
            refused = [err for rc, err in done if rc == 2]
            named = bool(refused) and "another process (pid" in refused[0]
            mixed = what == "train" and sum(r.get("event") == "start" for r in _log(out)) != 1
            if codes == [0, 2] and named and not mixed:
                outcome, detail = "error", refused[0].strip().splitlines()[-1][:200]
            else:
                outcome, detail = ("mixed" if mixed else "wrong"), f"exit codes {codes}: " + " | ".join(e.strip()[-150:] for _, e in done)
            cases.append({"category": "writers", "verb": what, "trial": trial, "outcome": outcome, "detail": detail})
            shutil.rmtree(out, ignore_errors=True)
    return cases


def _log(run: Path) -> list[dict]:
    from ponder.run_folder import read_log

    return read_log(run) if run.exists() else []


# ------------------------------------------------------------------------------ report

def table(cases: list[dict]) -> str:
    outcomes = ("error", "identical", "accepted", "traceback", "wrong", "mixed")
    categories = list(dict.fromkeys(c["category"] for c in cases))
    lines = ["| category | cases | " + " | ".join(outcomes) + " |", "|---|---" + "|---" * len(outcomes) + "|"]
    for cat in categories:
        rows = [c for c in cases if c["category"] == cat]
        lines.append(f"| {cat} | {len(rows)} | " + " | ".join(str(sum(c['outcome'] == o for c in rows)) for o in outcomes) + " |")
    lines.append(f"| all | {len(cases)} | " + " | ".join(str(sum(c['outcome'] == o for c in cases)) for o in outcomes) + " |")
    return "\n".join(lines)


def failures(cases: list[dict]) -> list[dict]:
    return [c for c in cases if c["outcome"] in ("traceback", "wrong", "mixed")]


def audit(work: Path, quick: bool, seeds: int, kills: int, trials: int) -> list[dict]:
    paths = fixtures(work / "fixtures")
    kinds = CORRUPTIONS
    cases = []
    cases += run_file_cases(paths, work, 1 if quick else seeds, kinds)
    cases += data_file_cases(paths, work, 1 if quick else seeds, kinds)
    cases += config_cases(paths, work, quick)
    cases += cli_cases(paths, work, quick)
    cases += leftover_cases(paths, work)
    cases += numerical_cases(paths, work)
    cases += kill_cases(work, kills, seed=0)
    cases += writer_cases(paths, work, trials)
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: OUT/work, removed afterwards)")
    parser.add_argument("--quick", action="store_true", help="the subset the tests run")
    parser.add_argument("--seeds", type=int, default=5, help="random byte flips per file")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--trials", type=int, default=5, help="two-writer trials per verb")
    args = parser.parse_args()
    work = (args.work or args.out / "work").resolve()
    args.out = args.out.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.time()
    here = os.getcwd()
    os.chdir(work)  # fuzzed relative paths land in the scratch folder
    try:
        cases = audit(work, args.quick, args.seeds, 2 if args.quick else args.kills, 1 if args.quick else args.trials)
    finally:
        os.chdir(here)
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(cases)
    bad = failures(cases)
    (args.out / "results.json").write_text(json.dumps({"seconds": round(time.time() - start, 1), "cases": cases}, indent=1) + "\n")
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    for case in bad:
        print("FAIL", json.dumps(case))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
