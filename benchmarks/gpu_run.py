"""One short GPU allocation, turned into measured progress, in one call.

    PYTHONPATH=$PWD python benchmarks/gpu_run.py --minutes 9 --out "$OUT"

In one call of at most `--minutes` (default 9) it:

1. reports the device (name, memory, PyTorch and CUDA versions, the datasheet peak,
   and a measured bf16 matrix-product rate, 8192^3, median of 10 after warm-up);
2. runs the throughput benchmark (`benchmarks/throughput.py`) on `--bench-presets`
   (default: trm-mlp-sudoku, trm-sudoku, hrm-sudoku) at their paper batch sizes, row by
   row in priority order (bf16 refill eager, then bf16 refill compiled, then fp32
   refill, then the shrinking batch, ...) while its share of the time (`--bench-share`)
   lasts;
3. continues the named paper-preset run (`--preset`, default trm-sudoku-extreme) in
   `--run` for the minutes left: a new run if the folder has no checkpoint, else
   `ponder train --resume`, with `train.max_minutes` set so that it stops cleanly,
   checkpoints (sharded, at most 16 MiB a file) and skips the final test;
4. copies what a short allocation can carry back (at most 8 files of at most 16 MiB) to
   `--out`: the run's config, metrics log and checkpoint files, and one JSONL file with
   the device report and the throughput rows.

Between allocations, keep the run folder (and the dataset folder the run reads, built
once with `ponder data build`) beside the repository and send them with the next call;
the next call resumes the run where it stopped, with nothing lost or repeated.
`--tiny` runs the whole sequence in seconds on the CPU (what CI checks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import throughput  # noqa: E402
from ponder.models.flops import peak_flops  # noqa: E402
from ponder.run_folder import CHECKPOINT, CONFIG, METRICS, read_jsonl  # noqa: E402
from ponder.train.checkpoint import checkpoint_files  # noqa: E402
from ponder.train.loop import process_settings  # noqa: E402

MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20
TINY_RUN = [
    "model.hidden=16", "model.heads=2", "model.layers=1", "model.latent_steps=1", "task.blanks=20", "task.train_size=64",
    "task.val_size=16", "task.test_size=16", "train.batch_size=8", "train.max_segments=2", "train.eval_segments=2",
    "train.eval_every=4", "train.checkpoint_every=4", "train.lr_warmup=2", "train.steps=100000", "train.log_every=2",
]


def device_report(device: torch.device, tiny: bool) -> dict:
    report = {"torch": torch.__version__, "device": str(device), "python": sys.version.split()[0]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                      multiprocessors=props.multi_processor_count)
        peak = peak_flops(device, torch.bfloat16)
        report["datasheet_bf16_tflops"] = None if peak is None else peak / 1e12
        if not tiny:
            report["measured_bf16_tflops"] = round(matmul_rate(device) / 1e12, 1)
    return report


def matmul_rate(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) / 1000)
    return 2 * n**3 / statistics.median(times)


def bench_plan(presets: list[str], tiny: bool) -> list[tuple[str, str, bool, str]]:
    """(preset, batching, compiled, precision) rows, most wanted first."""
    if tiny:
        return [(p, b, False, "fp32") for p in presets for b in ("refill", "shrink")]
    order = [("refill", False, "bf16"), ("refill", True, "bf16"), ("refill", False, "fp32"), ("shrink", False, "bf16"),
             ("refill", True, "fp32"), ("shrink", False, "fp32")]
    return [(p, b, c, prec) for b, c, prec in order for p in presets]


def run_benchmarks(args, device: torch.device, deadline: float, log) -> list[dict]:
    rows = []
    estimate = {False: 25.0, True: 90.0}  # seconds a row may take (compilation dominates a compiled one)
    for preset, batching, compiled, precision in bench_plan(args.bench_presets.split(","), args.tiny):
        if not args.tiny and time.time() + estimate[compiled] > deadline:  # tiny rows take a second: all run
            rows.append({"preset": preset, "batching": batching, "compiled": compiled, "precision": precision, "skipped": "time"})
            continue
        try:
            row = throughput.measure(preset, str(device), 8 if args.tiny else None, batching, compiled, precision,
                                     2 if args.tiny else None, args.bench_steps, args.bench_warmup, 0.0)
        except Exception as e:  # one failed configuration must not cost the allocation
            row = {"preset": preset, "batching": batching, "compiled": compiled, "precision": precision, "error": f"{type(e).__name__}: {e}"[:300]}
        rows.append(row)
        log(f"bench {preset} {batching} {'compiled' if compiled else 'eager'} {precision}: "
            f"{row.get('example_segments_per_s', row.get('error'))} example-segments/s, MFU {row.get('mfu')}")
    return rows


def train_command(args, minutes: float) -> list[str]:
    run = Path(args.run)
    cli = [sys.executable, "-m", "ponder.cli", "train"]
    limit = [f"train.max_minutes={minutes:.3f}"]
    if (run / CHECKPOINT).is_file():
        return cli + ["--resume", str(run), *limit, *args.set]
    base = list(TINY_RUN) if args.tiny else []
    data = [f"task.data_dir={args.data}"] if args.data else []
    return cli + ["--preset", args.preset, "--out", str(run), *base, *data, *limit, *args.set]


def continue_run(args, deadline: float, log) -> dict:
    """The paper-preset run for the minutes left; SIGTERM (a clean checkpointed stop)
    if it overruns the deadline."""
    if args.data and not (Path(args.data) / "manifest.json").is_file():
        return {"error": f"{args.data}: no dataset folder; build it first with 'ponder data build' and send it with the call"}
    setup = 5.0 if args.tiny else 75.0  # loading data and building the model before the clock of train.max_minutes starts
    minutes = (deadline - time.time() - setup) / 60
    if args.tiny:  # a few seconds of training; the rest of --minutes is headroom for a slow machine
        minutes = min(minutes, 0.05)
    if minutes <= 0.02:
        return {"skipped": "no time left"}
    command = train_command(args, minutes)
    log("train: " + " ".join(command[2:]))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    stops_before = count_stops(Path(args.run) / METRICS)
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    terminated = False
    try:
        out, _ = proc.communicate(timeout=max(5.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the trainer checkpoints and stops after its current step
        terminated = True
        out, _ = proc.communicate(timeout=120)
    tail = "\n".join((out or "").strip().splitlines()[-4:])
    log(tail)
    # On a slow machine the SIGTERM can land after the trainer's own timed stop, while
    # the interpreter exits: the returncode says "killed", yet the run logged its stop.
    stopped = count_stops(Path(args.run) / METRICS) > stops_before
    return {"returncode": proc.returncode, "terminated": terminated, "stopped_cleanly": proc.returncode == 0 or stopped,
            "tail": tail}


def count_stops(metrics: Path) -> int:
    """How many checkpointed stops ("stop" lines) the run's metrics log holds."""
    if not metrics.is_file():
        return 0
    return sum(record.get("event") == "stop" for record in read_jsonl(metrics))


