"""Training throughput and batch-1 solve latency of Sudoku configurations.

    python benchmarks/throughput.py                 # table on this machine
    python benchmarks/throughput.py --json          # one JSON object per configuration
    python benchmarks/throughput.py --device cuda   # on a GPU

Throughput counts examples x segments per second in the real training step
(`ponder.train.loop.train_batch`: forward, loss, backward, optimizer, EMA), with
halting off so every example runs every segment. Latency is one puzzle, one segment,
no gradient (the unit of test-time thinking), median over repeats. Warm-up calls are
not timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from ponder.config import build_config
from ponder.models import build_model, count_params
from ponder.tasks.builders import generate_sudoku
from ponder.tasks.sudoku import SIZE, VOCAB, peer_mask
from ponder.train.ema import EMA
from ponder.train.loop import train_batch
from ponder.train.optim import build_optimizer

# name -> (preset, overrides, batch size for the throughput measurement)
CONFIGS = {
    "default (trm-sudoku-cpu)": ("trm-sudoku-cpu", {}, 64),
    "TRM paper Sudoku, MLP (trm-mlp-sudoku)": ("trm-mlp-sudoku", {}, 16),
    "HRM paper Sudoku (hrm-sudoku)": ("hrm-sudoku", {}, 16),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, preset: str, overrides: dict, batch: int, device: torch.device, segments: int, repeats: int, autocast: str) -> dict:
    cfg = build_config(preset=preset, overrides={**overrides, "model.halting": "none", "train.max_segments": str(segments), "train.autocast": autocast})
    torch.manual_seed(0)
    model = build_model(cfg.model, VOCAB, SIZE, peer_mask()).to(device)
    optimizer = build_optimizer(model, cfg.train)
    ema = EMA(model, cfg.train.ema)
    puzzles, solutions = generate_sudoku(batch, cfg.task.blanks, seed=0, split="bench", workers=1)
    tokens, labels = torch.from_numpy(puzzles).long().to(device), torch.from_numpy(solutions).long().to(device)
    gen = torch.Generator().manual_seed(0)

    train_batch(model, [optimizer], ema, cfg, tokens, labels, None, gen, device)  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        train_batch(model, [optimizer], ema, cfg, tokens, labels, None, gen, device)
        sync(device)
        times.append(time.perf_counter() - t0)
    train_s = statistics.median(times)

    model.eval()
    one = tokens[:1]
    lat = []
    with torch.no_grad():
        for k in range(repeats * 10 + 2):
            sync(device)
            t0 = time.perf_counter()
            model(one)
            sync(device)
            if k >= 2:
                lat.append(time.perf_counter() - t0)
    return {
        "config": name,
        "params": count_params(model),
        "hidden": cfg.model.hidden,
        "mixer": cfg.model.mixer,
        "network_calls_per_segment": model.calls_per_segment,
        "batch": batch,
        "segments": segments,
        "device": str(device),
        "autocast": autocast,
        "train_examples_segments_per_s": round(batch * segments / train_s, 1),
        "solve_latency_ms_per_segment": round(1000 * statistics.median(lat), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--segments", type=int, default=2, help="segments per training batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed training batches; 10x as many latency calls")
    parser.add_argument("--autocast", default="none", choices=["none", "bfloat16"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    rows = [measure(name, p, o, b, device, args.segments, args.repeats, args.autocast) for name, (p, o, b) in CONFIGS.items()]
    if args.json:
        for row in rows:
            print(json.dumps({**row, **env}))
        return
    print(f"torch {env['torch']}, {env['threads']} threads, device {device}" + (f" ({env['gpu']})" if "gpu" in env else ""))
    print("| config | params | train (examples x segments / s) | batch-1 solve (ms / segment) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['params'] / 1e6:.2f}M | {r['train_examples_segments_per_s']} (batch {r['batch']}) | {r['solve_latency_ms_per_segment']} |")


if __name__ == "__main__":
    main()
