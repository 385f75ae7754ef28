"""The training loop, written out: deep supervision over a stream of examples, in one
of two batching modes, on one process or many (torchrun).

Deep supervision: every example runs up to `max_segments` segments; after each one the
loss is taken and the optimizer steps, the state is detached and carried into the next
segment, and the model's halting rule may stop the example.

shrink (`train.batching=shrink`, the CPU default): a step is a batch of B examples;
    state = initial
    for segment in 1..max_segments:                  # ponder.models.driver.think
        out = model(tokens, state); loss; update      # one optimizer step per segment
        halted rows leave the batch                   # easy examples stop spending compute
    Later segments cost only the rows still thinking, which is what a CPU wants.

refill (`train.batching=refill`, the CUDA default): a step is ONE segment of a batch
    that keeps its B rows; a halted row takes the next example of the stream and a fresh
    state (ponder.train.carry.Carry). Shapes never change, so torch.compile, CUDA graphs
    and DDP run without recompiles or stragglers, and nothing is read back from the
    device between logging intervals.

Both modes consume the stream `ponder.train.stream.ExampleStream`, in which an example,
its augmentation and its exploration draw are functions of its position: a resumed run
repeats the uninterrupted one, and one process equals several.

Under torchrun (refill batching) each rank holds B / world rows of the global batch,
`DistributedDataParallel` averages the gradients, the sparse puzzle-embedding gradients
are gathered from every rank, evaluation is sharded and gathered, and rank 0 alone
writes the run folder (`ponder.run_folder`).

A run stops cleanly at `train.max_minutes` of this invocation's training time or on
SIGTERM: it checkpoints, logs a "stop" line, skips the final test, and `ponder train
--resume RUN` continues it. `train.budget_minutes` instead ends the run (validation,
checkpoint, test) once its training time over all invocations reaches the budget.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ponder.config import RunConfig
from ponder.errors import PonderInputError
from ponder.eval.evaluate import ablation_ids, ablation_scores, run_segments, score_segments
from ponder.eval.stopping import SegmentRecord, calibrate
from ponder.models import build_model, count_params
from ponder.models.driver import autocast_context, think
from ponder.models.flops import peak_flops, segment_flops
from ponder.run_folder import (
    CHECKPOINT, CONFIG, METRICS, RESULTS, FolderLock, RunLog, environment, holds_work, read_log, remove_temporaries, write_atomic,
)
from ponder.tasks import Split, load_task, scorer
from ponder.tasks.keyed import example_keys, mix, normal
from ponder.train.carry import Carry
from ponder.train.checkpoint import checkpoint_files, read_checkpoint, restore, save_checkpoint
from ponder.train.distributed import Dist
from ponder.train.ema import EMA
from ponder.train.losses import answer_correct, segment_token_loss, token_loss, winners
from ponder.train.optim import build_optimizer, build_puzzle_optimizer, lr_at
from ponder.train.stream import ExampleStream
from ponder.train.tensorboard import TensorBoardLog
from ponder.train.tensorboard import require as require_tensorboard

UNIT_NAMES = {"example_segments": "example_segment", "tokens": "token"}
WTA_SALT = 0x77A0  # the winner-take-all starts' noise draws
CARRY_LIMIT = 16 * 2**20  # the refill carry's latent state is saved in checkpoints up to this size (bytes)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


LINE_SECONDS = 30.0  # a progress line this often when the output is not a terminal


def train(cfg: RunConfig, out_dir: Path, resume: bool = False, progress: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Train (or resume) a run in `out_dir`. Returns the final test evaluation, or, when
    the run stopped early for time or a signal, `{"stopped": reason, "step": ...}`."""
    if not resume and holds_work(Path(out_dir)):  # before the lock touches the folder
        raise PonderInputError(f"{out_dir}: folder exists and is not empty; use --resume {out_dir} or another --out")
    with process_settings(cfg.train.threads), writer_lock(Path(out_dir)):
        trainer_class = Trainer
        from ponder.lm.models import LM_FAMILIES

        if cfg.model.family in LM_FAMILIES:  # a causal language model on a text task
            from ponder.lm.train import LMTrainer as trainer_class
        trainer = trainer_class(cfg, Path(out_dir), resume=resume, progress=progress, quiet=quiet)
        try:
            return trainer.run()
        finally:
            trainer.close()


# What a resumed run may change: how long and where it runs, not what it computes.
RESUMABLE_KEYS = (
    "train.steps", "train.max_minutes", "train.budget_minutes", "train.eval_every", "train.checkpoint_every", "train.checkpoint_minutes",
    "train.log_every", "train.threads", "train.device", "train.compile", "train.peak_tflops", "train.tensorboard",
)


def check_config_matches(cfg: RunConfig, meta: dict[str, Any], path: Path) -> None:
    """A run folder's config.json (with a resume's overrides) and the config stored in
    its checkpoint may differ only in `RESUMABLE_KEYS`, so that a resumed run computes
    what the checkpointed one did and an evaluation runs the model as it was trained;
    otherwise a one-line error names the first key that differs."""
    saved = meta.get("config")
    if not isinstance(saved, dict):
        raise PonderInputError(f"{path}: corrupt checkpoint (no config in its metadata)")
    now = cfg.to_dict()
    for section, values in now.items():
        if not isinstance(values, dict) or not isinstance(saved.get(section), dict):
            continue
        for key, value in values.items():
            name = f"{section}.{key}"
            if name in RESUMABLE_KEYS or key not in saved[section]:
                continue
            if json.dumps(value) != json.dumps(saved[section][key]):
                raise PonderInputError(
                    f"{path.parent / CONFIG}: '{name}' is {json.dumps(value)} but the checkpoint was trained with "
                    f"{json.dumps(saved[section][key])}; a run keeps its config (only {', '.join(RESUMABLE_KEYS)} may change)"
                )


