"""Typed run configuration with strict keys, YAML files, presets and `key=value` overrides.

A run is described by one `RunConfig` with three sections. Every key is checked: an
unknown section or key, or a value of the wrong type, raises `PonderInputError` naming
it. Presets are YAML files in the package's `presets/` folder; `ponder presets` lists them.

This module depends on nothing else in ponder but its error type: the names that other
modules own (model families, halting rules, gradient modes, tasks, solvers) are checked
against their registries by `ponder.registry.check_names`, so no list of them is
repeated here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ponder.errors import PonderInputError, read_text

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "trm-sudoku-cpu"


@dataclass
class ModelConfig:
    family: str = "trm"  # trm, hrm, looped (Universal Transformer), depthrec (depth-recurrent), attractor or transformer (baseline)
    hidden: int = 128  # D
    heads: int = 4
    layers: int = 2  # blocks per network (HRM: per module)
    expansion: float = 4.0  # SwiGLU width / hidden
    mlp_multiple: int = 16  # SwiGLU inner width rounded up to this (HRM/TRM papers: 256)
    mlp_conv: int = 0  # kernel of a depthwise convolution inside the SwiGLU (URM: 2); 0 = none
    mixer: str = "attention"  # "attention" or "mlp" (sequence-axis MLP mixer)
    positions: str = "auto"  # rope, learned (added as 0.707 (x + pos)) or none; auto: rope with attention, learned with the sequence MLP
    attention_mask: str = "none"  # "none" (all pairs) or "task" (the task's structure, e.g. Sudoku peers)
    norm: str = "post"  # puzzle families' blocks: post (HRM/TRM: h = norm(h + f(h))) or pre (h = h + f(norm(h)); every network call then ends with a parameter-free RMS norm, so a recurrent state keeps its scale)
    latent_steps: int = 2  # inner steps per cycle: TRM n (z updates), HRM L_cycles
    cycles: int = 2  # per segment: TRM T cycles, HRM H_cycles, looped most loop steps K, depthrec and recurrent-lm mean iterations
    grad_mode: str = "auto"  # which calls carry gradient: auto (the family's own), full, last_cycle, one_step, truncated
    truncate_steps: int = 1  # with grad_mode=truncated: the last K network calls carry gradient; recurrent-lm: the last K core iterations
    halting: str = "bce"  # none (fixed segments), bce (TRM: "is my answer right?"), act_q (HRM: Q-learning)
    halt_readout: str = "auto"  # what the halting head reads: pooled (bce: least sure position, act_q: mean), first (position 0); auto: first with a prefix
    puzzle_prefix: int = 0  # HRM/TRM's prefix positions in front of the tokens, the first holding the puzzle (or one shared learned) vector; 0: none
    loop_halting: str = "act"  # looped: per-position halting inside a segment: act, pondernet or none
    ponder_cost: float = 0.01  # looped: weight of ACT's ponder cost N + R, or of PonderNet's KL to its prior
    pondernet_prior: float = 0.2  # looped: rate of PonderNet's geometric prior over steps
    score_dt: float = 0.0  # looped: SCORE's contractive step h = (1 - dt) h + dt F(h); 0 = plain h = F(h)
    iteration_sigma: float = 0.5  # depthrec, recurrent-lm: spread of the Poisson-lognormal iteration count in training (0: fixed)
    solver: str = "anderson"  # attractor: fixed-point method (iteration, anderson, broyden, bad_broyden)
    solver_iters: int = 8  # attractor: most solver iterations per segment; 0 removes the solver
    solver_tol: float = 1e-3  # attractor: stop an example's solve at this relative residual
    solver_backward: str = "implicit"  # attractor: gradient through the equilibrium, implicit or phantom
    jacobian_weight: float = 0.0  # attractor: weight of the Jacobian (contraction) regulariser
    proposal_weight: float = 0.0  # attractor: weight of a token loss on the proposal y0 read by the answer head (the route to equilibrium internalisation); 0: none
    latent_init_std: float = 1.0  # puzzle families: std of the fixed initial latents (1: as HRM/TRM); 0 starts them at zero, so the first call sees the input alone
    puzzle_embedding: bool = False  # a learned vector per puzzle identifier (HRM/TRM on ARC), trained by sparse sign-SGD
    # causal language models (families gpt, recurrent-lm, ilr, attractor-lm, rnn-lm; `layers` is gpt's, ilr's and rnn-lm's depth)
    context: int = 64  # the longest text a language model reads at once (its window in training, its KV cache)
    block_style: str = "ponder"  # language models' layer: ponder (RMSNorm, SwiGLU, RoPE) or nanogpt (LayerNorm, GELU, learned positions, as nanoGPT)
    prelude_layers: int = 1  # recurrent-lm, attractor-lm: blocks that embed the text once
    core_layers: int = 2  # recurrent-lm, attractor-lm: the blocks iterated on the latent state
    coda_layers: int = 1  # recurrent-lm, attractor-lm: blocks that read the final state out
    state_init_std: float = 1.0  # recurrent-lm: std of the noise the latent state starts from in training
    repeats: str = ""  # ilr: iterations of each layer, e.g. "2,1,1,1" (empty: once each)
    init_from: str = ""  # a trained non-recurrent model, a ponder gpt run folder or a GPT-2 folder (config.json + model.safetensors): recurrent-lm retrofits it, gpt trains it on
    retrofit_split: str = ""  # with init_from: its layers as "prelude,core,coda" counts, e.g. "1,2,1"
    cell: str = "diag_gru"  # rnn-lm: the token mixer's cell, diag_gru or diag_lstm (ParaRNN's diagonal cells)
    rnn_solver: str = "newton"  # rnn-lm: how the recurrence over positions is computed: newton (parallel, Newton-in-time) or sequential (a loop); the same result


@dataclass
class TaskConfig:
    name: str = "sudoku"  # a task of `ponder data list`; its builder reads only the keys it lists
    data_dir: str = ""  # a folder written by `ponder data build` (else the task is built in memory)
    seed: int = 0  # data seed: the same seed gives the same data everywhere
    train_size: int = 0  # training examples (before augmentation); 0: the task's default
    val_size: int = 0  # validation examples: periodic evaluation; 0: the task's default
    test_size: int = 0  # test examples: final evaluation only; 0: the task's default
    augmentations: int = -1  # offline augmented copies of each example besides the original (HRM's num_aug); -1: the task's default
    augment: bool = True  # a random symmetry per training example per step (tasks that define one)
    blanks: int = 40  # generated Sudoku: blanks per puzzle
    max_blanks: int = 0  # generated Sudoku: above `blanks`, each puzzle's blank count is drawn from blanks..max_blanks, fewer where it turns minimal first (64: up to minimal puzzles); the puzzles carry a difficulty for train.curriculum_examples
    harden_steps: int = 0  # generated Sudoku: hill-climb each puzzle this many moves toward more search (sudoku.harden: a given swapped for a blank, kept when the puzzle stays unique and the solver's search does not shrink); the puzzles carry a difficulty
    train_file: str = ""  # generated Sudoku: a CSV / puzzle-per-line file replacing the training split
    val_file: str = ""  # generated Sudoku: a file replacing the validation split
    test_file: str = ""  # generated Sudoku: a file replacing the test split
    text_file: str = ""  # text corpora: the text to read instead of $PONDER_DATA/text/tinyshakespeare.txt
    vocab_size: int = 0  # BPE corpora: vocabulary size to train; 0: the task's default
    digits: int = 0  # arithmetic: digits per operand; 0: the task's default
    entities: int = 0  # multihop: entities in the fact table; 0: the task's default
    eval_demos: bool = True  # ARC: train on the evaluation tasks' demonstration pairs (HRM/TRM do; results must say so)
    concept_arc: bool = True  # ARC-AGI-1: add the ConceptARC tasks to training (HRM/TRM do)
    translate: bool = True  # ARC: place each training pair at a random offset on the 30x30 canvas
    train_depths: str = ""  # compositional tasks: depth range of train and val, "lo-hi"; "": the task's default
    test_depths: str = ""  # compositional tasks: depth range of test, "lo-hi"; "": the task's default


@dataclass
class TrainConfig:
    steps: int = 1000  # shrink: batches of up to max_segments segments (an update after each); refill: single segments of the batch (one update each)
    batching: str = "auto"  # shrink (halted rows leave the batch), refill (halted rows get the next example; fixed shapes), auto: refill on CUDA
    max_minutes: float = 0.0  # stop this invocation after this much training time, checkpoint, skip the test (0: no limit); --resume continues
    budget_minutes: float = 0.0  # end the run (validate, checkpoint, test) once its training time over all invocations reaches this (0: none); not exactly repeatable
    batch_size: int = 128  # global: split over the ranks of a torchrun launch
    max_segments: int = 8  # deep-supervision segments per example in training
    eval_segments: int = 16  # segments run at evaluation (can exceed training)
    calibrate_target: str = "last"  # the final test's stop rule, chosen on validation, keeps: last, the all-segments accuracy; best, the best any candidate rule reaches (for models that lose accuracy past their trained segments)
    optimizer: str = "adamatan2"  # "adamatan2" or "adamw"
    lr: float = 1e-3
    lr_warmup: int = 100  # batches of linear warmup
    lr_schedule: str = "cosine"  # "cosine" or "constant" after warmup
    lr_min_ratio: float = 0.1  # cosine floor as a fraction of lr
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    puzzle_lr: float = 1e-2  # sign-SGD learning rate of the puzzle-identifier table (same warmup/decay schedule)
    puzzle_weight_decay: float = 0.1  # applied to the table's rows in each batch
    ema: float = 0.999  # EMA decay of the weights used for evaluation; 0 disables
    ema_ramp: bool = True  # the decay ramps up as min(ema, (1 + t) / (10 + t)) over the first updates; false: constant (the TRM code)
    decay_vectors: bool = False  # weight decay on 1-D parameters (biases, vectors) too, as the HRM/TRM code does; false: matrices only
    loss: str = "ce"  # "ce" or "stablemax"
    loss_target: str = "label"  # label: the stored answer; nearest: the right answer nearest the model's prediction, for tasks with several (maze-hard: any shortest path)
    curriculum_examples: int = 0  # examples drawn (stream positions) over which training grows from the easiest `curriculum_start` of the training split, by its difficulty (generated Sudoku with task.max_blanks; compositional depth), to all of it; 0: off
    curriculum_start: float = 0.1  # with curriculum_examples: the fraction of the training split (easiest first) sampled at the start
    halt_loss_weight: float = 0.5
    halt_explore_prob: float = 0.1  # chance an example gets a random minimum segment count
    wta_starts: int = 1  # winner-take-all: K latent starts per example (start 1 plain, the others with noise on the initial latents); only each example's lowest-loss start is trained (1: off; shrinking batches)
    wta_noise: float = 0.5  # with wta_starts > 1: scale of the Gaussian noise on the initial latents of starts 2..K
    eval_every: int = 250  # steps between validation runs
    checkpoint_every: int = 250  # steps between checkpoints
    checkpoint_minutes: float = 0.0  # also checkpoint after this much wall time since the last one (0: only by steps)
    checkpoint_shard_mib: int = 16  # largest checkpoint file; bigger states are written in several shards
    checkpoint_moments: str = "float32"  # dtype of the optimizer moments in checkpoints: float32 (exact resume) or bfloat16 (half the size)
    log_every: int = 1  # steps per metrics line; metrics are read from the device only this often
    tensorboard: bool = False  # also write TensorBoard event files to RUN/tensorboard (needs the tensorboard package): every logged number, the accuracy-vs-segments curve and a picture of the thinking at each validation
    seed: int = 0  # model init, data order, augmentation and exploration
    device: str = "auto"  # "auto", "cpu", "cuda", "mps", "cuda:1", ...; under torchrun each rank takes its LOCAL_RANK's GPU
    autocast: str = "auto"  # mixed precision: auto (bfloat16 on CUDA, none elsewhere), none, or bfloat16; weights stay float32
    dtype: str = "float32"  # the weights' dtype: float32 (the masters under autocast) or float64 (for exactness checks)
    compile: bool = False  # torch.compile the segment step (refill batching keeps its shapes fixed: no recompiles after warm-up)
    peak_tflops: float = 0.0  # the device's peak dense TFLOP/s for the MFU figure; 0: looked up for known GPUs
    threads: int = 0  # CPU threads for torch during this run; 0 keeps torch's default
    recurrence_warmup: int = 0  # recurrent-lm: steps over which the mean recurrence rises linearly from 1 to model.cycles (a curriculum, e.g. after retrofitting); 0: none
    eval_recurrence: str = "1,2,4,8,16,32,64"  # language models with a recurrent core: validation loss at each of these test-time depths
    eval_batches: int = 20  # language models: validation windows (batches of batch_size) per evaluation


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


_CHOICES = {
    ("model", "mixer"): ("attention", "mlp"),
    ("model", "positions"): ("auto", "rope", "learned", "none"),
    ("model", "block_style"): ("ponder", "nanogpt"),
    ("model", "attention_mask"): ("none", "task"),
    ("model", "norm"): ("post", "pre"),
    ("train", "optimizer"): ("adamatan2", "adamw"),
    ("train", "lr_schedule"): ("cosine", "constant"),
    ("train", "loss"): ("ce", "stablemax"),
    ("train", "loss_target"): ("label", "nearest"),
    ("train", "calibrate_target"): ("last", "best"),
    ("train", "autocast"): ("auto", "none", "bfloat16"),
    ("train", "batching"): ("auto", "shrink", "refill"),
    ("train", "checkpoint_moments"): ("float32", "bfloat16"),
    ("train", "dtype"): ("float32", "float64"),
}


INT_LIMIT = 2**63 - 1  # integer settings end up in int64 tensors and generators


def _coerce(value: Any, typ: type, key: str) -> Any:
    """Convert a YAML/CLI value to the declared field type or say what was expected:
    integers within int64, floats finite."""
    number = _number(value, typ)
    if number is not None:
        if typ is int and abs(number) > INT_LIMIT:
            raise PonderInputError(f"config key '{key}': expected an integer of at most {INT_LIMIT}, got {value!r}")
        if typ is float and not math.isfinite(number):
            raise PonderInputError(f"config key '{key}': expected a finite number, got {value!r}")
        return number
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise PonderInputError(f"config key '{key}': expected {typ.__name__}, got {value!r}")


def _number(value: Any, typ: type) -> int | float | None:
    """`value` as an int or float setting, or None if it is not one."""
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return None
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return None
    return None


def _did_you_mean(cfg, dotted: str) -> str:
    """'did you mean train.max_segments? ' for a key given without its section or a
    little misspelt; '' when nothing is close."""
    import difflib

    known = [f"{name}.{key}" for name in ("model", "task", "train") for key in _section_types(getattr(cfg, name))]
    bare = [k for k in known if k.split(".", 1)[1] == dotted]
    close = bare or difflib.get_close_matches(dotted, known, n=1, cutoff=0.8)
    return f"did you mean {close[0]}? " if close else ""


def _section_types(section: Any) -> dict[str, type]:
    hints = {"int": int, "float": float, "str": str, "bool": bool}
    return {f.name: hints[f.type] if isinstance(f.type, str) else f.type for f in fields(section)}


def apply_values(cfg: RunConfig, values: dict[str, Any], source: str) -> RunConfig:
    """Set nested `{section: {key: value}}` (or dotted `section.key`) values in place."""
    flat: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                flat[f"{k}.{kk}"] = vv
        else:
            flat[k] = v
    if "model.rope" in flat:  # the key before model.positions, as run folders written then hold it
        rope = _coerce(flat.pop("model.rope"), bool, "model.rope")
        flat.setdefault("model.positions", "auto" if rope else "learned")
    if "task.name" in flat and str(flat["task.name"]) != cfg.task.name:
        cfg.task = TaskConfig()  # another task: the earlier layers' task keys were meant for the old one
    for dotted, value in flat.items():
        if dotted == "description":
            cfg.description = str(value)
            continue
        section_name, _, key = dotted.partition(".")
        section = getattr(cfg, section_name, None) if section_name in ("model", "task", "train") else None
        if section is None or not key:
            raise PonderInputError(f"{source}: unknown config key '{dotted}'; {_did_you_mean(cfg, dotted)}expected model.*, task.* or train.*")
        types = _section_types(section)
        if key not in types:
            raise PonderInputError(
                f"{source}: unknown config key '{dotted}'; {_did_you_mean(cfg, dotted)}{section_name} keys are: {', '.join(sorted(types))}"
            )
        coerced = _coerce(value, types[key], dotted)
        allowed = _CHOICES.get((section_name, key))
        if allowed and coerced not in allowed:
            raise PonderInputError(f"{source}: config key '{dotted}': expected one of {', '.join(allowed)}, got {coerced!r}")
        setattr(section, key, coerced)
    validate(cfg, source)
    return cfg


def validate(cfg: RunConfig, source: str) -> None:
    """Range checks that a type check cannot express."""
    checks = [
        ("model.hidden", cfg.model.hidden >= 8, "an integer >= 8"),
        ("model.heads", cfg.model.heads >= 1 and cfg.model.hidden % cfg.model.heads == 0, "a divisor of model.hidden"),
        ("model.layers", cfg.model.layers >= 1, ">= 1"),
        ("model.latent_steps", cfg.model.latent_steps >= 1, ">= 1"),
        ("model.cycles", cfg.model.cycles >= 1, ">= 1"),
        ("model.truncate_steps", cfg.model.truncate_steps >= 1, ">= 1"),
        ("model.puzzle_prefix", cfg.model.puzzle_prefix >= 0, ">= 0"),
        ("model.context", cfg.model.context >= 2, ">= 2"),
        ("model.prelude_layers", cfg.model.prelude_layers >= 0, ">= 0"),
        ("model.core_layers", cfg.model.core_layers >= 1, ">= 1"),
        ("model.coda_layers", cfg.model.coda_layers >= 0, ">= 0"),
        ("model.state_init_std", cfg.model.state_init_std >= 0, ">= 0"),
        ("model.latent_init_std", cfg.model.latent_init_std >= 0, ">= 0"),
        ("model.repeats", _int_list_ok(cfg.model.repeats), "comma-separated integers >= 1, e.g. 2,1,1,1"),
        ("train.eval_recurrence", _int_list_ok(cfg.train.eval_recurrence) and bool(cfg.train.eval_recurrence), "comma-separated integers >= 1"),
        ("train.eval_batches", cfg.train.eval_batches >= 1, ">= 1"),
        ("train.recurrence_warmup", cfg.train.recurrence_warmup >= 0, ">= 0"),
        ("task.vocab_size", cfg.task.vocab_size >= 0, ">= 0"),
        ("task.digits", cfg.task.digits >= 0, ">= 0"),
        ("task.entities", cfg.task.entities >= 0, ">= 0"),
        ("model.score_dt", 0 <= cfg.model.score_dt < 1, "in [0, 1)"),
        ("model.ponder_cost", cfg.model.ponder_cost >= 0, ">= 0"),
        ("model.iteration_sigma", cfg.model.iteration_sigma >= 0, ">= 0"),
        ("model.pondernet_prior", 0 < cfg.model.pondernet_prior < 1, "in (0, 1)"),
        ("model.mlp_multiple", cfg.model.mlp_multiple >= 1, ">= 1"),
        ("model.mlp_conv", cfg.model.mlp_conv >= 0, ">= 0"),
        ("model.solver_iters", cfg.model.solver_iters >= 0, ">= 0"),
        ("model.solver_tol", cfg.model.solver_tol > 0, "> 0"),
        ("model.jacobian_weight", cfg.model.jacobian_weight >= 0, ">= 0"),
        ("model.proposal_weight", cfg.model.proposal_weight >= 0, ">= 0"),
        ("task.blanks", 0 <= cfg.task.blanks <= 64, "0..64"),
        ("task.train_size", cfg.task.train_size >= 0, ">= 0"),
        ("task.val_size", cfg.task.val_size >= 0, ">= 0"),
        ("task.test_size", cfg.task.test_size >= 0, ">= 0"),
        ("task.augmentations", cfg.task.augmentations >= -1, ">= 0, or -1 for the task's default"),
        ("task.train_depths", _depth_range_ok(cfg.task.train_depths), "a depth range 'lo-hi' with 1 <= lo <= hi"),
        ("task.test_depths", _depth_range_ok(cfg.task.test_depths), "a depth range 'lo-hi' with 1 <= lo <= hi"),
        ("train.steps", cfg.train.steps >= 1, ">= 1"),
        ("train.batch_size", cfg.train.batch_size >= 1, ">= 1"),
        ("train.max_segments", cfg.train.max_segments >= 1, ">= 1"),
        ("train.eval_segments", cfg.train.eval_segments >= 1, ">= 1"),
        ("train.lr", cfg.train.lr > 0, "> 0"),
        ("train.puzzle_lr", cfg.train.puzzle_lr > 0, "> 0"),
        ("train.max_minutes", cfg.train.max_minutes >= 0, ">= 0"),
        ("train.budget_minutes", cfg.train.budget_minutes >= 0, ">= 0"),
        ("train.ema", 0 <= cfg.train.ema < 1, "in [0, 1)"),
        ("train.eval_every", cfg.train.eval_every >= 1, ">= 1"),
        ("train.checkpoint_every", cfg.train.checkpoint_every >= 1, ">= 1"),
        ("train.checkpoint_minutes", cfg.train.checkpoint_minutes >= 0, ">= 0"),
        ("train.checkpoint_shard_mib", cfg.train.checkpoint_shard_mib >= 1, ">= 1"),
        ("train.log_every", cfg.train.log_every >= 1, ">= 1"),
        ("train.peak_tflops", cfg.train.peak_tflops >= 0, ">= 0"),
        ("train.threads", cfg.train.threads >= 0, ">= 0"),
        ("train.halt_explore_prob", 0 <= cfg.train.halt_explore_prob <= 1, "in [0, 1]"),
        ("model.expansion", 0 < cfg.model.expansion <= 64, "in (0, 64]"),
        ("task.seed", cfg.task.seed >= 0, ">= 0"),
        ("train.seed", cfg.train.seed >= 0, ">= 0"),
        ("train.lr_warmup", cfg.train.lr_warmup >= 0, ">= 0"),
        ("train.lr_min_ratio", 0 <= cfg.train.lr_min_ratio <= 1, "in [0, 1]"),
        ("train.weight_decay", cfg.train.weight_decay >= 0, ">= 0"),
        ("train.puzzle_weight_decay", cfg.train.puzzle_weight_decay >= 0, ">= 0"),
        ("train.beta1", 0 <= cfg.train.beta1 < 1, "in [0, 1)"),
        ("train.beta2", 0 <= cfg.train.beta2 < 1, "in [0, 1)"),
        ("train.halt_loss_weight", cfg.train.halt_loss_weight >= 0, ">= 0"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise PonderInputError(f"{source}: config key '{key}': expected {expected}")


def parse_int_list(text: str) -> list[int]:
    """"2,1,1" -> [2, 1, 1]; every value >= 1."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if any(v < 1 for v in values):
        raise ValueError(text)
    return values


