"""Training a causal language model: the run machinery of `ponder.train.loop.TrainerBase`
(devices, ranks, checkpoints, resume, stops, logging) with a language model's step.

    x, y = windows(train tokens, context, batch, seed, step)   # random windows, from (seed, step)
    r    = r_for_step(mean, sigma, seed, step)                  # recurrent families: this step's depth
    loss = cross_entropy(model(x, r).logits, y)                 # next-token loss; one update

Both draws are pure functions of (seed, step), so a resumed run repeats the uninterrupted
one. Validation reports the loss on fixed validation windows at every test-time depth of
`train.eval_recurrence` (recurrent families; one depth otherwise), in bits per character
too for character corpora; the final evaluation adds, for the reasoning corpora, exact
match of generated answers by problem depth and recurrence.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ponder.config import TaskConfig, parse_int_list
from ponder.errors import PonderInputError
from ponder.lm.evaluate import answers_by_recurrence, loss_by_recurrence
from ponder.lm.models import LM_FAMILIES, build_lm, r_for_step
from ponder.lm.text import TEXT_TASKS, CharTokenizer, TextDataset, build_text, load_text, save_text, windows
from ponder.models.driver import autocast_context
from ponder.run_folder import RESULTS, write_atomic
from ponder.train.ema import EMA
from ponder.train.loop import DTYPES, TrainerBase

# task.* keys a text task may take, by the option name its builder uses
TASK_OPTIONS = ("text_file", "vocab_size", "digits", "entities", "train_depths", "test_depths", "train_size", "val_size", "test_size")


def is_language_model(family: str) -> bool:
    return family in LM_FAMILIES


def text_options(cfg: TaskConfig) -> dict[str, Any]:
    """The text task's options from the task section: the keys it takes that are set;
    a set key it does not take is an error naming it."""
    task = TEXT_TASKS[cfg.name]
    base = TaskConfig()
    options = {}
    for key in TASK_OPTIONS + ("blanks", "train_file", "test_file", "augmentations", "augment", "eval_demos", "concept_arc", "translate"):
        value = getattr(cfg, key)
        if value == getattr(base, key):
            continue
        if key not in task.options:
            raise PonderInputError(f"config key 'task.{key}': not used by task '{cfg.name}' (it takes {', '.join('task.' + k for k in task.options)})")
        options[key] = value
    return options


def load_text_for(cfg: TaskConfig, progress: bool = False) -> TextDataset:
    """The task's text dataset: the folder `task.data_dir`, or built from the config and
    kept in the dataset cache (`ponder.tasks.cache_root`) for the next run."""
    from ponder.tasks import cache_root

    if cfg.data_dir:
        dataset = load_text(Path(cfg.data_dir))
        if dataset.name != cfg.name:
            raise PonderInputError(f"{cfg.data_dir}: holds a '{dataset.name}' dataset but task.name is '{cfg.name}'")
        return dataset
    options = text_options(cfg)
    root = cache_root()
    if root is None:
        return build_text(cfg.name, options, seed=cfg.seed, progress=progress)
    import hashlib

    source = Path(options.get("text_file", "")) if options.get("text_file") else None
    stamp = [str(source.resolve()), source.stat().st_size, source.stat().st_mtime_ns] if source is not None and source.is_file() else []
    key = hashlib.sha256(json.dumps({"name": cfg.name, "seed": cfg.seed, "options": options, "source": stamp, "format": 1}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = root / "text" / f"{cfg.name}-{key}"
    if (folder / "manifest.json").is_file():
        try:
            return load_text(folder)
        except PonderInputError:
            pass
    dataset = build_text(cfg.name, options, seed=cfg.seed, progress=progress)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        save_text(dataset, tmp)
        if not (folder / "manifest.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass
    return dataset


# `model.block_style`: the layer's parts (`CausalLM`'s options). nanogpt: nanoGPT's layer as
# its Shakespeare configuration builds it (LayerNorm, GELU MLP, learned positions, no
# biases on projections, no embedding scale; GELU here is the tanh approximation, and
# the LayerNorms keep their bias)
BLOCK_STYLES: dict[str, dict[str, Any]] = {
    "ponder": {},
    "nanogpt": dict(norm_kind="layer", mlp_kind="gelu", bias=False, positions="learned", embed_scale=False),
}


def lm_arguments(cfg) -> dict[str, Any]:
    """`build_lm`'s flat arguments from the model section."""
    common = dict(hidden=cfg.hidden, heads=cfg.heads, expansion=cfg.expansion, mlp_multiple=cfg.mlp_multiple, **BLOCK_STYLES[cfg.block_style])
    if cfg.family == "gpt":
        return dict(common, layers=cfg.layers)
    if cfg.family == "ilr":
        return dict(common, layers=cfg.layers, repeats=parse_int_list(cfg.repeats) if cfg.repeats else None)
    if cfg.family == "rnn-lm":
        return dict(common, layers=cfg.layers, cell=cfg.cell, rnn_solver=cfg.rnn_solver)
    parts = dict(common, prelude_layers=cfg.prelude_layers, core_layers=cfg.core_layers, coda_layers=cfg.coda_layers,
                 state_init_std=cfg.state_init_std)
    if cfg.family == "recurrent-lm":
        return dict(parts, mean_r=cfg.cycles, backprop_depth=cfg.truncate_steps)
    return dict(parts, solver=cfg.solver, solver_iters=cfg.solver_iters, solver_tol=cfg.solver_tol,
                solver_backward=cfg.solver_backward, jacobian_weight=cfg.jacobian_weight)