@contextlib.contextmanager
def writer_lock(out_dir: Path):
    """The run folder's `FolderLock`, held by rank 0 (the one writer) for the whole run;
    leftover temporary files of killed writers are cleared once it is held."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with FolderLock(out_dir):
        remove_temporaries(out_dir)
        yield


@contextlib.contextmanager
def process_settings(threads: int):
    """CPU threads and TF32 matmuls for the length of one run, put back afterwards (a
    library call must not change the process for its caller)."""
    old_threads = torch.get_num_threads()
    old_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # float32 matmuls outside autocast
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old_tf32


def resolve_batching(mode: str, device: torch.device) -> str:
    return ("refill" if device.type == "cuda" else "shrink") if mode == "auto" else mode


class Meter:
    """Training metrics summed on the device and read once per logging interval: the
    only host synchronisation of the training loop."""

    NAMES = ("loss", "halt_loss", "finished", "correct", "segments")

    def __init__(self, device: torch.device, unit: str = "example_segments"):
        """`unit`: what one update processes, counted for the speed figures
        (example_segments for the puzzle trainer, tokens for language models)."""
        self.device = device
        self.unit = unit
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.NAMES), dtype=torch.float64, device=self.device)
        self.updates = 0
        self.units = 0  # this rank's units summed over updates (known on the host)
        self.started = time.perf_counter()

    def add_update(self, loss_tok: torch.Tensor, halt_loss: torch.Tensor, units: int) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self.sums += torch.stack([loss_tok.double().mean(), halt_loss.double().mean(), zero, zero, zero])
        self.updates += 1
        self.units += units

    def add_finished(self, done: torch.Tensor, correct: torch.Tensor, segments: torch.Tensor, positions: torch.Tensor) -> None:
        """done, correct (b,) bool; segments (b,) the segments each finished example ran;
        positions (b,) their stream positions (unused here; a recording meter keeps them)."""
        d = done.double()
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self.sums += torch.stack([zero, zero, d.sum(), (d * correct.double()).sum(), (d * segments.double()).sum()])

    def read(self, dist: Dist) -> dict[str, Any]:
        """The interval's metrics, averaged over ranks; resets the meter."""
        loss, halt, finished, correct, segments = dist.all_sum(self.sums).tolist()
        seconds = time.perf_counter() - self.started
        updates = max(1, self.updates) * dist.world
        out = {
            "loss": loss / updates,
            "halt_loss": halt / updates,
            "accuracy": correct / finished if finished else None,  # of the examples that finished in the interval
            "segments": segments / finished if finished else None,
            "updates": self.updates,
            "examples": int(finished),
            "seconds": seconds,
            "units": self.units * dist.world,
        }
        self.reset()
        return out


