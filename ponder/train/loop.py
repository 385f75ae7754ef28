"""The training loop, written out: batches, deep supervision, evaluation, checkpoints.

For each batch (one "step"):

    state = initial state
    for segment in 1..max_segments:          # deep supervision
        out   = model(tokens, state)         # one segment of recurrence
        loss  = token loss + halt_loss_weight * BCE(halt_logit, whole answer right)
        update the weights (one optimizer step), update the EMA
        state = out.state detached           # no gradient flows between segments
        drop the examples that halt          # halt_logit > 0 (after any exploration minimum)

Examples leave the batch when they halt, so easy puzzles stop spending compute. The
data order, augmentation and exploration draws are functions of (seed, step), which
makes a resumed run repeat the uninterrupted one exactly. The loop is written for one
process; the global batch is `batch_size`, and every file is written by this process.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import ponder
from ponder.config import RunConfig, config_from_dict
from ponder.errors import PonderInputError
from ponder.eval.evaluate import autocast_context, evaluate
from ponder.models import build_model, count_params
from ponder.tasks import load_task, scorer
from ponder.train.checkpoint import CHECKPOINT, read_checkpoint, restore, save_checkpoint
from ponder.train.ema import EMA
from ponder.train.losses import act_q_loss, answer_correct, expected_token_loss, token_loss
from ponder.train.optim import build_optimizer, build_puzzle_optimizer, lr_at

METRICS = "metrics.jsonl"
CONFIG = "config.json"
RESULTS = "results.json"
PLOT = "curves.png"


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file so a reader never sees it half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def pick_device(name: str) -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise PonderInputError(f"config key 'train.device': unknown device {name!r}; expected auto, cpu, cuda or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise PonderInputError(f"config key 'train.device': {name} requested but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise PonderInputError(f"config key 'train.device': {name} requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def environment(device: torch.device) -> dict[str, Any]:
    """Who ran this: versions, git revision of the ponder source, device."""
    src = Path(ponder.__file__).parent
    try:
        git = lambda *args: subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, timeout=5).stdout.strip()  # noqa: E731
        rev = git("rev-parse", "--short", "HEAD")
        if rev and git("status", "--porcelain", "--untracked-files=no", "."):
            rev += "+dirty"  # uncommitted changes to tracked files
    except (OSError, subprocess.SubprocessError):
        rev = ""
    env = {
        "ponder": ponder.__version__,
        "git": rev or "unknown",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> tuple[torch.Tensor, dict[str, int]]:
    """Indices of batch `step`: walk per-epoch permutations (epoch e seeded by
    (seed, e)), wrapping into the next epoch mid-batch if needed."""
    start = step * batch_size
    out, pos = [], start
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = min(batch_size - len(out), n - offset)
        out.extend(perm[offset : offset + take].tolist())
        pos += take
    epoch, offset = divmod(start, n)
    return torch.tensor(out), {"epoch": epoch, "offset": offset}


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 7919 + step) * 16 + stream)


def halting_loss(model, cfg: RunConfig, out, correct: torch.Tensor, tokens: torch.Tensor, puzzle_ids: torch.Tensor | None, is_last: bool) -> torch.Tensor:
    """Per-example loss of the halting head (zeros with halting=none)."""
    if cfg.model.halting == "bce":
        return F.binary_cross_entropy_with_logits(out.halt_logits.float(), correct.float(), reduction="none")
    if cfg.model.halting == "act_q":
        with torch.no_grad():  # the next segment's Q values bootstrap the target, as in HRM
            next_q = model(tokens, tuple(s.detach() for s in out.state), puzzle_ids).q_logits
        return act_q_loss(out.q_logits, correct, next_q, is_last)
    return torch.zeros_like(correct, dtype=torch.float32)


def train_batch(model, optimizers, ema, cfg: RunConfig, tokens, labels, ids, gen: torch.Generator, device) -> dict[str, float]:
    """Deep supervision on one batch; returns the batch's training metrics.
    tokens, labels (B, L); ids (B,) puzzle identifiers or None."""
    tc = cfg.train
    B = tokens.shape[0]
    min_segments = torch.ones(B, dtype=torch.long)
    explore = torch.rand(B, generator=gen) < tc.halt_explore_prob
    if tc.max_segments > 1:  # exploration: a random minimum number of segments before halting
        min_segments[explore] = torch.randint(2, tc.max_segments + 1, (int(explore.sum()),), generator=gen)
    min_segments = min_segments.to(device)
    active = torch.arange(B, device=device)  # rows of the batch still thinking
    state = None
    final_correct = torch.zeros(B, dtype=torch.bool, device=device)
    segments_used = torch.zeros(B, dtype=torch.long, device=device)
    losses, halt_losses, n_updates = 0.0, 0.0, 0
    for seg in range(tc.max_segments):
        with autocast_context(device, tc.autocast):
            puzzle_ids = None if ids is None else ids[active]
            out = model(tokens[active], state, puzzle_ids)
            target = labels[active]
            if out.step_logits is None:
                loss_tok = token_loss(out.logits, target, tc.loss)  # (b,)
            else:  # PonderNet: expected loss over the halting distribution
                loss_tok = expected_token_loss(out.step_logits, out.step_probs, target, tc.loss)
            correct = answer_correct(out.logits.argmax(-1), target)  # (b,)
            halt_loss = halting_loss(model, cfg, out, correct, tokens[active], puzzle_ids, is_last=seg + 1 == tc.max_segments)  # (b,)
            loss = loss_tok.mean() + tc.halt_loss_weight * halt_loss.mean()
            if out.aux_loss is not None:
                loss = loss + out.aux_loss.mean()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        if ema is not None:
            ema.update(model)
        losses += float(loss_tok.detach().mean())
        halt_losses += float(halt_loss.detach().mean())
        n_updates += 1
        final_correct[active] = correct
        segments_used[active] = seg + 1
        halted = torch.full_like(correct, seg + 1 == tc.max_segments)
        if cfg.model.halting != "none":
            halted |= (out.halt_logits.detach() > 0) & (seg + 1 >= min_segments[active])
        keep = ~halted
        active = active[keep]
        state = tuple(s.detach()[keep] for s in out.state)
        if active.numel() == 0:
            break
    return {
        "loss": losses / n_updates,
        "halt_loss": halt_losses / n_updates,
        "accuracy": float(final_correct.float().mean()),
        "segments": float(segments_used.float().mean()),
        "updates": n_updates,
    }


class RunLog:
    """Append-only JSONL metrics log. On resume, lines past the checkpoint (and any
    final test line, which the resumed run writes again) are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            kept = [json.dumps(r) for r in records if r.get("step", 0) <= resume_step and r.get("event") != "test"]
            write_atomic(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise PonderInputError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise PonderInputError(f"{run_dir}: not a run folder (no {CONFIG}); expected a folder written by 'ponder train'")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PonderInputError(f"{path}:{e.lineno}: corrupt config (not valid JSON)") from None
    return config_from_dict(data, str(path))


def train(cfg: RunConfig, out_dir: Path, resume: bool = False, progress: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Train (or resume) a run in `out_dir`; returns the final test evaluation."""
    tc = cfg.train
    out_dir = Path(out_dir)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    ckpt_path = out_dir / CHECKPOINT
    if resume:
        read_checkpoint(ckpt_path)  # fail on a missing or corrupt checkpoint before any work
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise PonderInputError(f"{out_dir}: folder exists and is not empty; use --resume {out_dir} or another --out")

    t0 = time.time()
    data = load_task(cfg.task, progress=progress)
    torch.manual_seed(tc.seed)
    try:
        model = build_model(cfg.model, data.vocab, data.seq_len, data.attention_mask, data.num_puzzles).to(device)
    except ValueError as e:
        raise PonderInputError(f"task '{data.name}': {e}") from None
    ema = EMA(model, tc.ema) if tc.ema > 0 else None
    eval_model = ema.model if ema else model
    optimizer = build_optimizer(model, tc)
    puzzle_optimizer = build_puzzle_optimizer(model, tc)  # sign-SGD on the puzzle table; stateless
    optimizers = [optimizer] + ([puzzle_optimizer] if puzzle_optimizer else [])
    use_ids = cfg.model.puzzle_embedding
    start, prior_seconds = 0, 0.0
    if resume:
        meta = restore(ckpt_path, model, ema, optimizer)
        start, prior_seconds = int(meta["step"]), float(meta.get("train_seconds", 0.0))
    task_shape = {"name": data.name, "vocab": data.vocab, "seq_len": data.seq_len, "num_puzzles": data.num_puzzles}
    out_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(out_dir / METRICS, resume_step=start if resume else None)
    write_atomic(out_dir / CONFIG, cfg.to_json() + "\n")  # on resume: records any extended train.steps
    env = environment(device)
    log.write({"event": "resume" if resume else "start", "step": start, "env": env, "params": count_params(model), "data_seconds": round(time.time() - t0, 2)})
    if not quiet:
        print(f"model {cfg.model.family}: {count_params(model):,} parameters on {device}; task {data.name}: train {len(data.train)}, val {len(data.val)}, test {len(data.test)} examples")

    def checkpoint(step: int) -> None:
        _, position = batch_indices(len(data.train), tc.batch_size, step, tc.seed)
        meta = {"step": step, "data_position": position, "config": cfg.to_dict(), "env": env, "train_seconds": train_seconds(), "task_shape": task_shape}
        save_checkpoint(ckpt_path, model, ema, optimizer, meta)

    def validate(step: int) -> dict[str, Any]:
        result = evaluate(eval_model, data.val.inputs, data.val.labels, tc.eval_segments, autocast=tc.autocast, progress=progress, ids=data.val.ids if use_ids else None)
        record = {"event": "val", "step": step, **result.to_dict()}
        log.write(record)
        return record

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc="train", unit="batch", dynamic_ncols=True)
    model.train()
    last_val = None
    train_start = time.time()

    def train_seconds() -> float:  # training time of this run, summed over resumes
        return prior_seconds + time.time() - train_start

    done = start
    for step in range(start, tc.steps):
        lr = lr_at(step, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if puzzle_optimizer is not None:  # the same warmup and decay, scaled to train.puzzle_lr
            puzzle_optimizer.param_groups[0]["lr"] = lr / tc.lr * tc.puzzle_lr
        idx, _ = batch_indices(len(data.train), tc.batch_size, step, tc.seed)
        inputs, labels = data.train.inputs[idx], data.train.labels[idx]
        ids = data.train.ids[idx].to(device) if use_ids else None
        if cfg.task.augment and data.augment is not None:
            inputs, labels = data.augment(inputs, labels, step_generator(tc.seed, step, 0))
        metrics = train_batch(model, optimizers, ema, cfg, inputs.to(device), labels.to(device), ids, step_generator(tc.seed, step, 1), device)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise RuntimeError(f"step {step + 1}: non-finite training loss {metrics}; lower train.lr or try train.loss=stablemax")
        log.write({"event": "train", "step": step + 1, "lr": lr, **{k: round(v, 6) for k, v in metrics.items()}})
        done = step + 1
        out_of_time = tc.max_minutes > 0 and train_seconds() >= 60 * tc.max_minutes
        if done % tc.eval_every == 0 or done == tc.steps or out_of_time:
            last_val = validate(done)
        if done % tc.checkpoint_every == 0 or done == tc.steps or out_of_time:
            checkpoint(done)
        if bar is not None:
            post = {"loss": f"{metrics['loss']:.3f}", "acc": f"{metrics['accuracy']:.2f}", "seg": f"{metrics['segments']:.1f}"}
            if last_val:
                post["val"] = f"{last_val['exact_accuracy']:.3f}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
        if out_of_time:
            break
    if bar is not None:
        bar.close()
    trained_seconds = train_seconds()

    final = evaluate(
        eval_model, data.test.inputs, data.test.labels, tc.eval_segments, autocast=tc.autocast, progress=progress,
        ids=data.test.ids if use_ids else None, depths=data.test.extra.get("depth"), score=scorer(data.score, data.test, data.info, out_dir),
    )
    result = {"split": "test", "step": done, "train_seconds": round(trained_seconds, 1), "total_seconds": round(time.time() - t0, 1), **final.to_dict()}
    log.write({"event": "test", **result})
    write_atomic(out_dir / RESULTS, json.dumps(result, indent=2) + "\n")
    from ponder.viz.plots import plot_run  # imported here: plots reads this module's log format

    plot_run(out_dir)
    return result
