"""Training speed when the CPU is shared: the default run alone and beside a competing
load, for each thread setting and OpenMP wait policy.

    python benchmarks/contention.py --out records/contention-cpu

Each condition trains the default preset (`trm-sudoku-cpu`) for `--steps` batches in a
fresh process (`ponder train`, so `ponder/__init__.py` sets its OpenMP default unless a
row turns it off) and reports seconds per batch (training time / steps, the final test
excluded). The competing load is `--load` processes each spinning one core in pure
Python (what another user's job looks like to the scheduler). Conditions run in turn,
alone and loaded, `--repeats` times; the table gives the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {  # name -> (train.threads, environment for OpenMP; None: ponder's own default)
    "2 threads, ponder's default (GOMP_SPINCOUNT=10000)": (2, None),
    "2 threads, OpenMP default": (2, {}),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2 threads, OMP_WAIT_POLICY=ACTIVE": (2, {"OMP_WAIT_POLICY": "ACTIVE"}),
    "2 threads, GOMP_SPINCOUNT=10000": (2, {"GOMP_SPINCOUNT": "10000"}),
    "2 threads, GOMP_SPINCOUNT=100000": (2, {"GOMP_SPINCOUNT": "100000"}),
    "1 thread": (1, {}),
}
SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def seconds_per_batch(threads: int, openmp: dict[str, str] | None, steps: int, extra: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "PONDER_OMP_DEFAULTS")}
    if openmp is not None:
        env["PONDER_OMP_DEFAULTS"] = "0"  # the library's own behaviour, or these settings, not ponder's choice
        env.update(openmp)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "ponder.cli", "train", "--out", str(out), f"train.threads={threads}",
                   f"train.steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "task.test_size=50", *extra]
        subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
        return json.loads((out / "results.json").read_text())["train_seconds"] / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--load", type=int, default=2, help="competing processes, one busy core each")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.repeats):
        for loaded in (False, True):
            spinners = []
            if loaded:
                spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=3600)]) for _ in range(args.load)]
                time.sleep(1)
            try:
                for name, (threads, openmp) in SETTINGS.items():
                    t = seconds_per_batch(threads, openmp, args.steps, args.set)
                    times.setdefault((name, loaded), []).append(t)
                    print(f"{name}, {'loaded' if loaded else 'alone'}: {t:.3f} s/batch", flush=True)
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
    lines = [f"| setting | alone: s / batch | beside {args.load} busy processes: s / batch | slowdown |", "|---|---|---|---|"]
    rows = []
    for name in SETTINGS:
        alone, loaded = statistics.median(times[name, False]), statistics.median(times[name, True])
        rows.append({"setting": name, "alone": alone, "loaded": loaded, "runs": {"alone": times[name, False], "loaded": times[name, True]}})
        lines.append(f"| {name} | {alone:.3f} | {loaded:.3f} | {loaded / alone:.2f}x |")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    setup = {"steps": args.steps, "load": args.load, "repeats": args.repeats, "cpus": os.cpu_count(), "set": args.set,
             "command": "python benchmarks/contention.py " + " ".join(sys.argv[1:])}
    (args.out / "results.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