class ProgressLines:
    """The progress bar's content as plain lines, for a log file or a pipe: one line
    every `seconds` and one at the end, with the bar's figures and an ETA. It takes the
    calls the loop makes on a tqdm bar (`update`, `set_postfix`, `total`, `close`)."""

    def __init__(self, total: int, initial: int, unit: str, seconds: float = 30.0, stream=None):
        self.total, self.n, self.first, self.unit, self.seconds = total, initial, initial, unit, seconds
        self.stream = stream or sys.stderr
        self.start = self.last = time.time()
        self.postfix: dict[str, str] = {}

    def set_postfix(self, postfix: dict[str, str], refresh: bool = False) -> None:
        self.postfix = postfix

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.time()
        if now - self.last >= self.seconds or self.n >= self.total:
            self.last = now
            self.write(now)

    def write(self, now: float) -> None:
        elapsed, done = now - self.start, self.n - self.first
        eta = (self.total - self.n) * elapsed / done if done > 0 else None
        figures = "  ".join(f"{k} {v}" for k, v in self.postfix.items())
        clock = f"  elapsed {_minutes(elapsed)}" + ("" if eta is None else f"  ETA {_minutes(eta)}")
        print(f"{self.unit} {self.n}/{self.total}  {figures}{clock}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


def _minutes(seconds: float) -> str:
    """'42s', '12m05s', '3h04m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class TrainerBase:
    """What every training run shares, whatever it trains: the launch (devices, ranks,
    checks), the optimizer and its wrappers (DDP, compile), one update, the run loop with
    its logging, validation and checkpoint cadence, and the ways a run stops (steps,
    `train.max_minutes`, `train.budget_minutes`, SIGTERM). A subclass supplies the data,
    the model, one training step, validation and the final test:

        setup_data, setup_model, setup_batching(checkpoint tensors), train_step(step),
        validate(step), finish(step), data_position(step), task_shape(), extra_state()
    """

    unit = "example_segments"  # what the speed figures count
    step_unit = "step"  # the progress bar's unit

    def __init__(self, cfg: RunConfig, out_dir: Path, resume: bool = False, progress: bool = True, quiet: bool = False):
        tc = cfg.train
        self.cfg, self.tc, self.out_dir, self.resuming = cfg, tc, out_dir, resume
        self.ckpt_path = out_dir / CHECKPOINT
        # Checks that need no other rank and write nothing come first, so every rank of a
        # launch fails the same way.
        loaded = None
        self.restarted = False  # resumed a run that was stopped before its first checkpoint: from step 0
        if resume and not checkpoint_files(self.ckpt_path):
            saved = [r["step"] for r in read_log(out_dir) if r.get("event") == "checkpoint"]
            if saved:
                raise PonderInputError(f"{self.ckpt_path}: missing, yet the run's log records a checkpoint at step {saved[-1]}; "
                                       f"restore it, or start a new run with another --out")
            self.restarted = True
            if not quiet:
                print(f"{out_dir}: no checkpoint yet (the run stopped before its first); starting again from step 0 with its config")
        elif resume:
            loaded = read_checkpoint(self.ckpt_path)  # fail on a missing or corrupt checkpoint before any work
            check_config_matches(cfg, loaded[1], self.ckpt_path)
        elif holds_work(out_dir):
            raise PonderInputError(f"{out_dir}: folder exists and is not empty; use --resume {out_dir} or another --out")
        self.resuming = loaded is not None
        self.resumed_meta = None if loaded is None else loaded[1]  # the checkpoint's metadata, for the subclass's setup
        self.dist = Dist.from_environment(tc.device)
        self.device = self.dist.device
        self.main = self.dist.main
        self.quiet = quiet or not self.main
        self.tensorboard = None  # a TensorBoardLog on the main rank with train.tensorboard
        if tc.tensorboard and self.main:
            require_tensorboard()  # a missing package fails now, before any work
        # On a terminal: progress bars. Into a file or a pipe: plain lines every
        # LINE_SECONDS (a bar's carriage-return redraws would fill a log with junk).
        self.progress = progress and not self.quiet and sys.stderr.isatty()
        self.progress_lines = progress and not self.quiet and not self.progress
        self.batching = self.batching_mode()
        if loaded is not None and loaded[1].get("batching", self.batching) != self.batching:
            # train.batching=auto resumed on another kind of device: a step must keep its meaning
            self.batching = loaded[1]["batching"]
        self.check_launch()
        self.t0 = time.time()
        if self.progress_lines:  # a log file would otherwise say nothing while the data are built
            print(f"preparing the data of task {cfg.task.name} ...", flush=True)
        self.setup_data()
        self.setup_model()
        self.setup_optimizer()
        self.start, self.prior_seconds = 0, 0.0
        if loaded is not None:
            meta = restore(self.ckpt_path, self.model, self.ema, self.optimizer, loaded=loaded)
            self.start, self.prior_seconds = int(meta["step"]), float(meta.get("train_seconds", 0.0))
        self.setup_batching(None if loaded is None else loaded[0])
        self.meter = Meter(self.device, self.unit)
        self.stop_reason: str | None = None

    # hooks: the subclass's part
    def batching_mode(self) -> str:
        return resolve_batching(self.tc.batching, self.device)

    def setup_data(self) -> None:
        raise NotImplementedError

    def setup_model(self) -> None:
        raise NotImplementedError

    def setup_batching(self, tensors: dict[str, torch.Tensor] | None) -> None:
        """Restore whatever the trainer keeps between steps from a checkpoint's tensors."""

    def train_step(self, step: int) -> None:
        raise NotImplementedError

    def validate(self, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def finish(self, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def data_position(self, step: int) -> dict[str, int]:
        return {}

    def task_shape(self) -> dict[str, Any]:
        return {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint holds besides model, EMA, optimizer and RNG (a collective:
        every rank calls it)."""
        return {}

    # ------------------------------------------------------------------ setup

    def check_launch(self) -> None:
        """Refuse what this launch cannot honour, with one line naming the setting."""
        tc, world = self.tc, self.dist.world
        if world > 1 and tc.batch_size % world:
            raise PonderInputError(f"config key 'train.batch_size': {tc.batch_size} does not split over {world} ranks; use a multiple of {world}")

    def device_peak(self) -> float | None:
        """The devices' dense peak FLOP/s for the MFU figure: `train.peak_tflops`, or the
        datasheet rate of a known GPU in the training precision; None if unknown."""
        tc = self.tc
        peak = tc.peak_tflops * 1e12 if tc.peak_tflops else peak_flops(self.device, torch.bfloat16 if self.bf16 else DTYPES[tc.dtype])
        return None if peak is None else peak * self.dist.world

    @property
    def bf16(self) -> bool:
        return self.tc.autocast == "bfloat16" or (self.tc.autocast == "auto" and self.device.type == "cuda")

    def setup_optimizer(self) -> None:
        self.optimizer = build_optimizer(self.model, self.tc)
        self.puzzle_optimizer = build_puzzle_optimizer(self.model, self.tc)  # sign-SGD on the puzzle table; stateless
        self.optimizers = [self.optimizer] + ([self.puzzle_optimizer] if self.puzzle_optimizer else [])
        self.forward = self.model  # what computes a segment with gradient: DDP- and compile-wrapped below
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            table = [n for n, _ in self.model.named_parameters() if n.startswith("embed.puzzles.")]
            if table:  # sparse rows: gathered by hand in `update`, not all-reduced densely
                DDP._set_params_and_buffers_to_ignore_for_model(self.model, table)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # Some settings leave parameters out of a step's graph (a truncated gradient
            # window that misses the input embedding, say): let DDP find them each step.
            self.forward = DDP(self.model, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=True)
        self.bootstrap = self.model  # the no-gradient forward of act_q's target
        if self.tc.compile:
            self.forward = torch.compile(self.forward)
            self.bootstrap = torch.compile(self.model)

    # ------------------------------------------------------------------ one update

    def update(self, loss: torch.Tensor) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.puzzle_optimizer is not None and self.dist.world > 1:
            self.gather_puzzle_grads()
        for optimizer in self.optimizers:
            optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def gather_puzzle_grads(self) -> None:
        """The puzzle table's sparse gradient from every rank (each rank looked up its own
        rows; sign-SGD needs their sum, whose scale does not matter)."""
        table = self.model.embed.puzzles.weight
        grad = table.grad
        idx, val = grad._indices(), grad._values()  # (1, n), (n, D): one entry per lookup, the same n on every rank
        table.grad = torch.sparse_coo_tensor(self.dist.all_gather(idx.t()).t(), self.dist.all_gather(val), table.shape)

    def set_lr(self, step: int) -> float:
        tc = self.tc
        lr = lr_at(step, tc)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.puzzle_optimizer is not None:  # the same warmup and decay, scaled to train.puzzle_lr
            self.puzzle_optimizer.param_groups[0]["lr"] = lr / tc.lr * tc.puzzle_lr
        return lr

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        tc, cfg = self.tc, self.cfg
        self.dist.barrier()  # every rank has read the run folder before rank 0 writes it
        env = environment(self.device)
        self.env = env
        log = None
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.tensorboard = TensorBoardLog(self.out_dir) if tc.tensorboard else None
            log = RunLog(self.out_dir / METRICS, resume_step=self.start if self.resuming else (-1 if self.restarted else None), mirror=self.tensorboard)
            write_atomic(self.out_dir / CONFIG, cfg.to_json() + "\n")  # on resume: records any extended train.steps
            log.write({
                "event": "resume" if self.resuming else "start", "step": self.start, "env": env, "params": count_params(self.model),
                "data_seconds": round(time.time() - self.t0, 2), "batching": self.batching, "world": self.dist.world,
                f"flops_per_{UNIT_NAMES[self.unit]}": self.flops_per_unit,
            })
        self.log = log
        if not self.quiet:
            print(f"model {cfg.model.family}: {count_params(self.model):,} parameters on {self.device}"
                  f"{f' x {self.dist.world} ranks' if self.dist.world > 1 else ''}, {self.batching} batching; {self.describe_data()}")
            print(f"run folder: {self.out_dir}")
            if self.device.type == "cpu" and cfg.description.endswith("a GPU run"):
                print("warning: this config is sized for a GPU (its description ends 'a GPU run') and runs on the CPU, "
                      "where it takes hours or days; `ponder presets` lists the CPU presets", file=sys.stderr)
        self.invocation_start = time.time()
        self.last_checkpoint = time.time()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=tc.steps, initial=self.start, desc="train", unit=self.step_unit, dynamic_ncols=True)
        elif self.progress_lines:
            bar = ProgressLines(total=tc.steps, initial=self.start, unit=self.step_unit, seconds=LINE_SECONDS)
        self.model.train()
        done = self.start
        last_val = None
        with self.stop_signals(), contextlib.closing(bar) if bar is not None else contextlib.nullcontext():
            # (closing the bar on an error too, so the error's line starts a line of its own)
            for step in range(self.start, tc.steps):
                lr = self.set_lr(step)
                self.train_step(step)
                done = step + 1
                stop = self.stop_requested(done)
                last = done == tc.steps or (not stop and self.budget_spent(done))  # the run ends here: validate and test
                if done % tc.log_every == 0 or last or stop:
                    record = self.write_train(done, lr)
                    if bar is not None:
                        bar.set_postfix(self.postfix(record, last_val), refresh=False)
                        bar.total = self.expected_last_step(done)
                if done % tc.eval_every == 0 or last:
                    last_val = self.validate(done)
                if done % tc.checkpoint_every == 0 or last or stop or self.checkpoint_due(done):
                    self.save(done)
                if bar is not None:
                    bar.update(1)
                if stop or last:
                    break
        if self.stop_reason is not None and done < tc.steps:
            result = self.stopped(done)
        else:
            result = self.finish(done)
            if self.start:  # for the summary only (the log and results.json describe the run, not this invocation)
                result = {**result, "resumed_at": self.start}
        # every rank is past its last collective before any destroys the process group:
        # a rank that tore down first sometimes aborted its gloo threads at exit on a busy CPU
        self.dist.barrier()
        return result

    def write_train(self, step: int, lr: float) -> dict[str, Any]:
        m = self.meter.read(self.dist)
        if not math.isfinite(m["loss"]) or not math.isfinite(m["halt_loss"]):
            raise PonderInputError(f"training diverged at step {step}: non-finite training loss {m['loss']}; lower train.lr or try "
                                   f"train.loss=stablemax (the last checkpoint is kept)")
        rate = m["units"] / max(m["seconds"], 1e-9)
        speed = {f"{self.unit}_per_s": round(rate, 2)}
        if self.unit == "example_segments":
            speed["examples_per_s"] = round(m["examples"] / max(m["seconds"], 1e-9), 2)
        if self.peak:
            speed["mfu"] = round(self.flops_per_unit * rate / self.peak, 4)
        record = {"event": "train", "step": step, "lr": lr, "loss": round(m["loss"], 6)}
        if self.unit == "example_segments":  # deep supervision: the halting loss and the examples that finished
            for key in ("halt_loss", "accuracy", "segments"):
                record[key] = None if m[key] is None else round(m[key], 6)
            record["examples"] = m["examples"]
        record.update(updates=m["updates"], speed=speed)
        if self.log is not None:
            self.log.write(record)
        return record

    def postfix(self, record: dict[str, Any], last_val: dict[str, Any] | None) -> dict[str, str]:
        post = {"loss": f"{record['loss']:.3f}"}
        if record.get("accuracy") is not None:
            post["acc"] = f"{record['accuracy']:.2f}"
            post["seg"] = f"{record['segments']:.1f}"
        speed = record["speed"]
        post["ex/s" if "examples_per_s" in speed else "tok/s"] = f"{speed.get('examples_per_s', speed.get(f'{self.unit}_per_s', 0)):.0f}"
        if "mfu" in speed:
            post["mfu"] = f"{speed['mfu']:.1%}"
        if last_val:
            post["val"] = self.val_summary(last_val)
        return post

    def val_summary(self, record: dict[str, Any]) -> str:
        """The validation figure the progress bar shows."""
        return f"{record['exact_accuracy']:.3f}"

    def describe_data(self) -> str:
        data = self.data
        return f"task {data.name}, examples: train {len(data.train)}, val {len(data.val)}, test {len(data.test)}"

    def train_seconds(self) -> float:
        """Training time of this run, summed over resumes."""
        return self.prior_seconds + time.time() - self.invocation_start

    def save(self, step: int) -> None:
        """Checkpoint (rank 0 writes; every rank takes part in gathering `extra_state`)."""
        tc = self.tc
        names, params = zip(*self.model.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for p in params])  # one read from the device, not one per tensor
        if not bool(finite.all()):  # never checkpoint a diverged model: the last good checkpoint stays
            bad = names[int((~finite).nonzero()[0])]
            raise PonderInputError(f"training diverged at step {step}: non-finite weights in '{bad}'; lower train.lr "
                                   f"(the last checkpoint, if any, is kept)")
        extra = self.extra_state()
        if self.main:
            meta = {
                "step": step, "data_position": self.data_position(step), "config": self.cfg.to_dict(), "env": self.env,
                "train_seconds": self.train_seconds(), "task_shape": self.task_shape(), "batching": self.batching,
                "world": self.dist.world,
            }
            moments = torch.bfloat16 if tc.checkpoint_moments == "bfloat16" else None
            save_checkpoint(self.ckpt_path, self.model, self.ema, self.optimizer, meta, shard_bytes=tc.checkpoint_shard_mib * 2**20,
                            moments_dtype=moments, extra=extra)
            if self.log is not None:
                self.log.write({"event": "checkpoint", "step": step})
        self.dist.barrier()
        self.last_checkpoint = time.time()

    # ------------------------------------------------------------------ stopping

    @contextlib.contextmanager
    def stop_signals(self):
        """SIGTERM (what a scheduler sends before it takes the machine back) and a first
        Ctrl-C (SIGINT) ask the loop to checkpoint and stop after the current step, so
        nothing trained is lost, even before the first periodic checkpoint; a second
        Ctrl-C quits at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if signum == signal.SIGINT and self.stop_reason == "signal":
                raise KeyboardInterrupt
            self.stop_reason = "signal"
            if signum == signal.SIGINT and not self.quiet:
                print("\nCtrl-C: checkpointing and stopping after this step (Ctrl-C again quits at once)", file=sys.stderr, flush=True)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def stop_requested(self, step: int) -> bool:
        """A signal arrived, or this invocation used its `train.max_minutes`. Several
        ranks agree at logging steps (one small all-reduce), so they stop together."""
        tc = self.tc
        local = self.stop_reason is not None
        if tc.max_minutes > 0 and time.time() - self.invocation_start >= 60 * tc.max_minutes:
            local = True
            self.stop_reason = self.stop_reason or "time"
        if self.dist.world == 1:
            return local
        if step % tc.log_every:
            return False
        agreed = self.dist.any(local)
        if agreed and self.stop_reason is None:
            self.stop_reason = "signal"
        return agreed

    def seconds_left(self) -> float | None:
        """Training time left before `train.max_minutes` (this invocation) or
        `train.budget_minutes` (the whole run) ends it; None without either."""
        tc, left = self.tc, []
        if tc.max_minutes > 0:
            left.append(60 * tc.max_minutes - (time.time() - self.invocation_start))
        if tc.budget_minutes > 0:
            left.append(60 * tc.budget_minutes - self.train_seconds())
        return max(min(left), 0.0) if left else None

    def expected_last_step(self, done: int) -> int:
        """The step the run will stop at: `train.steps`, or sooner when a time limit
        comes first at this invocation's pace (what the progress bar's estimate uses)."""
        left, ran = self.seconds_left(), done - self.start
        elapsed = time.time() - self.invocation_start
        if left is None or ran <= 0 or elapsed <= 0:
            return self.tc.steps
        return min(self.tc.steps, done + math.ceil(left * ran / elapsed))

    def budget_spent(self, step: int) -> bool:
        """The run's training time over all its invocations reached `train.budget_minutes`
        (agreed over ranks at logging steps)."""
        tc = self.tc
        if tc.budget_minutes <= 0:
            return False
        spent = self.train_seconds() >= 60 * tc.budget_minutes
        if self.dist.world == 1:
            return spent
        return step % tc.log_every == 0 and self.dist.any(spent)

    def checkpoint_due(self, step: int) -> bool:
        tc = self.tc
        if tc.checkpoint_minutes <= 0:
            return False
        due = time.time() - self.last_checkpoint >= 60 * tc.checkpoint_minutes
        if self.dist.world == 1:
            return due
        return step % tc.log_every == 0 and self.dist.any(due)

    def stopped(self, step: int) -> dict[str, Any]:
        result = {"stopped": self.stop_reason, "step": step, "steps": self.tc.steps, "run": str(self.out_dir),
                  "train_seconds": round(self.train_seconds(), 1), "total_seconds": round(time.time() - self.t0, 1)}
        if self.log is not None:
            self.log.write({"event": "stop", **result})
        return result

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.dist.close()




class Trainer(TrainerBase):
    """The puzzle trainer: deep supervision on fixed-length examples in shrinking or
    refill batches (the module docstring), evaluated by exact match after every segment."""

    @property
    def step_unit(self) -> str:
        return "step" if self.batching == "refill" else "batch"

    def check_launch(self) -> None:
        super().check_launch()
        if self.dist.world > 1 and self.batching != "refill":
            raise PonderInputError(
                f"torchrun with train.batching={self.tc.batching} ({self.batching}): shrinking batches put ranks out of step; use train.batching=refill"
            )
        tc = self.tc
        if tc.wta_starts < 1 or not tc.wta_noise >= 0:
            raise PonderInputError(f"config keys 'train.wta_starts' >= 1 and 'train.wta_noise' >= 0 expected, got {tc.wta_starts} and {tc.wta_noise}")
        if tc.wta_starts > 1 and self.batching != "shrink":
            raise PonderInputError(f"config key 'train.wta_starts': winner-take-all starts train in shrinking batches; set train.batching=shrink (this run uses {self.batching})")

    def setup_data(self) -> None:
        self.data = load_task(self.cfg.task, progress=self.progress)
        if self.tc.loss_target == "nearest" and self.data.nearest_answer is None:
            raise PonderInputError(f"config key 'train.loss_target': task '{self.data.name}' has one right answer per example; 'nearest' needs a task with several (maze-hard)")
        augment = self.data.augment if self.cfg.task.augment else None
        tc = self.tc
        if tc.curriculum_examples < 0 or not 0 < tc.curriculum_start <= 1:
            raise PonderInputError(f"config keys 'train.curriculum_examples' >= 0 and 'train.curriculum_start' in (0, 1] expected, got {tc.curriculum_examples} and {tc.curriculum_start}")
        if tc.curriculum_examples and self.data.train.difficulty() is None:
            raise PonderInputError(f"config key 'train.curriculum_examples': task '{self.data.name}' has no difficulty to order a curriculum by "
                                   "(generated Sudoku has one with task.max_blanks, compositional tasks order by depth)")
        self.stream = ExampleStream(self.data.train, tc.seed, self.device, augment, tc.curriculum_examples, tc.curriculum_start)
        self.use_ids = self.cfg.model.puzzle_embedding
        self.val_record: tuple[int, SegmentRecord] | None = None  # (step, record) of the last validation

    def setup_model(self) -> None:
        cfg, tc, data = self.cfg, self.tc, self.data
        torch.manual_seed(tc.seed)
        try:
            model = build_model(cfg.model, data.vocab, data.seq_len, data.attention_mask, data.num_puzzles)
        except ValueError as e:
            raise PonderInputError(f"task '{data.name}': {e}") from None
        self.model = model.to(device=self.device, dtype=DTYPES[tc.dtype])  # the weights: float32 masters under autocast
        self.ema = EMA(self.model, tc.ema, ramp=tc.ema_ramp) if tc.ema > 0 else None
        self.eval_model = self.ema.model if self.ema else self.model
        self.flops_per_unit = segment_flops(cfg.model, data.vocab, data.seq_len, training=True).train
        self.peak = self.device_peak()

    def setup_batching(self, tensors: dict[str, torch.Tensor] | None) -> None:
        tc = self.tc
        self.local_rows = tc.batch_size // self.dist.world
        self.carry = None
        if self.batching == "refill":
            self.carry = Carry(self.model, self.stream, tc.batch_size, self.dist, tc.max_segments, tc.halt_explore_prob, self.data.seq_len)
            if tensors is not None and "carry.next_position" in tensors:
                self.carry.restore(tensors)

    def extra_state(self) -> dict[str, torch.Tensor]:
        if self.carry is None:
            return {}
        return self.carry.snapshot(with_state=self.carry.bytes() <= CARRY_LIMIT)

    def train_step(self, step: int) -> None:
        if self.batching == "refill":
            self.train_segment(step)
        else:
            self.train_batch(step)

    def segment_loss(self, out, tokens, labels, ids, is_last, starts_of: torch.Tensor | None = None):
        """The loss of one segment: token loss (+ the halting rule's loss, + the family's
        extra loss). With `starts_of` (b,), the example each row is a start of, only each
        example's lowest-loss start contributes token loss (winner-take-all); every start
        trains the halting head. Returns (loss, token loss (b,), halting loss (b,), correct (b,))."""
        tc = self.tc
        if tc.loss_target == "nearest":  # the right answer nearest the prediction (e.g. any shortest path)
            labels = self.data.nearest_answer(tokens, labels, out.logits.detach())
        loss_tok = segment_token_loss(out, labels, tc.loss)  # (b,)
        trained = slice(None) if starts_of is None else winners(loss_tok.detach(), starts_of)  # rows whose token loss trains
        trained_tok = loss_tok[trained]  # (examples,)
        correct = answer_correct(out.logits.argmax(-1), labels)  # (b,)
        rule = self.model.halt_head

        def next_q():  # the next segment's Q values, as in HRM (asked for only by rules that bootstrap)
            with torch.no_grad(), autocast_context(self.device, tc.autocast):
                return self.bootstrap(tokens, tuple(s.detach() for s in out.state), ids).q_logits

        halt_loss = rule.loss(out.halt_logits, out.q_logits, correct, next_q if rule.bootstraps else None, is_last)  # (b,)
        loss = trained_tok.mean() + tc.halt_loss_weight * halt_loss.mean()
        if out.aux_loss is not None:
            loss = loss + out.aux_loss.mean()
        if out.proposal_logits is not None:  # attractor: the proposal read by the answer head
            loss = loss + out.proposal_weight * token_loss(out.proposal_logits, labels, tc.loss)[trained].mean()
        return loss, loss_tok.detach(), halt_loss.detach(), correct

    # ------------------------------------------------------------------ the two batching modes

    def train_batch(self, step: int) -> None:
        """Shrinking batch: B examples, up to max_segments segments, one update each."""
        tc = self.tc
        first = step * tc.batch_size + self.dist.rank * self.local_rows
        positions = torch.arange(first, first + self.local_rows, device=self.device)
        tokens, labels, ids = self.stream.fetch(positions, first, first + self.local_rows)
        min_segments = self.stream.min_segments(positions, tc.halt_explore_prob, tc.max_segments)
        starts_of = None  # (B K,) the example each row is a start of, with winner-take-all
        if tc.wta_starts > 1:
            K = tc.wta_starts
            starts_of = torch.arange(positions.shape[0], device=self.device).repeat_interleave(K)
            tokens, labels, min_segments = (t.repeat_interleave(K, dim=0) for t in (tokens, labels, min_segments))
            ids = None if ids is None else ids.repeat_interleave(K)
            positions = positions.repeat_interleave(K)
            state = start_noise(self.model.init_state(*tokens.shape), example_keys(tc.seed, positions), K, tc.wta_noise)
        else:
            state = self.model.init_state(*tokens.shape)
        for seg in think(self.forward, tokens, tc.max_segments, ids=ids if self.use_ids else None, state=state, autocast=tc.autocast):
            rows = seg.rows
            is_last = seg.index + 1 == tc.max_segments
            row_ids = ids[rows] if self.use_ids else None
            loss, loss_tok, halt_loss, correct = self.segment_loss(
                seg.out, tokens[rows], labels[rows], row_ids, is_last, None if starts_of is None else starts_of[rows])
            self.update(loss)
            self.meter.add_update(loss_tok, halt_loss, rows.numel())
            ran = torch.full_like(rows, seg.index + 1)  # segments each row has run
            done = self.halts(seg.out, positions[rows], ran) & (ran >= min_segments[rows])
            if is_last:
                done = torch.ones_like(done)
            self.meter.add_finished(done, correct, ran, positions[rows])
            seg.leave(done)

    def train_segment(self, step: int) -> None:
        """Refill batch: one segment of the fixed-shape carry, one update."""
        carry, tc = self.carry, self.tc
        carry.refill()
        ids = carry.ids if self.use_ids else None
        with autocast_context(self.device, tc.autocast):
            out = self.forward(carry.tokens, carry.state, ids)
        is_last = carry.is_last()
        loss, loss_tok, halt_loss, correct = self.segment_loss(out, carry.tokens, carry.labels, ids, is_last)
        self.update(loss)
        self.meter.add_update(loss_tok, halt_loss, carry.rows)
        done = carry.advance(out.state, self.halts(out, carry.position, carry.segment + 1))
        self.meter.add_finished(done, correct, carry.segment, carry.position)

    def halts(self, out, positions: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """(b,) bool: the halting rule stops these examples (at stream `positions`, having
        run `segments` segments) after this segment; the caller adds the exploration
        minimum and the segment limit. One place for both batching modes."""
        return self.model.halt_head.stop(out.halt_logits.detach())

    # ------------------------------------------------------------------ evaluation

    def record(self, split: Split, segments: int, ids: torch.Tensor | None = None) -> SegmentRecord:
        """Every example's per-segment record, sharded over ranks and gathered on every
        rank; `ids` (N,) replaces the split's puzzle identifiers (an ablation)."""
        start, stop = self.dist.shard(len(split))
        ids = (split.ids if ids is None else ids)[start:stop] if self.use_ids else None
        model = self.eval_model
        was_training = model.training
        model.eval()
        batch = max(256, self.local_rows)
        record = run_segments(
            model, split.inputs[start:stop], segments, batch_size=batch, autocast=self.tc.autocast,
            progress=self.progress, ids=ids,
        )
        model.train(was_training)
        n = len(split)
        return SegmentRecord(*(self.dist.gather_shards(t.to(self.device), n).cpu() for t in record))

    def validate(self, step: int) -> dict[str, Any]:
        """Scored on every rank (rank 0 writes it); the record is kept for `finish`,
        which chooses its stop rule on the last validation."""
        self.val_record = (step, self.record(self.data.val, self.tc.eval_segments))
        result = score_segments(self.val_record[1], self.data.val.labels)
        record = {"event": "val", "step": step, "train_seconds": round(self.train_seconds(), 1), **result.to_dict()}
        if self.log is not None:
            self.log.write(record)
        if self.tensorboard is not None:
            self.tensorboard.trace(self.trace_first_val(), step)
        self.meter.started = time.perf_counter()  # the speed figures count training only
        return record

    def trace_first_val(self) -> dict[str, Any]:
        """`ponder.viz.trace` data of the EMA model on the first validation example."""
        from ponder.pretrained import Reasoner
        from ponder.viz.trace import trace_data

        model, was_training = self.eval_model, self.eval_model.training
        model.eval()
        try:
            reasoner = Reasoner(self.out_dir, self.cfg, model, self.device)
            return trace_data(reasoner, self.data.val.inputs[0], self.data.val.labels[0], self.tc.eval_segments, title="validation example 0")
        finally:
            model.train(was_training)

    def data_position(self, step: int) -> dict[str, int]:
        if self.carry is not None:
            return {"next_position": int(self.carry.next_position)}
        n = len(self.data.train)
        epoch, offset = divmod(step * self.tc.batch_size, n)
        return {"next_position": step * self.tc.batch_size, "epoch": epoch, "offset": offset}

    def task_shape(self) -> dict[str, Any]:
        data = self.data
        return {"name": data.name, "vocab": data.vocab, "seq_len": data.seq_len, "num_puzzles": data.num_puzzles}

    def finish(self, step: int) -> dict[str, Any]:
        """The final test: run once, on the test split, with the EMA weights; a stop rule
        is chosen on the validation split first and scored on the test split."""
        data, segments = self.data, self.tc.eval_segments
        trained_seconds = self.train_seconds()
        last_val = self.val_record  # the run's last step always validates: reuse it
        val_record = last_val[1] if last_val is not None and last_val[0] == step else self.record(data.val, segments)
        calibration = calibrate(val_record, data.val.labels, target=self.tc.calibrate_target)
        score = scorer(data.score, data.test, data.info, self.out_dir) if self.main else None
        record = self.record(data.test, segments)
        final = score_segments(record, data.test.labels, data.test.extra.get("depth"), score, calibration=calibration)
        if self.use_ids:  # how much of the score the puzzle identifier alone carries
            plain_score = scorer(data.score, data.test, data.info) if self.main else None  # writes no submission
            final.identifier_ablation = {
                name: ablation_scores(score_segments(self.record(data.test, segments, ids), data.test.labels, score=plain_score))
                for name, ids in ablation_ids(data.test.ids, data.num_puzzles, self.tc.seed).items()
            }
        result = {"split": "test", "step": step, "train_seconds": round(trained_seconds, 1), "total_seconds": round(time.time() - self.t0, 1), **final.to_dict()}
        if self.main:
            self.log.write({"event": "test", **result})
            write_atomic(self.out_dir / RESULTS, json.dumps(result, indent=2) + "\n")
            from ponder.viz.plots import plot_run

            plot_run(self.out_dir)
        return result


def start_noise(state: tuple[torch.Tensor, ...], keys: torch.Tensor, starts: int, scale: float) -> tuple[torch.Tensor, ...]:
    """Winner-take-all starts: rows come in groups of `starts` (one group per example);
    the first row of a group keeps the model's initial state, the others get Gaussian
    noise of `scale` on every latent, drawn from each row's (B K,) key and start index
    (a pure function of the stream position, so a resumed run draws the same)."""
    start = torch.arange(keys.shape[0], device=keys.device) % starts  # (B K,)
    row_keys = mix(keys, WTA_SALT) * starts + start
    noisy = []
    for i, latent in enumerate(state):  # (B K, ...) each
        eps = normal(row_keys, latent[0].numel(), salt=WTA_SALT + 1 + i).view_as(latent)
        noisy.append(latent + (scale * eps * (start != 0).view(-1, *[1] * (latent.dim() - 1))).to(latent.dtype))
    return tuple(noisy)


__all__ = ["Meter", "Trainer", "TrainerBase", "process_settings", "train"]
