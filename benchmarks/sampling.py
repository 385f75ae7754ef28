"""Fast decoding of one trained recurrent-depth LM against plain autoregressive decoding.

    python benchmarks/sampling.py RUN --out records/lm-sampling-cpu

For each test-time recurrence r (`--recurrence`, default 4 16), on the same prompts
(`--prompts` windows of `--prompt-length` tokens, evenly spaced over the run's validation
text), greedy decoding of `--new` tokens by:

- plain autoregressive decoding (`model.generate`, its exact KV cache): the reference,
  the tokens of recomputing the whole sequence at depth r;
- autoregressive, per-iteration cache (`ponder.lm.decoding`; the same tokens);
- autoregressive, shared cache;
- per-token exit at each KL threshold (`--exit-kl`) and latent threshold (`--exit-latent`),
  per-iteration cache;
- the diffusion-forcing sampler at each window (`--windows`; 0 stands for r), and at
  window r with each KL threshold as its commit rule.

Reported per method: sequential core calls and forward passes per generated token (the
prompt's pass included; independent of the hardware), core iterations per token, the
keys and values cached for one sequence, wall-clock tokens/s (batch 1, every method on a
prompt before the next prompt, after one warm-up call each, so a change in machine load
falls on all of them), agreement with the reference (the share of generated tokens
identical at the same position, mean over prompts), and the loss the model at full depth
r (recomputing the sequence) gives the generated tokens, in nats per token. Writes
`table.md`, `results.json` and `speed_vs_quality.png` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ponder.lm.decoding import Decoded, ExitRule, autoregressive, diffusion_forcing  # noqa: E402
from ponder.nn.blocks import KVCache  # noqa: E402
from ponder.tasks.dataset import sha256_file  # noqa: E402


def methods(r: int, windows: list[int], exit_kl: list[float], exit_latent: list[float]) -> dict:
    """name -> decode(model, idx, new) for one recurrence r; the reference first."""
    table = {
        "plain (model.generate)": lambda m, idx, n: plain(m, idx, n, r),
        "autoregressive, per-iteration cache": lambda m, idx, n: autoregressive(m, idx, n, r),
        "autoregressive, shared cache": lambda m, idx, n: autoregressive(m, idx, n, r, cache="shared"),
    }
    for kl in exit_kl:
        table[f"exit KL < {kl:g}"] = lambda m, idx, n, kl=kl: autoregressive(m, idx, n, r, rule=ExitRule(kl=kl))
    for latent in exit_latent:
        table[f"exit latent < {latent:g}"] = lambda m, idx, n, latent=latent: autoregressive(m, idx, n, r, rule=ExitRule(latent=latent))
    for w in sorted({w or r for w in windows}):
        table[f"diffusion, window {w}"] = lambda m, idx, n, w=w: diffusion_forcing(m, idx, n, r, window=w)
    for kl in exit_kl:
        table[f"diffusion, window {r}, KL < {kl:g}"] = lambda m, idx, n, kl=kl: diffusion_forcing(m, idx, n, r, window=r, rule=ExitRule(kl=kl))
    return table


def plain(model, idx: torch.Tensor, new: int, r: int) -> Decoded:
    """`model.generate` (greedy, its exact KV cache), with its costs: one forward pass
    of r core iterations per token."""
    cache = KVCache()
    tokens = model.generate(idx, new, temperature=0, r=r, cache=cache)
    return Decoded(tokens, new, new, r * new, [float(r)] * (new - 1), cache.nbytes())


def prompts(val: torch.Tensor, count: int, length: int, new: int) -> list[torch.Tensor]:
    """`count` windows of `length` tokens (1, length), evenly spaced over the validation text."""
    span = val.numel() - length - new
    return [val[i * span // count : i * span // count + length].view(1, -1) for i in range(count)]


@torch.no_grad()
def full_depth_loss(model, sequence: torch.Tensor, prompt_length: int, r: int) -> tuple[float, int]:
    """Summed cross-entropy (nats) the model at depth r, recomputing the sequence (1, T),
    gives its generated tokens, and their number."""
    logits = model(sequence[:, :-1], r=r).logits[0, prompt_length - 1 :]  # (new, V)
    target = sequence[0, prompt_length:]
    return float(F.cross_entropy(logits.float(), target, reduction="sum")), target.numel()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, device, r: int, todo: dict, inputs: list[torch.Tensor], new: int) -> list[dict]:
    """Every method on every prompt (round robin), timed; then scored against the first."""
    for decode in todo.values():  # warm-up
        decode(model, inputs[0], new)
    outputs = {name: [] for name in todo}
    seconds = dict.fromkeys(todo, 0.0)
    for idx in inputs:
        for name, decode in todo.items():
            synchronize(device)
            start = time.perf_counter()
            out = decode(model, idx, new)
            synchronize(device)
            seconds[name] += time.perf_counter() - start
            outputs[name].append(out)
    reference = outputs[next(iter(todo))]
    rows = []
    for name, outs in outputs.items():
        agree = [float((o.tokens[0, -new:] == ref.tokens[0, -new:]).float().mean()) for o, ref in zip(outs, reference)]
        losses = [full_depth_loss(model, o.tokens, o.tokens.shape[1] - new, r) for o in outs]
        summaries = [o.summary() for o in outs]
        rows.append({
            "r": r, "method": name,
            **{key: sum(s[key] for s in summaries) / len(summaries)
               for key in ("core_calls_per_token", "forward_passes_per_token", "iterations_per_token")},
            "cache_bytes": max(s["cache_bytes"] for s in summaries),
            "tokens_per_s": new * len(outs) / seconds[name],
            "agreement": sum(agree) / len(agree),
            "identical": sum(a == 1.0 for a in agree) / len(agree),
            "full_depth_loss": sum(loss for loss, _ in losses) / sum(n for _, n in losses),
        })
    base = rows[0]
    for row in rows:
        row["call_reduction"] = base["core_calls_per_token"] / row["core_calls_per_token"]
        row["speedup"] = row["tokens_per_s"] / base["tokens_per_s"]
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| r | method | sequential core calls / token | fewer calls | forward passes / token | iterations / token | "
        "cache KiB | tokens / s | speed-up | greedy agreement | identical outputs | full-depth loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['r']} | {row['method']} | {row['core_calls_per_token']:.2f} | {row['call_reduction']:.2f}x | "
            f"{row['forward_passes_per_token']:.2f} | {row['iterations_per_token']:.2f} | {row['cache_bytes'] / 2**10:.0f} | "
            f"{row['tokens_per_s']:.0f} | {row['speedup']:.2f}x | {100 * row['agreement']:.1f}% | "
            f"{100 * row['identical']:.0f}% | {row['full_depth_loss']:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Greedy agreement against wall-clock speed-up, one panel per r; a marker shape per
    kind of decoder, a colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({row["r"] for row in rows})
    names = list(dict.fromkeys(row["method"].replace(f"window {row['r']}", "window r") for row in rows))
    colours = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths) + 3, 4.5), squeeze=False)
    for ax, r in zip(axes[0], depths):
        for row in (row for row in rows if row["r"] == r):
            name = row["method"].replace(f"window {r}", "window r")
            marker = {"plain": "*", "autoregressive": "s", "exit": "o", "diffusion": "^"}[name.split(",")[0].split(" ")[0]]
            ax.scatter(row["speedup"], 100 * row["agreement"], marker=marker, s=60, color=colours[name], label=name, alpha=0.85)
        ax.axhline(95, color="grey", lw=0.5, ls="--")
        ax.axvline(2, color="grey", lw=0.5, ls="--")
        ax.set_xlabel("wall-clock speed-up over plain decoding")
        ax.set_ylabel("greedy agreement with plain decoding (%)")
        ax.set_title(f"r = {r}")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1 - 3 / (5 * len(depths) + 3), 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write(rows: list[dict], setup: dict, out: Path) -> None:
    """results.json, table.md and speed_vs_quality.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")
    (out / "table.md").write_text(table(rows) + "\n")
    plot(rows, out / "speed_vs_quality.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a recurrent-lm run folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recurrence", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--new", type=int, default=48)
    parser.add_argument("--windows", type=int, nargs="+", default=[2, 4, 8, 0], help="diffusion windows (0: r)")
    parser.add_argument("--exit-kl", type=float, nargs="*", default=[1e-3, 1e-2, 1e-1])
    parser.add_argument("--exit-latent", type=float, nargs="*", default=[1e-2, 1e-1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only rewrite the table and plot from OUT/results.json")
    args = parser.parse_args()
    if args.report:
        saved = json.loads((args.out / "results.json").read_text())
        write(saved["rows"], saved["setup"], args.out)
        print(table(saved["rows"]))
        return
    if args.run is None:
        parser.error("give a run folder (or --report)")
    torch.set_num_threads(args.threads)

    from ponder.api import load_language_run
    from ponder.lm.train import load_text_for

    cfg, model, tokenizer, device = load_language_run(args.run)
    val = torch.from_numpy(load_text_for(cfg.task).splits["val"].astype("int64")).to(device)
    inputs = prompts(val, args.prompts, args.prompt_length, args.new)
    rows = []
    for r in args.recurrence:
        print(f"r = {r}: {len(inputs)} prompts x {args.new} tokens", flush=True)
        rows += measure(model, device, r, methods(r, args.windows, args.exit_kl, args.exit_latent), inputs, args.new)
    print(table(rows))
    setup = {
        "run": args.run, "family": cfg.model.family, "task": cfg.task.name, "prompts": args.prompts,
        "prompt_length": args.prompt_length, "new": args.new, "threads": args.threads, "device": str(device),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "checkpoint_sha256": sha256_file(Path(args.run) / "checkpoint.safetensors"),
        "command": "python benchmarks/sampling.py " + " ".join(sys.argv[1:]),
    }
    write(rows, setup, args.out)


if __name__ == "__main__":
    main()
