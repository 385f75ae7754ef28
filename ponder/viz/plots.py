"""Plots of a run folder: training curves and accuracy vs thinking steps."""

from __future__ import annotations

from pathlib import Path

from ponder.run_folder import PLOT, read_log, read_results


def plot_run(run_dir: str | Path) -> Path:
    """Write `curves.png`: loss, train/val accuracy by step, test accuracy by segment."""
    run_dir = Path(run_dir)
    log = read_log(run_dir)
    train = [r for r in log if r.get("event") == "train"]
    val = [r for r in log if r.get("event") == "val"]
    test = read_results(run_dir)

    # A Figure with its own Agg canvas: no pyplot, so no global backend is chosen or changed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8)
    ax.set(xlabel="batch", ylabel="token loss", yscale="log", title="training loss")
    ax = axes[1]
    ax.plot([r["step"] for r in train], [r["accuracy"] for r in train], lw=0.6, alpha=0.6, label="train batch (exact, at its halting segment)")
    if val:
        ax.plot([r["step"] for r in val], [r["exact_accuracy"] for r in val], "o-", label="validation (exact)")
    ax.set(xlabel="batch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy during training")
    ax.legend(loc="lower right")
    ax = axes[2]
    if test:
        acc = test["accuracy_by_segment"]
        ax.plot(range(1, len(acc) + 1), acc, "o-", label=f"test, all segments (n={test['n']})")
        ax.axhline(test["halting_accuracy"], ls="--", c="gray", label=f"with halting: mean {test['mean_segments']:.2f} segments")
        ax.legend(loc="lower right")
    ax.set(xlabel="segments (thinking steps)", ylabel="exact accuracy", ylim=(0, 1.02), title="accuracy vs thinking steps")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir / PLOT
    tmp = path.with_name("curves.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path
