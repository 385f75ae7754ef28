"""Pictures of thinking: one example's answer, confidence, halting probability and latent
change after every segment, as a self-contained HTML page (no network, no server) and
as a PNG strip and an animated GIF for papers and READMEs.

    data = trace_data(ponder.load("sudoku"), tokens, labels)   # what `ponder trace` does
    write_html(data, "trace/index.html"); write_strip(data, "trace/strip.png")

Every puzzle task is drawn on its own grid: Sudoku 9x9 digits, Maze-Hard and ARC 30x30
colours, the compositional tasks as rows of their token names.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The ARC palette (tokens 2..11 are colours 0..9), the one the ARC viewers use.
ARC_PALETTE = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]
MAZE_PALETTE = ["#ffffff", "#333333", "#ffffff", "#2ECC40", "#FF4136", "#0074D9"]  # pad, wall, open, start, goal, path


def layout(task: str, seq_len: int, vocab: int) -> dict[str, Any]:
    """How a task's tokens are drawn: grid rows and columns, a label per token and a
    colour per token (None: drawn as text on white)."""
    from ponder.tasks import arc, compositional, maze, sudoku

    if task.startswith("sudoku") and seq_len == sudoku.SIZE:
        return {"rows": 9, "cols": 9, "labels": [""] + [str(d) for d in range(1, 10)], "colors": None, "boxes": 3}
    if task.startswith("maze") and seq_len == maze.SIZE:
        return {"rows": maze.SIDE, "cols": maze.SIDE, "labels": list(maze.ALPHABET), "colors": MAZE_PALETTE, "boxes": 0}
    if task.startswith("arc") and seq_len == arc.SIZE:
        return {"rows": arc.SIDE, "cols": arc.SIDE, "labels": list(arc._CHARS), "colors": ["#ffffff", "#dddddd"] + ARC_PALETTE, "boxes": 0}
    if task in compositional.TASKS:
        cols = 9 if seq_len % 9 == 0 else min(seq_len, 16)
        return {"rows": math.ceil(seq_len / cols), "cols": cols, "labels": list(compositional.TASKS[task].tokens), "colors": None, "boxes": 0}
    cols = min(seq_len, 16)
    return {"rows": math.ceil(seq_len / cols), "cols": cols, "labels": [str(t) for t in range(vocab)], "colors": None, "boxes": 0}


@torch.no_grad()
def trace_data(reasoner, tokens: torch.Tensor, labels: torch.Tensor | None = None, segments: int | None = None, title: str = "") -> dict[str, Any]:
    """Everything the page and the pictures show, as plain JSON: the (L,) input tokens,
    the (L,) labels (IGNORE where unscored) when known, and per segment the answer,
    cells that changed, cells that are wrong, confidence, halting probability and
    latent change. The stop segment is where the model's own stop rule would stop."""
    from ponder.tasks.grids import IGNORE

    tokens = torch.as_tensor(tokens).long().reshape(-1)
    thoughts = reasoner.think(tokens, segments)
    scored = None if labels is None else torch.as_tensor(labels).long().reshape(-1) != IGNORE
    steps, previous = [], tokens
    for t in thoughts:
        wrong = None if labels is None else ((t.answer != labels) & scored).tolist()
        steps.append({
            "segment": t.segment,
            "answer": t.answer.tolist(),
            "changed": (t.answer != previous).tolist(),
            "wrong": wrong,
            "confidence": [round(float(c), 4) for c in t.confidence],
            "halt_prob": round(t.halt_prob, 4),
            "change": round(t.change, 5),
            "correct": None if wrong is None else not any(wrong),
        })
        previous = t.answer
    from ponder.eval.stopping import SegmentRecord

    record = SegmentRecord(  # the thoughts as evaluation records them: (1, S, L) and (1, S)
        torch.stack([t.answer for t in thoughts])[None], torch.tensor([[t.halt_logit for t in thoughts]]),
        torch.tensor([[t.change for t in thoughts]]), torch.stack([t.confidence.min() for t in thoughts])[None])
    stop = int(reasoner.stop_rule.first_stop(record)[0]) + 1  # where the model's own stop rule (`ponder solve`) stops
    return {
        "title": title or f"{reasoner.cfg.model.family} on {reasoner.task}",
        "model": str(reasoner.folder),
        "task": reasoner.task,
        "layout": layout(reasoner.task, reasoner.model.seq_len, reasoner.model.vocab),
        "inputs": tokens.tolist(),
        "labels": None if labels is None else torch.as_tensor(labels).long().reshape(-1).tolist(),
        "halting": reasoner.cfg.model.halting != "none",
        "stop_segment": stop,
        "segments": steps,
    }


# ------------------------------------------------------------------------------ HTML

