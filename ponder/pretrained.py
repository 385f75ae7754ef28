"""Trained models as plain folders: export a run, load one from Python, and the models
that ship inside the package.

A model folder holds `config.json` (the run's config), `model.safetensors` (its EMA
weights; no optimizer, nothing pickled), `results.json` (the run's test scores and the
stop rule it chose on validation) and `README.md` (a model card: data, accuracy and the
command that made it). `ponder export RUN --out DIR` writes one. Every verb that takes
a run folder also takes a model folder or the name of a bundled model (`ponder solve`
uses the bundled "sudoku" when given none), and `ponder.load` returns either as a
`Reasoner` for Python use:

    >>> import ponder
    >>> model = ponder.load("sudoku")                       # doctest: +SKIP
    >>> model.solve("8....9..349.8..675...")                  # doctest: +SKIP
    >>> for step in model.think(puzzle): print(step.halt_prob)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ponder.errors import PonderInputError
from ponder.run_folder import CHECKPOINT, CONFIG, RESULTS, read_log, read_results

WEIGHTS = "model.safetensors"
CARD = "README.md"
FORMAT = "ponder-model-1"
BUNDLED_ROOT = Path(__file__).parent / "bundled"


def bundled_names() -> list[str]:
    """The models shipped inside the package (folders under ponder/bundled)."""
    return sorted(p.name for p in BUNDLED_ROOT.iterdir() if (p / WEIGHTS).is_file()) if BUNDLED_ROOT.is_dir() else []


def resolve(run: str | Path) -> Path:
    """A run folder, a model folder or a bundled model's name -> its folder. An
    existing folder wins over a bundled name of the same spelling."""
    path = Path(run)
    if path.is_dir() or str(run) not in bundled_names():
        return path
    return BUNDLED_ROOT / str(run)


def is_model_folder(folder: Path) -> bool:
    """True for a folder written by `export` (weights without a training checkpoint)."""
    return (folder / WEIGHTS).is_file() and not (folder / CHECKPOINT).exists()


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A model folder's tensors and metadata, or a one-line error naming the file."""
    if not path.is_file():
        raise PonderInputError(f"{path}: no such file; expected the weights of a model folder written by 'ponder export'")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise PonderInputError(f"{path}: corrupt model weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if meta.get("format") != FORMAT:
        raise PonderInputError(f"{path}: not a ponder model file (format {meta.get('format')!r}, expected {FORMAT!r})")
    return tensors, meta


def export(run: str | Path, out: str | Path, command: str = "") -> dict[str, Any]:
    """Write the model folder of a finished run to `out` (which must not exist or be
    empty): config, EMA weights, results and a model card naming `command` (default:
    `ponder train --config config.json`, which repeats the run). Written beside `out`
    first and renamed into place, so an interrupted export leaves nothing half-written."""
    from ponder.api import load_trained
    from ponder.models import count_params

    run_dir, out = Path(run), Path(out)
    cfg, model, _ = load_trained(run_dir)
    results = read_results(run_dir)
    if results is None or "exact_accuracy" not in results:
        raise PonderInputError(f"{run_dir}: the run has no test result yet (results.json); finish it (ponder train --resume) before exporting")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PonderInputError(f"--out: {out} exists and is not an empty folder")
    env = next((e.get("env") for e in read_log(run_dir) if e.get("event") == "start"), None) or {}
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    num_puzzles = getattr(model, "num_puzzles", 0)
    save_file(weights, str(staging / WEIGHTS), metadata={"format": FORMAT, "num_puzzles": str(int(num_puzzles or 0))})
    (staging / CONFIG).write_text(cfg.to_json() + "\n")
    kept = {k: v for k, v in results.items() if k not in ("run",)}
    (staging / RESULTS).write_text(json.dumps(kept, indent=2) + "\n")
    (staging / CARD).write_text(model_card(cfg, kept, count_params(model), command, env))
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return {"out": str(out), "files": sorted(p.name for p in out.iterdir()), "bytes": sum(p.stat().st_size for p in out.iterdir())}


def model_card(cfg, results: dict[str, Any], params: int, command: str, env: dict[str, Any]) -> str:
    """A short README for a model folder: what it is, what it was trained and scored on,
    and how to make it again."""
    task = cfg.task
    lines = [
        f"# ponder model: {cfg.model.family} on {task.name}", "",
        cfg.description or f"{cfg.model.family} trained on {task.name}.", "",
        f"- parameters: {params:,}",
        f"- task: {task.name}" + (f", {task.blanks} blanks" if task.name == "sudoku" else "") + f", data seed {task.seed}",
        f"- training: {cfg.train.steps} steps of batch {cfg.train.batch_size}, up to {cfg.train.max_segments} segments each, "
        f"{results.get('train_seconds', 0):.0f} s",
        f"- test split ({results['n']} examples, {results['segments']} segments): exact accuracy {results['exact_accuracy']:.4f}, "
        f"cell accuracy {results['cell_accuracy']:.4f}",
    ]
    calibrated = results.get("calibrated_halting")
    if calibrated:
        lines.append(f"- stop rule chosen on validation ({calibrated['describe']}): exact accuracy {calibrated['accuracy']:.4f} "
                     f"using {calibrated['mean_segments']:.2f} segments on average")
    if env:
        lines.append(f"- trained with ponder {env.get('ponder', '?')} ({env.get('git', '')}), torch {env.get('torch', '?')}, on {env.get('device', '?')}")
    lines += ["", "Made by:", "", "    " + (command or "ponder train --config config.json   # this folder's config.json repeats the run"), "",
              "Use:", "", "    ponder solve PUZZLE --run THIS_FOLDER", "    python -c \"import ponder; print(ponder.load('THIS_FOLDER').solve('...'))\"", ""]
    return "\n".join(lines)


@dataclasses.dataclass
class Thought:
    """One segment of thinking on one example."""

    segment: int  # 1-based
    answer: torch.Tensor  # (L,) int64 the answer after this segment
    confidence: torch.Tensor  # (L,) float the top probability at each position
    halt_logit: float  # the halting head's logit (> 0: it would stop here)
    change: float  # relative change of the latent state over this segment

    @property
    def halt_prob(self) -> float:
        """The halting head's probability of stopping here."""
        return 1.0 / (1.0 + math.exp(-self.halt_logit))


class Reasoner:
    """A trained model ready for use. `solve` answers; `think` returns every segment.

    Sudoku models take and give 81-character strings ('.' or '0' for a blank); any
    model takes (L,) or (N, L) int64 token tensors of its task and gives tensors back."""

    def __init__(self, folder: Path, cfg, model, device: torch.device):
        from ponder.api import stop_rule_of

        self.folder, self.cfg, self.model, self.device = folder, cfg, model, device
        self.task = cfg.task.name
        self.stop_rule = stop_rule_of(folder, cfg.model.halting != "none")

    def __repr__(self) -> str:
        return f"Reasoner({self.cfg.model.family} on {self.task}, from {self.folder})"

    def _tokens(self, inputs) -> tuple[torch.Tensor, str]:
        """(N, L) tokens and the kind the caller gave: 'text', 'texts', 'row' or 'rows'."""
        from ponder.tasks import sudoku

        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
            if self.model.seq_len != sudoku.SIZE or self.model.vocab != sudoku.VOCAB:
                raise PonderInputError(f"{self.folder}: a {self.task} model takes token tensors, not text")
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            grids = [sudoku.parse_puzzle(t, where=f"puzzle {k + 1}") for k, t in enumerate(texts)]
            return torch.from_numpy(np.stack(grids)).long(), "text" if isinstance(inputs, str) else "texts"
        tokens = torch.as_tensor(inputs).long()
        if tokens.ndim not in (1, 2) or tokens.shape[-1] != self.model.seq_len:
            raise PonderInputError(f"inputs: expected ({self.model.seq_len},) or (N, {self.model.seq_len}) tokens, got shape {tuple(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= self.model.vocab:
            raise PonderInputError(f"inputs: tokens must lie in 0..{self.model.vocab - 1}")
        return (tokens[None], "row") if tokens.ndim == 1 else (tokens, "rows")

    def solve(self, inputs, segments: int | None = None):
        """Answers by the model's stop rule (the one chosen on validation, else its
        halting head), thinking at most `segments` segments (default: the run's
        train.eval_segments)."""
        from ponder.eval.evaluate import run_early_exit
        from ponder.tasks import sudoku

        tokens, kind = self._tokens(inputs)
        preds, _ = run_early_exit(self.model, tokens, segments or self.cfg.train.eval_segments, autocast=self.cfg.train.autocast,
                                  ids=self.puzzle_ids(len(tokens)), rule=self.stop_rule)
        if kind in ("text", "texts"):
            texts = [sudoku.format_grid(p) for p in preds]
            return texts[0] if kind == "text" else texts
        return preds[0] if kind == "row" else preds

    @torch.no_grad()
    def think(self, inputs, segments: int | None = None) -> list[Thought]:
        """Every segment's answer, per-position confidence, halting probability and
        latent change for one example (all `segments`, no early stop)."""
        from ponder.models.driver import think

        tokens, kind = self._tokens(inputs)
        if len(tokens) != 1:
            raise PonderInputError(f"think: expected one example, got {len(tokens)}")
        out = []
        for seg in think(self.model, tokens.to(self.device), segments or self.cfg.train.eval_segments, ids=self.puzzle_ids(1),
                         measure_change=True, autocast=self.cfg.train.autocast):
            probs = seg.out.logits.float().softmax(-1)[0]  # (L, V)
            confidence, answer = probs.max(-1)
            halt = float(seg.out.halt_logits.float()[0]) if self.cfg.model.halting != "none" else 0.0
            out.append(Thought(seg.index + 1, answer.cpu(), confidence.cpu(), halt, float(seg.change[0])))
        return out

    def puzzle_ids(self, n: int) -> torch.Tensor | None:
        """(n,) identifier 0 ("none") for a model with a puzzle table, else None."""
        return torch.zeros(n, dtype=torch.long, device=self.device) if self.cfg.model.puzzle_embedding else None


def load(name_or_folder: str | Path) -> Reasoner:
    """A bundled model's name, a model folder or a run folder -> a `Reasoner`."""
    from ponder.api import load_trained

    folder = resolve(name_or_folder)
    cfg, model, device = load_trained(folder)
    return Reasoner(folder, cfg, model, device)