def build_language_model(cfg, vocab: int, arguments: dict[str, Any] | None = None):
    """The model of the config's family; `arguments`: `build_lm`'s flat arguments as a
    checkpoint recorded them (a retrofitted model's come from its source, not the config)."""
    try:
        return build_lm(cfg.family, vocab, cfg.context, **(lm_arguments(cfg) if arguments is None else arguments))
    except ValueError as e:
        raise PonderInputError(f"model '{cfg.family}': {e}") from None


def load_source_model(cfg, tokenizer):
    """The trained non-recurrent model of `model.init_from` (a ponder gpt run or a GPT-2
    folder), in float32; its vocabulary must be the task tokenizer's and its context at
    least `model.context`."""
    from ponder.lm.retrofit import load_gpt2_folder

    source_dir = Path(cfg.init_from)
    if (source_dir / "config.json").is_file() and (source_dir / "model.safetensors").is_file():
        source = load_gpt2_folder(source_dir)
    else:
        from ponder.api import load_language_run

        source_cfg, source, source_tokenizer, _ = load_language_run(source_dir)
        if source_cfg.model.family != "gpt":
            raise PonderInputError(f"config key 'model.init_from': {source_dir} is a {source_cfg.model.family} run; a gpt run is expected")
        if source_tokenizer.to_dict() != tokenizer.to_dict():
            raise PonderInputError(f"config key 'model.init_from': {source_dir} was trained with another tokenizer than task '{source_cfg.task.name}' gives here")
    if source.vocab != tokenizer.vocab_size:
        raise PonderInputError(f"config key 'model.init_from': {source_dir} has a vocabulary of {source.vocab}, the task's tokenizer {tokenizer.vocab_size}")
    if source.context < cfg.context:
        raise PonderInputError(f"config key 'model.context': {cfg.context} exceeds the source model's context {source.context}")
    return source.float()


