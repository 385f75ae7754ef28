"""Training throughput of the real training step, and batch-1 solve latency.

    python benchmarks/throughput.py                                   # the default model, this machine
    python benchmarks/throughput.py --presets trm-mlp-sudoku,hrm-sudoku --device cuda \\
        --modes eager,compiled --precisions fp32,bf16 --batchings shrink,refill --json

Each row builds the preset's `ponder.train.loop.Trainer` (model, optimizer, EMA, data
stream; the preset's batch unless --batch is given) and times its own step, with
halting off so that every example runs every segment: a shrinking batch (`train_batch`:
up to max_segments segments, one update each) or a refilling one (`train_segment`: one
segment of the fixed batch). Throughput is example-segments per second, the unit both
modes share; MFU is the analytic training FLOPs of those example-segments
(`ponder.models.flops`) over the device's peak dense rate (bf16 or TF32/fp32, the
datasheet figure; none on a CPU unless --peak-tflops is given). Warm-up steps
(compilation included) are not timed; the device is synchronised around the timed
steps. Latency is one puzzle, one segment, no gradient, median over repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ponder.config import build_config
from ponder.models import count_params
from ponder.train.loop import Trainer, process_settings

PRECISIONS = {"fp32": "none", "bf16": "bfloat16"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_trainer(preset: str, device: str, batch: int | None, batching: str, compiled: bool, precision: str, segments: int | None, peak: float) -> Trainer:
    base = build_config(preset=preset)
    rows = batch or base.train.batch_size
    overrides = {
        "model.halting": "none", "train.device": device, "train.batching": batching, "train.compile": str(compiled).lower(),
        "train.autocast": PRECISIONS[precision], "train.batch_size": str(rows), "train.peak_tflops": str(peak),
        "train.steps": "1000000", "train.lr_warmup": "1",
    }
    if segments:
        overrides["train.max_segments"] = str(segments)
    if base.task.name == "sudoku":  # a small generated set: the step does not depend on its size
        overrides.update({"task.train_size": str(max(4 * rows, 256)), "task.val_size": "16", "task.test_size": "16"})
    cfg = build_config(preset=preset, overrides=overrides)
    out = Path(tempfile.mkdtemp(prefix="ponder-throughput-")) / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        return Trainer(cfg, out, progress=False, quiet=True)


def measure(preset: str, device: str, batch: int | None, batching: str, compiled: bool, precision: str, segments: int | None,
            steps: int, warmup: int, peak: float) -> dict:
    t = build_trainer(preset, device, batch, batching, compiled, precision, segments, peak)
    step_fn = t.train_segment if batching == "refill" else t.train_batch
    per_step = 1 if batching == "refill" else t.tc.max_segments  # segments per step, halting off
    rows = t.tc.batch_size
    t.model.train()
    compile_start = time.perf_counter()
    for k in range(warmup):
        t.set_lr(k)
        step_fn(k)
    sync(t.device)
    warmup_s = time.perf_counter() - compile_start
    start = time.perf_counter()
    for k in range(warmup, warmup + steps):
        t.set_lr(k)
        step_fn(k)
    sync(t.device)
    seconds = time.perf_counter() - start
    t.meter.read(t.dist)  # drain the device-side sums
    rate = rows * per_step * steps / seconds
    row = {
        "preset": preset, "params": count_params(t.model), "batch": rows, "batching": batching, "compiled": compiled,
        "precision": precision, "max_segments": t.tc.max_segments, "device": str(t.device),
        "example_segments_per_s": round(rate, 1), "step_ms": round(1000 * seconds / steps, 2), "warmup_s": round(warmup_s, 1),
        "train_flops_per_example_segment": t.flops_per_unit,
        "mfu": None if not t.peak else round(t.flops_per_unit * rate / t.peak, 4),
    }
    row["solve_latency_ms_per_segment"] = latency(t)
    return row


def latency(t: Trainer, repeats: int = 20) -> float:
    model = t.eval_model.eval()
    one = t.stream.fetch(torch.zeros(1, dtype=torch.long, device=t.device), 0, 1)[0]
    times = []
    with torch.no_grad():
        for k in range(repeats + 2):
            sync(t.device)
            t0 = time.perf_counter()
            model(one)
            sync(t.device)
            if k >= 2:
                times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 2)


def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def run(args) -> list[dict]:
    rows = []
    for preset in args.presets.split(","):
        for batching in args.batchings.split(","):
            for mode in args.modes.split(","):
                for precision in args.precisions.split(","):
                    rows.append(measure(preset, args.device, args.batch, batching, mode == "compiled", precision, args.segments,
                                        args.steps, args.warmup, args.peak_tflops))
                    if args.progress:
                        r = rows[-1]
                        print(f"  {preset} {batching} {mode} {precision}: {r['example_segments_per_s']} example-segments/s", flush=True)
    return rows


def table(rows: list[dict], env: dict) -> str:
    lines = [f"torch {env['torch']}, {env['threads']} threads" + (f", {env['gpu']}" if "gpu" in env else f", {env['machine']}"),
             "| preset | params | batching | mode | precision | batch | example-segments / s | step ms | MFU | batch-1 solve ms / segment |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = "—" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mode = "compiled" if r["compiled"] else "eager"
        lines.append(f"| {r['preset']} | {r['params'] / 1e6:.2f}M | {r['batching']} | {mode} | {r['precision']} | {r['batch']} | "
                     f"{r['example_segments_per_s']} | {r['step_ms']} | {mfu} | {r['solve_latency_ms_per_segment']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="trm-sudoku-cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="rows per step (default: the preset's)")
    parser.add_argument("--batchings", default="shrink,refill")
    parser.add_argument("--modes", default="eager", help="eager, compiled or both")
    parser.add_argument("--precisions", default="fp32", help="fp32, bf16 or both")
    parser.add_argument("--segments", type=int, default=None, help="max_segments (default: the preset's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak for MFU (0: known GPUs only)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.progress = not args.json
    with process_settings(args.threads):
        env = environment(args.device)
        rows = run(args)
    if args.json:
        for row in rows:
            print(json.dumps({**row, **env}))
    else:
        print(table(rows, env))


if __name__ == "__main__":
    main()