def _int_list_ok(text: str) -> bool:
    try:
        parse_int_list(text)
    except ValueError:
        return False
    return True


def parse_depth_range(text: str) -> tuple[int, int]:
    """"2-5" -> (2, 5); "3" -> (3, 3)."""
    lo, _, hi = text.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if not 1 <= lo_i <= hi_i:
        raise ValueError(text)
    return lo_i, hi_i


def _depth_range_ok(text: str) -> bool:
    if not text:
        return True
    try:
        parse_depth_range(text)
    except ValueError:
        return False
    return True


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`["train.lr=3e-4", ...]` -> `{"train.lr": "3e-4"}`."""
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise PonderInputError(f"override '{pair}': expected key=value, e.g. train.lr=3e-4")
        out[key.strip()] = value.strip()
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PonderInputError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(read_text(path, "expected a YAML config"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PonderInputError(f"{path}{line}: not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PonderInputError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise PonderInputError(f"unknown preset '{name}'; expected one of: {', '.join(preset_names())}")
    return path


def build_config(preset: str | None = None, config_file: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then a preset (default: the embedded CPU Sudoku run), then a YAML file,
    then overrides; each layer is checked key by key. A layer that changes `task.name`
    starts the task section afresh, so a preset's Sudoku sizes never leak into another task."""
    cfg = RunConfig()
    if preset is None and config_file is None:
        preset = DEFAULT_PRESET
    if preset is not None:
        apply_values(cfg, load_yaml(preset_path(preset)), f"preset {preset}")
    if config_file is not None:
        apply_values(cfg, load_yaml(config_file), str(config_file))
    if overrides:
        apply_values(cfg, overrides, "override")
    return cfg


def config_from_dict(data: dict[str, Any], source: str) -> RunConfig:
    if not isinstance(data, dict):
        raise PonderInputError(f"{source}: expected a mapping of config sections, got {type(data).__name__}")
    return apply_values(RunConfig(), data, source)