_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}.sub{color:#666;margin-bottom:16px}
.seg{display:inline-block;vertical-align:top;margin:0 18px 22px 0;padding:10px;background:#fff;border:1px solid #ddd;border-radius:6px}
.seg.stop{border:2px solid #0074D9}.seg h2{font-size:14px;margin:0 0 6px}
.grid{display:inline-grid;gap:0;border:2px solid #222;margin-bottom:6px}
.cell{width:var(--s);height:var(--s);font-size:calc(var(--s)*0.6);line-height:var(--s);text-align:center;box-sizing:border-box;border:1px solid #ccc}
.cell.given{font-weight:700;color:#111}.cell.answer{color:#0050a0}.cell.changed{background:#fff3b0}
.cell.wrong{color:#d00000;text-decoration:underline}.cell.wrong.changed{background:#ffd0d0}
.cell.bx{border-right:2px solid #222}.cell.by{border-bottom:2px solid #222}
.bar{height:8px;background:#eee;border-radius:4px;overflow:hidden;width:100%}.bar i{display:block;height:100%;background:#0074D9}
.meta{font-size:12px;color:#444;margin:2px 0}.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin-right:4px;border:1px solid #999}
svg text{font-size:11px;fill:#444}
"""

_SCRIPT = """
const D = JSON.parse(document.getElementById('trace-data').textContent);
const L = D.layout, n = D.inputs.length, size = L.cols > 12 ? 11 : 26;
function grid(values, cls, color, title) {
  const g = document.createElement('div'); g.className = 'grid';
  g.style.gridTemplateColumns = `repeat(${L.cols}, var(--s))`; g.style.setProperty('--s', size + 'px');
  if (title) g.title = title;
  for (let i = 0; i < n; i++) {
    const c = document.createElement('div'); c.className = 'cell ' + cls(i);
    const r = Math.floor(i / L.cols), k = i % L.cols;
    if (L.boxes && k % L.boxes == L.boxes - 1 && k < L.cols - 1) c.classList.add('bx');
    if (L.boxes && r % L.boxes == L.boxes - 1 && r < L.rows - 1) c.classList.add('by');
    const bg = color(i); if (bg) c.style.background = bg;
    if (!L.colors) c.textContent = values(i);
    c.dataset.i = i; g.appendChild(c);
  }
  return g;
}
function heat(p) { const v = Math.round(255 * (1 - Math.min(1, 2 * (1 - p)))); return `rgb(255,${v},${v})`; }  // white: sure; red: top probability 0.5 or less
function board(s) {
  const given = i => D.inputs[i] != 0 && D.inputs[i] == s.answer[i] && D.task.startsWith('sudoku');
  return grid(i => L.labels[s.answer[i]] ?? s.answer[i],
    i => [given(i) ? 'given' : 'answer', s.changed[i] && s.segment > 1 ? 'changed' : '', s.wrong && s.wrong[i] ? 'wrong' : ''].join(' '),
    i => L.colors ? L.colors[s.answer[i]] : null);
}
function confidence(s) { return grid(i => '', i => 'conf', i => heat(s.confidence[i]), 'doubt: 1 - top probability'); }
function chart() {
  const w = 520, h = 110, m = 24, S = D.segments.length, x = k => m + (w - 2 * m) * (S > 1 ? k / (S - 1) : 0);
  const maxc = Math.max(...D.segments.map(s => s.change), 1e-9), y = v => h - m + (2 * m - h) * v;
  const line = (f, color) => `<polyline fill="none" stroke="${color}" stroke-width="2" points="${D.segments.map((s, k) => x(k) + ',' + y(f(s))).join(' ')}"/>`;
  return `<svg id="chart" width="${w}" height="${h}"><rect x="${m}" y="${m / 2}" width="${w - 2 * m}" height="${h - 1.5 * m}" fill="#fff" stroke="#ccc"/>` +
    line(s => s.halt_prob, '#0074D9') + line(s => s.change / maxc, '#FF851B') +
    `<text x="${m}" y="${h - 6}">segment 1</text><text x="${w - m - 60}" y="${h - 6}">segment ${S}</text></svg>` +
    `<div class="meta">by segment: <b style="color:#0074D9">halting probability</b> (0 to 1) and <b style="color:#FF851B">latent change</b> (scaled to its largest, ${maxc.toFixed(3)})</div>`;
}
document.getElementById('chart-box').innerHTML = chart();
const box = document.getElementById('segments');
for (const s of D.segments) {
  const d = document.createElement('div'); d.className = 'seg' + (s.segment == D.stop_segment ? ' stop' : ''); d.dataset.segment = s.segment;
  const verdict = s.correct === null ? '' : (s.correct ? ' &middot; right' : ` &middot; ${s.wrong.filter(x => x).length} wrong`);
  d.innerHTML = `<h2>segment ${s.segment}${s.segment == D.stop_segment ? ' &middot; the stop rule stops here' : ''}${verdict}</h2>`;
  d.appendChild(board(s));
  const m = document.createElement('div'); m.className = 'meta';
  m.innerHTML = `halting probability ${s.halt_prob.toFixed(3)}<div class="bar"><i style="width:${100 * s.halt_prob}%"></i></div>` +
    `latent change ${s.change.toFixed(4)} &middot; least confidence ${Math.min(...s.confidence).toFixed(3)}`;
  d.appendChild(m); d.appendChild(confidence(s)); box.appendChild(d);
}
document.body.dataset.rendered = D.segments.length;
"""


def write_html(data: dict[str, Any], path: str | Path) -> Path:
    """The trace as one HTML file: the data inline as JSON, drawn by inline script."""
    path = Path(path)
    payload = json.dumps(data).replace("</", "<\\/")  # no "</script>" inside the data
    legend = ("<div class='legend'><span><b>bold</b>: given</span><span style='color:#0050a0'>blue: the model's answer</span>"
              "<span><i class='sw' style='background:#fff3b0'></i>changed this segment</span><span style='color:#d00000'>red: wrong</span>"
              "<span><i class='sw' style='background:rgb(255,80,80)'></i>lower grid: doubt (white: sure; red: top probability 0.5 or less)</span></div>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(data['title'])}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(data['title'])}</h1><div class='sub'>{html.escape(data['model'])} &middot; {len(data['segments'])} segments"
            f" &middot; stops at segment {data['stop_segment']}</div>{legend}<div id='chart-box'></div><div id='segments'></div>"
            f"<script id='trace-data' type='application/json'>{payload}</script><script>{_SCRIPT}</script></body></html>")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------- pictures

def _draw(ax, data: dict[str, Any], step: dict[str, Any]) -> None:
    """One segment's board on a matplotlib axis: colours or digits, changed cells
    shaded, wrong ones in red."""
    L = data["layout"]
    rows, cols, n = L["rows"], L["cols"], len(data["inputs"])
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    answer = step["answer"]
    if L["colors"]:
        from matplotlib.colors import to_rgb

        image = np.ones((rows, cols, 3))
        for i in range(n):
            image[i // cols, i % cols] = to_rgb(L["colors"][answer[i]])
        ax.imshow(image, extent=(0, cols, rows, 0), interpolation="nearest")
        wrong = [i for i in range(n) if step["wrong"] and step["wrong"][i]]
        if wrong:
            ax.scatter([i % cols + 0.5 for i in wrong], [i // cols + 0.5 for i in wrong], marker="x", color="#d00000", s=8)
        return
    for i in range(n):
        r, c = divmod(i, cols)
        if step["changed"][i] and step["segment"] > 1:
            ax.add_patch(_rect(c, r, "#fff3b0"))
        wrong = bool(step["wrong"] and step["wrong"][i])
        given = data["inputs"][i] != 0 and data["task"].startswith("sudoku")
        label = L["labels"][answer[i]] if answer[i] < len(L["labels"]) else str(answer[i])
        ax.text(c + 0.5, r + 0.55, label, ha="center", va="center", fontsize=9 if cols <= 9 else 5,
                color="#d00000" if wrong else ("#111111" if given else "#0050a0"), fontweight="bold" if given else "normal")
    for k in range(cols + 1):
        ax.axvline(k, color="#222" if L["boxes"] and k % L["boxes"] == 0 else "#ccc", lw=1.5 if L["boxes"] and k % L["boxes"] == 0 else 0.5)
    for k in range(rows + 1):
        ax.axhline(k, color="#222" if L["boxes"] and k % L["boxes"] == 0 else "#ccc", lw=1.5 if L["boxes"] and k % L["boxes"] == 0 else 0.5)


def _rect(x: float, y: float, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), 1, 1, color=color, zorder=0)


def _title(data: dict[str, Any], step: dict[str, Any]) -> str:
    verdict = "" if step["correct"] is None else (" ✓" if step["correct"] else f" ({sum(step['wrong'])} wrong)")
    return f"segment {step['segment']}{verdict}\nhalt p {step['halt_prob']:.2f}, change {step['change']:.3f}"


def write_strip(data: dict[str, Any], path: str | Path, most: int = 8) -> Path:
    """A PNG strip of up to `most` segments (the first ones and the stop segment) side
    by side, with each one's halting probability and latent change."""
    from ponder.viz.plots import _figure, _save

    steps = data["segments"]
    chosen = sorted({s["segment"] for s in steps[: most - 1]} | {data["stop_segment"]})
    fig, axes = _figure(2.2 * len(chosen), len(chosen))
    fig.set_figheight(2.9)
    for ax, k in zip(np.atleast_1d(axes), chosen):
        step = steps[k - 1]
        _draw(ax, data, step)
        ax.set_title(_title(data, step), fontsize=8, color="#0074D9" if k == data["stop_segment"] else "#222")
    return _save(fig, Path(path))


def write_gif(data: dict[str, Any], path: str | Path, ms_per_frame: int = 700) -> Path:
    """An animated GIF with one frame per segment."""
    import io

    from PIL import Image

    from ponder.viz.plots import _figure

    frames = []
    for step in data["segments"]:
        fig, ax = _figure(3.0, 1)
        fig.set_figheight(3.4)
        _draw(ax, data, step)
        ax.set_title(_title(data, step), fontsize=9)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        frames.append(Image.open(io.BytesIO(buffer.getvalue())).convert("P", palette=Image.Palette.ADAPTIVE))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    tmp.replace(path)
    return path