def initialised_model(cfg, tokenizer) -> tuple[Any, dict[str, Any]]:
    """The model that `model.init_from` starts from, with its build arguments: for a
    recurrent-lm, the source split into prelude / core / coda by `model.retrofit_split`
    (retrofitting); for a gpt, the source itself (training it on: the baseline a
    retrofit is compared with). The config is updated to describe the model."""
    from ponder.lm.retrofit import retrofit_from_spec

    if cfg.family not in ("gpt", "recurrent-lm"):
        raise PonderInputError(f"config key 'model.init_from': a trained gpt continues as a gpt or is retrofitted into a recurrent-lm; model.family is {cfg.family!r}")
    if cfg.family == "gpt" and cfg.retrofit_split:
        raise PonderInputError("config key 'model.retrofit_split': only a recurrent-lm is split; a gpt with model.init_from trains the source on as it is")
    if cfg.family == "recurrent-lm" and not cfg.retrofit_split:
        raise PonderInputError("config key 'model.retrofit_split': with model.init_from, give the source's layers as prelude,core,coda counts, e.g. 1,2,1")
    source = load_source_model(cfg, tokenizer)
    if cfg.family == "gpt":
        cfg.hidden, cfg.heads, cfg.layers = source.hidden, source.common_args["heads"], len(source.blocks.blocks)
        return source, dict(source.common_args, layers=len(source.blocks.blocks))
    model = retrofit_from_spec(source, cfg.retrofit_split, mean_r=cfg.cycles, state_init_std=cfg.state_init_std, backprop_depth=cfg.truncate_steps)
    p, c, d = (int(x) for x in cfg.retrofit_split.split(","))
    # the config records the model it now describes
    cfg.hidden, cfg.heads, cfg.prelude_layers, cfg.core_layers, cfg.coda_layers = model.hidden, model.common_args["heads"], p, c, d
    arguments = dict(model.common_args, prelude_layers=p, core_layers=c, coda_layers=d, mean_r=cfg.cycles,
                     state_init_std=cfg.state_init_std, backprop_depth=cfg.truncate_steps, state_norm=False)
    return model, arguments


