"""The short-allocation script end to end on the CPU in its tiny mode: device report,
throughput rows, a run that stops for time with a checkpoint, and a second call that
resumes it."""

import json
import subprocess
import sys

from conftest import ROOT


def call(run, out):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_run.py"), "--tiny", "--minutes", "0.6", "--run", str(run), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return [json.loads(line) for line in (out / "gpu_run.jsonl").read_text().splitlines()]


def stop_step(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "stop"
    return lines[-1]["step"]


def test_gpu_run_tiny_twice(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    rows = call(run, out)
    assert rows[0]["event"] == "device" and rows[0]["device"] == "cpu"
    bench = [r for r in rows if r["event"] == "throughput"]
    assert {r["batching"] for r in bench} == {"refill", "shrink"} and all(r["example_segments_per_s"] > 0 for r in bench)
    first = stop_step(run)
    assert first >= 1
    files = sorted(p.name for p in out.iterdir())
    assert {"config.json", "metrics.jsonl", "checkpoint.safetensors", "gpu_run.jsonl"} <= set(files) and len(files) <= 8
    assert all((out / f).stat().st_size <= 16 * 2**20 for f in files)
    rows = call(run, tmp_path / "out2")  # the next allocation: resumes
    assert rows[-1]["event"] == "train" and rows[-1]["stopped_cleanly"]
    events = [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert events.count("resume") == 1 and stop_step(run) > first