def copy_out(args, rows: list[dict], report: dict, result: dict) -> list[str]:
    """The run's config, log and checkpoint, and one JSONL of the device report and
    benchmark rows, into --out: at most 8 files of at most 16 MiB."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = out / "gpu_run.jsonl"
    with open(bench, "w") as f:
        f.write(json.dumps({"event": "device", **report}) + "\n")
        for row in rows:
            f.write(json.dumps({"event": "throughput", **row}) + "\n")
        f.write(json.dumps({"event": "train", **result}) + "\n")
    files = [bench]
    run = Path(args.run)
    for path in [run / CONFIG, run / METRICS, *checkpoint_files(run / CHECKPOINT)]:
        if path.is_file() and path.resolve().parent != out.resolve():
            shutil.copy(path, out / path.name)
        if (out / path.name).is_file():
            files.append(out / path.name)
    too_big = [f.name for f in files if f.stat().st_size > MAX_FILE_BYTES]
    if len(files) > MAX_FILES or too_big:
        print(f"warning: {len(files)} files, over 16 MiB: {too_big}; an allocation may not carry them all back", file=sys.stderr)
    return [f.name for f in files]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=9.0, help="the whole call, start to copy")
    parser.add_argument("--preset", default="trm-sudoku-extreme")
    parser.add_argument("--run", default="runs/trm-sudoku-extreme", help="the run folder to start or continue")
    parser.add_argument("--data", default="data/sudoku-extreme-1k", help="the dataset folder the run reads ('' : build in memory)")
    parser.add_argument("--bench-presets", default="trm-mlp-sudoku,trm-sudoku,hrm-sudoku")
    parser.add_argument("--bench-share", type=float, default=0.4, help="fraction of the time for the throughput rows")
    parser.add_argument("--bench-steps", type=int, default=10)
    parser.add_argument("--bench-warmup", type=int, default=3)
    parser.add_argument("--out", default=os.environ.get("OUT", "records/gpu-run"), help="where the files to carry back go")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the run (e.g. train.eval_every=500)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long CPU version of every step")
    args = parser.parse_args()
    start = time.time()
    deadline = start + 60 * args.minutes - (2 if args.tiny else 30)  # the copy at the end
    if args.tiny:
        args.bench_presets, args.preset, args.data = "trm-sudoku-cpu", "trm-sudoku-cpu", ""
        args.bench_steps, args.bench_warmup = 2, 1
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")

    def log(text: str) -> None:
        print(f"[{time.time() - start:6.1f}s] {text}", flush=True)

    report = device_report(device, args.tiny)
    log(f"device: {json.dumps(report)}")
    with process_settings(0):  # TF32 for float32 matmuls, as `ponder train` runs them
        rows = run_benchmarks(args, device, start + args.bench_share * (deadline - start), log)
    result = continue_run(args, deadline, log)
    files = copy_out(args, rows, report, result)
    log(f"wrote {', '.join(files)} to {args.out}")
    print(throughput.table([r for r in rows if "example_segments_per_s" in r], throughput.environment(str(device))))
    return 0 if result.get("stopped_cleanly", True) and "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