def lm_flops_per_token(model, context: int, r: int | None) -> float:
    """Training FLOPs per token (forward and backward of one window at depth r), as
    `torch.utils.flop_counter` counts them on a one-window batch."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    idx = torch.zeros(1, context, dtype=torch.long, device=device)
    was = model.training
    model.train()
    with FlopCounterMode(display=False) as counter:
        out = model(idx, r=r) if model.recurrent else model(idx)
        out.logits.float().sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was)
    return counter.get_total_flops() / context


class LMTrainer(TrainerBase):
    """Next-token training on a text task (see the module docstring)."""

    unit = "tokens"

    def batching_mode(self) -> str:
        return "windows"  # a batch of random windows: no halting, nothing to shrink or refill

    def setup_data(self) -> None:
        self.text = load_text_for(self.cfg.task, progress=self.progress)
        self.tokenizer = self.text.tokenizer
        self.vocab = self.tokenizer.vocab_size
        to_tensor = lambda a: torch.from_numpy(a.astype(np.int64)).to(self.device)  # noqa: E731
        self.train_tokens = to_tensor(self.text.splits["train"])  # (N,)
        self.val_tokens = to_tensor(self.text.splits["val"])
        context = self.cfg.model.context
        for split, tokens in (("train", self.train_tokens), ("val", self.val_tokens)):
            if tokens.numel() <= context + 1:
                raise PonderInputError(f"task '{self.text.name}': the {split} split has {tokens.numel()} tokens, fewer than model.context + 2 = {context + 2}")

    def setup_model(self) -> None:
        cfg, tc = self.cfg, self.tc
        torch.manual_seed(tc.seed)
        recorded = (self.resumed_meta or {}).get("task_shape", {}).get("lm_args")
        if recorded is not None:  # resuming: the architecture the checkpoint was made with
            model, self.lm_args = build_language_model(cfg.model, self.vocab, recorded), recorded
        elif cfg.model.init_from:
            model, self.lm_args = initialised_model(cfg.model, self.tokenizer)
        else:
            model, self.lm_args = build_language_model(cfg.model, self.vocab), lm_arguments(cfg.model)
        self.model = model.to(device=self.device, dtype=DTYPES[tc.dtype])
        self.ema = EMA(self.model, tc.ema, ramp=tc.ema_ramp) if tc.ema > 0 else None
        self.eval_model = self.ema.model if self.ema else self.model
        self.recurrent = bool(getattr(self.model, "recurrent", False))
        self.flops_per_unit = lm_flops_per_token(self.model, cfg.model.context, self.default_r())
        self.peak = self.device_peak()

    def default_r(self) -> int | None:
        return getattr(self.model, "mean_r", None) if self.recurrent else None

    def describe_data(self) -> str:
        sizes = ", ".join(f"{k} {v.size:,}" for k, v in self.text.splits.items())
        return f"task {self.text.name}: {sizes} tokens, vocabulary {self.vocab}"

    def train_step(self, step: int) -> None:
        tc, model_cfg = self.tc, self.cfg.model
        x, y = windows(self.train_tokens, model_cfg.context, tc.batch_size, tc.seed, step, self.dist.rank, self.dist.world)  # (b, T)
        kwargs: dict[str, Any] = {}
        if self.recurrent:
            if model_cfg.family == "recurrent-lm":
                kwargs["r"] = r_for_step(self.mean_recurrence(step), model_cfg.iteration_sigma, tc.seed, step)
            noise = (tc.seed * 1_000_003 + step) * 64 + self.dist.rank  # the state's initial noise: from (seed, step, rank)
            kwargs["generator"] = torch.Generator(device=self.device).manual_seed(noise)
        with autocast_context(self.device, tc.autocast):
            out = self.forward(x, **kwargs)
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten())
        total = loss if out.penalty is None else loss + out.penalty
        self.update(total)
        self.meter.add_update(loss.detach(), torch.zeros((), device=self.device), x.numel())

    def mean_recurrence(self, step: int) -> float:
        """This step's mean training depth: model.cycles, reached linearly from 1 over
        `train.recurrence_warmup` steps when a curriculum is set."""
        target, warmup = self.cfg.model.cycles, self.tc.recurrence_warmup
        if warmup <= 0 or step >= warmup:
            return float(target)
        return 1.0 + (target - 1) * step / warmup

    def recurrences(self) -> list[int | None]:
        """The test-time depths evaluated: `train.eval_recurrence` and the model's own."""
        if not self.recurrent:
            return [None]
        return sorted(set(parse_int_list(self.tc.eval_recurrence)) | {self.default_r()})

    def evaluate_loss(self, every_depth: bool = True) -> dict[str, Any]:
        """Validation loss at each test-time depth (one for non-recurrent families; with
        `every_depth=False`, at the training depth only: what periodic validation costs
        comes out of a time budget, and a sweep up to r = 64 would take a recurrent model's
        share of it)."""
        tc = self.tc
        return loss_by_recurrence(
            self.eval_model, self.val_tokens, self.cfg.model.context, tc.batch_size, tc.eval_batches,
            self.recurrences() if every_depth else [self.default_r()], self.default_r(), isinstance(self.tokenizer, CharTokenizer),
            autocast=tc.autocast, rank=self.dist.rank, world=self.dist.world, reduce=self.dist.all_sum,
        )

    def val_summary(self, record: dict[str, Any]) -> str:
        return f"{record['loss']:.3f}"

    def validate(self, step: int) -> dict[str, Any]:
        record = {"event": "val", "step": step, **self.evaluate_loss(every_depth=False)}
        if self.log is not None:
            self.log.write(record)
        self.meter.started = time.perf_counter()
        return record

    def data_position(self, step: int) -> dict[str, int]:
        return {"windows_drawn": step * self.tc.batch_size}

    def task_shape(self) -> dict[str, Any]:
        return {"name": self.text.name, "vocab": self.vocab, "context": self.cfg.model.context, "tokenizer": self.tokenizer.to_dict(),
                "lm_args": self.lm_args}

    def finish(self, step: int) -> dict[str, Any]:
        """The final evaluation: validation loss by depth (the text corpora have no test
        split), and for the reasoning corpora exact match of generated answers on the test
        problems by problem depth and recurrence."""
        tc = self.tc
        result: dict[str, Any] = {"split": "val", "step": step, "train_seconds": round(self.train_seconds(), 1)}
        result.update(self.evaluate_loss())
        problems = self.text.problems.get("test") or []
        if problems:
            result["split"] = "val (loss), test (answers)"
            result["answers"] = answers_by_recurrence(self.eval_model, self.tokenizer, problems, self.recurrences(), tc.autocast)
        result["total_seconds"] = round(time.time() - self.t0, 1)
        if self.main:
            self.log.write({"event": "test", **result})
            write_atomic(self.out_dir / RESULTS, json.dumps(result, indent=2) + "\n")
            from ponder.viz.plots import plot_run

            plot_run(self.out_dir)
        return result
