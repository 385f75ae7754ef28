"""Plots of a run folder: training curves and accuracy vs thinking steps; loss curves
of several runs side by side (a benchmark's comparison)."""

from __future__ import annotations

from pathlib import Path

from ponder.run_folder import PLOT, read_log, read_results


def _figure(width: float, panels: int):
    """A Figure with its own Agg canvas: no pyplot, so no global backend is chosen or changed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels)


def _save(fig, path: Path) -> Path:
    """Write the figure to `path` (a PNG) by way of a temporary file, so a reader never sees half of one."""
    fig.tight_layout()
    tmp = path.with_name(f"{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def _series(records: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of `key` over the records that hold both as numbers (a log line
    damaged on disk is left out, not plotted as garbage)."""
    number = (int, float)
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get("step"), number) and isinstance(r.get(key), number)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_run(run_dir: str | Path) -> Path:
    """Write `curves.png`: loss, train/val accuracy by step, test accuracy by segment (a
    language-model run: loss by step, validation loss by step and by test-time depth)."""
    run_dir = Path(run_dir)
    log = read_log(run_dir)
    train = [r for r in log if r.get("event") == "train"]
    val = [r for r in log if r.get("event") == "val"]
    test = read_results(run_dir)
    if any("loss_by_recurrence" in r for r in val):
        return plot_language_run(run_dir, train, val, test)

    fig, axes = _figure(15, 3)
    ax = axes[0]
    ax.plot(*_series(train, "loss"), lw=0.8)
    ax.set(xlabel="batch", ylabel="token loss", yscale="log", title="training loss")
    ax = axes[1]
    ax.plot(*_series(train, "accuracy"), lw=0.6, alpha=0.6, label="train batch (exact, at its halting segment)")
    if val:
        ax.plot(*_series(val, "exact_accuracy"), "o-", label="validation (exact)")
    ax.set(xlabel="batch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy during training")
    ax.legend(loc="lower right")
    ax = axes[2]
    if test and isinstance(test.get("accuracy_by_segment"), list) and all(k in test for k in ("n", "halting_accuracy", "mean_segments")):
        acc = test["accuracy_by_segment"]
        ax.plot(range(1, len(acc) + 1), acc, "o-", label=f"test, all segments (n={test['n']})")
        ax.axhline(test["halting_accuracy"], ls="--", c="gray", label=f"with halting: mean {test['mean_segments']:.2f} segments")
        ax.legend(loc="lower right")
    ax.set(xlabel="segments (thinking steps)", ylabel="exact accuracy", ylim=(0, 1.02), title="accuracy vs thinking steps")
    for a in axes:
        a.grid(alpha=0.3)
    return _save(fig, run_dir / PLOT)


def plot_language_run(run_dir: Path, train: list, val: list, test: dict | None) -> Path:
    """Training loss, validation loss by step, and the final validation loss against the
    test-time recurrence (flat for a model without one)."""
    fig, axes = _figure(15, 3)
    axes[0].plot(*_series(train, "loss"), lw=0.8)
    axes[0].set(xlabel="step", ylabel="loss (nats per token)", title="training loss")
    axes[1].plot(*_series(val, "loss"), "o-")
    axes[1].set(xlabel="step", ylabel="loss (nats per token)", title="validation loss")
    final = (test or (val[-1] if val else {})).get("loss_by_recurrence", {})
    final = {k: v for k, v in final.items() if isinstance(v, (int, float)) and (k == "default" or k.isdigit())} if isinstance(final, dict) else {}
    depths = sorted((int(k), v) for k, v in final.items() if k != "default")
    if depths:
        axes[2].plot([d for d, _ in depths], [v for _, v in depths], "o-")
        axes[2].set(xscale="log", xlabel="test-time recurrence r", ylabel="validation loss", title="loss vs thinking depth")
    elif "default" in final:
        axes[2].axhline(final["default"], c="gray", ls="--", label="no recurrence")
        axes[2].legend()
        axes[2].set(xlabel="test-time recurrence r", ylabel="validation loss", title="loss vs thinking depth")
    for a in axes:
        a.grid(alpha=0.3)
    return _save(fig, run_dir / PLOT)


def plot_loss_curves(runs: dict[str, dict], path: str | Path, title: str = "", val_label: str = "validation loss") -> Path:
    """Training loss and a validation figure of several runs on shared axes, one line per
    run: `runs[label]` holds "train" and "val" lists of [step, value] pairs (the
    validation value: a loss, or `val_label`'s accuracy). Writes the PNG `path`."""
    fig, axes = _figure(11, 2)
    lines = ("-", "--", ":", "-.")  # runs that agree still show as distinct lines
    for k, (label, run) in enumerate(runs.items()):
        for ax, key, marker in ((axes[0], "train", ""), (axes[1], "val", "o")):
            pairs = run.get(key) or []
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], marker + lines[k % len(lines)], lw=1.2, ms=4 - k, label=label)
    axes[0].set(xlabel="step", ylabel="loss (nats per token)", title=f"{title} training loss".strip())
    axes[1].set(xlabel="step", ylabel=val_label if "loss" not in val_label else "loss (nats per token)", title=f"{title} {val_label}".strip())
    for a in axes:
        a.grid(alpha=0.3)
        a.legend()
    return _save(fig, Path(path))
