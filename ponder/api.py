"""The `ponder` verbs as Python functions. The CLI (`ponder.cli`) is generated from
these signatures, so each verb takes the same arguments in both places.

    >>> import ponder.api as api
    >>> result = api.train(["train.steps=50"], out="runs/quick")   # doctest: +SKIP
    >>> api.evaluate("runs/quick", segments=8)["accuracy_by_segment"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from ponder.config import RunConfig, apply_values, build_config, load_yaml, parse_overrides, preset_names, preset_path
from ponder.errors import PonderInputError
from ponder.eval.branch import evaluate_branch
from ponder.eval.breadth import evaluate_breadth
from ponder.eval.commit import evaluate_commit
from ponder.eval.evaluate import evaluate as evaluate_model
from ponder.eval.evaluate import ablation_ids, ablation_scores, run_early_exit, run_segments
from ponder.eval.stopping import TARGETS, StopRule, calibrate
from ponder.models import build_model, count_params
from ponder.tasks import Split, load_dataset_for, scorer, sudoku
from ponder.tasks.builders import get_builder
from ponder.tasks.dataset import MANIFEST, load_dataset
from ponder.registry import check_names
from ponder.run_folder import CHECKPOINT, FolderLock, holds_work, load_config, read_log, read_results
from ponder.train.checkpoint import load_weights, read_checkpoint
from ponder.train.distributed import launched, pick_device
from ponder.train.loop import RESUMABLE_KEYS, check_config_matches, process_settings
from ponder.train.loop import train as train_loop



def train(overrides: list[str] | None = None, preset: str | None = None, config: str | None = None, out: str | None = None, resume: str | None = None,
          device: str | None = None, quiet: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a model; with no arguments, the embedded default (TRM on generated Sudoku, CPU).

    Args:
        overrides: `key=value` settings applied last, e.g. train.steps=200 model.hidden=64
        preset: a shipped preset (see `ponder presets`)
        config: a YAML config file
        out: the run folder to create (default: a new folder under runs/)
        resume: a run folder to continue from its last checkpoint
        device: where to train: cpu, cuda, cuda:N (the same as train.device=...; default: the config's, auto)
        quiet: print only warnings, errors and the final result (no progress bar or lines)

    On a terminal the progress is a bar; into a file or a pipe it is a plain line every 30 s.
    """
    pairs = parse_overrides(list(overrides or []) + ([f"train.device={device}"] if device else []))
    if resume:
        if preset or config or out:
            raise PonderInputError("--resume continues a run with its own config; drop --preset/--config/--out")
        cfg = load_config(Path(resume))
        bad = sorted(set(pairs) - set(RESUMABLE_KEYS))
        if bad:
            raise PonderInputError(f"override '{bad[0]}': a resumed run keeps its config; only {', '.join(RESUMABLE_KEYS)} may change")
        if pairs:
            apply_values(cfg, pairs, "override")
        return train_loop(check_names(cfg), Path(resume), resume=True, progress=progress, quiet=quiet)
    cfg = check_names(build_config(preset=preset, config_file=config, overrides=pairs))
    if out is None and launched():
        raise PonderInputError("under torchrun every rank must write to the same run folder: pass --out (or --resume)")
    run_dir = Path(out) if out else _new_run_dir(preset or Path(config or "default").stem)
    return train_loop(cfg, run_dir, progress=progress, quiet=quiet)


def evaluate(
    run: str, data: str | None = None, segments: int | None = None, split: str = "test", exit_tol: float | None = None,
    breadth: int = 1, init_noise: float = 0.5, langevin: float = 0.0, solver_iters: int | None = None,
    recurrence: str | None = None, calibrate_halting: bool = False, calibrate_target: str = "last",
    commit: int = 0, commit_rounds: int | None = None, commit_restart: bool = False, commit_unfiltered: bool = False,
    branch: int = 0, branch_segments: int | None = None, branch_width: int = 64,
) -> dict[str, Any]:
    """Evaluate a trained run (its EMA weights) with every segment's answer recorded (a
    language-model run: validation loss by test-time recurrence).

    Args:
        run: a run folder, a model folder from 'ponder export', or a bundled model's name (e.g. sudoku)
        data: a dataset folder from 'ponder data build' (its --split), or a Sudoku CSV / puzzle-per-line file (default: the run's own data)
        segments: segments to run (default: the run's train.eval_segments)
        split: which split of the run's data or of a dataset folder: test or val
        exit_tol: also report exiting each example once its relative state change over a segment is below this (any family)
        breadth: K > 1 also runs K starting states per example and reports accuracy by segments x breadth (ponder.eval.breadth)
        init_noise: with breadth: scale of the Gaussian noise added to the initial state of starts 2..K
        langevin: with breadth: scale of the noise added to those starts' state after every segment
        solver_iters: attractor runs: solver iterations per segment (0 removes the solver; default: the run's own)
        recurrence: language runs: test-time recurrences, comma-separated, e.g. 1,4,16,64 (default: the run's train.eval_recurrence)
        calibrate_halting: also choose a stop rule on a validation split (that of --data when it is a dataset folder with one, else the run's own; ponder.eval.stopping) and report it, with its accuracy/segments trade-off curve, on this split
        calibrate_target: with calibrate_halting, the validation accuracy the rule keeps: last (after every segment) or best (the best any candidate rule reaches; for models that lose accuracy when run longer than they trained)
        commit: N > 0 also runs test-time commitment (Sudoku): --segments segments per round, then the N surest blank cells become givens, until the answer checks; with --breadth K starts, the first to check wins (ponder.eval.commit)
        commit_rounds: with commit: the most rounds (default: enough to fill every cell, plus one)
        commit_restart: with commit: start each round from the initial state instead of carrying the state over
        commit_unfiltered: with commit: let a cell take any answer, not only those the task's rules still allow (Sudoku: digits no peer holds), and never stop a start on a contradiction
        branch: D > 0 also runs test-time branching (Sudoku) to depth D: an unsolved node writes each candidate digit of one blank cell in turn and the children think on, until an answer checks (ponder.eval.branch)
        branch_segments: with branch: segments each child runs from its parent's state (default: --segments)
        branch_width: with branch: the most nodes a puzzle keeps at one level (the ones whose written digits the model rated most likely)
    """
    if is_language_run(run):
        return evaluate_language(run, recurrence)
    if recurrence is not None:
        raise PonderInputError(f"--recurrence: {run} is not a language-model run; puzzle runs take --segments")
    cfg, model, device = load_trained(run)
    if split not in ("test", "val"):
        raise PonderInputError(f"--split: expected test or val, got {split!r}")
    if exit_tol is not None and not exit_tol > 0:
        raise PonderInputError(f"--exit-tol: expected a tolerance > 0, got {exit_tol}")
    if calibrate_target not in TARGETS:
        raise PonderInputError(f"--calibrate-target: expected one of {', '.join(TARGETS)}, got {calibrate_target!r}")
    if breadth < 1 or not (0 <= init_noise < math.inf and 0 <= langevin < math.inf):
        raise PonderInputError(f"--breadth >= 1, --init-noise >= 0 and --langevin >= 0 expected, got {breadth}, {init_noise}, {langevin}")
    if commit < 0 or (commit_rounds is not None and commit_rounds < 1):
        raise PonderInputError(f"--commit >= 0 and --commit-rounds >= 1 expected, got {commit} and {commit_rounds}")
    if branch < 0 or branch_width < 1 or (branch_segments is not None and branch_segments < 1):
        raise PonderInputError(f"--branch >= 0, --branch-segments >= 1 and --branch-width >= 1 expected, got {branch}, {branch_segments} and {branch_width}")
    options: dict[str, Any] = {}  # per-call model options
    if solver_iters is not None:
        if cfg.model.family != "attractor":
            raise PonderInputError(f"--solver-iters: {run} is a '{cfg.model.family}' run; only attractor runs have a solver")
        if solver_iters < 0:
            raise PonderInputError(f"--solver-iters: expected >= 0, got {solver_iters}")
        options["solver_iters"] = solver_iters
    info: dict[str, Any] = {}  # the dataset's task metadata (a Sudoku file has none)
    file_given = bool(data) and not (Path(data) / MANIFEST).is_file()
    if file_given:
        puzzles, solutions = sudoku.read_puzzles(data)
        examples, source = Split(torch.from_numpy(puzzles).long(), torch.from_numpy(solutions).long()), str(data)
        builder, shape = get_builder("sudoku"), ("Sudoku file", sudoku.VOCAB, sudoku.SIZE)
    else:
        dataset = load_dataset(Path(data)) if data else load_dataset_for(cfg.task, splits=(split,))
        if split not in dataset.splits:
            raise PonderInputError(f"{data or run}: the dataset has no '{split}' split; it has {', '.join(dataset.splits)}")
        examples, source = Split.from_arrays(dataset.splits[split]), f"{split} split of {data or run}"
        builder, info = get_builder(dataset.name), dataset.info
        shape = (f"'{dataset.name}' dataset", dataset.vocab, dataset.seq_len)
    if shape[1:] != (model.vocab, model.seq_len):
        raise PonderInputError(f"{data}: a {shape[0]} (vocab {shape[1]}, length {shape[2]}) does not fit this model (vocab {model.vocab}, length {model.seq_len})")
    ids = examples.ids if cfg.model.puzzle_embedding else None
    if cfg.model.puzzle_embedding and ids is None:
        ids = torch.zeros(len(examples), dtype=torch.long)  # unknown puzzles: identifier 0 adds nothing
    if ids is not None and int(ids.max()) >= model.embed.puzzles.num_embeddings:
        raise PonderInputError(f"{data or run}: puzzle identifiers up to {int(ids.max())}, but the model's table has {model.embed.puzzles.num_embeddings}; evaluate on the dataset it was trained with")
    n_segments = check_segments(segments, cfg.train.eval_segments)
    calibration = None
    if calibrate_halting:  # on the validation split of --data when it has one, else of the run's own data
        folder = dataset if data and not file_given and "val" in dataset.splits else load_dataset_for(cfg.task, splits=("val",))
        val = Split.from_arrays(folder.splits["val"])
        val_ids = None if ids is None else (val.ids if val.ids is not None else torch.zeros(len(val), dtype=torch.long))
        val_record = run_segments(model, val.inputs.to(device), n_segments, autocast=cfg.train.autocast, ids=val_ids, **options)
        calibration = calibrate(val_record, val.labels, target=calibrate_target)
    result = evaluate_model(
        model, examples.inputs.to(device), examples.labels.to(device), n_segments, autocast=cfg.train.autocast,
        progress=sys.stderr.isatty(), ids=ids, depths=examples.extra.get("depth"), score=scorer(builder.score, examples, info),
        exit_tol=exit_tol, calibration=calibration, **options,
    )
    if cfg.model.puzzle_embedding:  # how much of the score the puzzle identifier alone carries
        result.identifier_ablation = {
            name: ablation_scores(evaluate_model(
                model, examples.inputs.to(device), examples.labels.to(device), n_segments, autocast=cfg.train.autocast,
                ids=other, score=scorer(builder.score, examples, info, None), **options))
            for name, other in ablation_ids(ids, model.embed.puzzles.num_embeddings, cfg.train.seed).items()
        }
    extra: dict[str, Any] = {}
    calls = model.calls_per_segment
    if cfg.model.family == "attractor":
        extra["solver_iters"] = options.get("solver_iters", model.solver_iters)
        calls = model.backbone_calls + extra["solver_iters"]
    if breadth > 1:
        extra["breadth"] = evaluate_breadth(
            model, examples.inputs.to(device), examples.labels.to(device), n_segments, breadth, init_noise, langevin,
            autocast=cfg.train.autocast, ids=ids, seed=cfg.train.seed, calls_per_segment=calls, check=builder.check,
            progress=sys.stderr.isatty(), **options,
        ).to_dict()
    if commit:
        if builder.blank is None:
            raise PonderInputError(f"--commit: task '{builder.name}' has no blank cells for answers to fill; commitment is for Sudoku")
        extra["commit"] = evaluate_commit(
            model, examples.inputs.to(device), examples.labels.to(device), builder.check, builder.blank, n_segments, commit,
            commit_rounds or -(-model.seq_len // commit) + 1, breadth, init_noise, commit_restart, autocast=cfg.train.autocast,
            ids=ids, seed=cfg.train.seed, calls_per_segment=calls, candidates=None if commit_unfiltered else builder.candidates,
            progress=sys.stderr.isatty(), **options,
        ).to_dict()
    if branch:
        if builder.blank is None or builder.candidates is None:
            raise PonderInputError(f"--branch: task '{builder.name}' has no blank cells with candidate answers; branching is for Sudoku")
        extra["branch"] = evaluate_branch(
            model, examples.inputs.to(device), examples.labels.to(device), builder.check, builder.blank, builder.candidates,
            n_segments, branch_segments or n_segments, branch, branch_width, autocast=cfg.train.autocast, ids=ids,
            calls_per_segment=calls, progress=sys.stderr.isatty(), **options,
        ).to_dict()
    return {"data": source, **result.to_dict(), **extra}


def evaluate_language(run: str, recurrence: str | None = None) -> dict[str, Any]:
    """A language-model run's evaluation: validation loss (and bits per character) at
    each test-time recurrence, and for a reasoning corpus generated-answer accuracy on
    its test problems by depth."""
    from ponder.config import parse_int_list
    from ponder.lm.evaluate import answers_by_recurrence, loss_by_recurrence
    from ponder.lm.text import CharTokenizer
    from ponder.lm.train import load_text_for

    cfg, model, tokenizer, device = load_language_run(run)
    if recurrence is not None and not model.recurrent:
        raise PonderInputError(f"--recurrence: {run} is a '{cfg.model.family}' run, which has no recurrent core")
    try:
        depths = parse_int_list(recurrence or cfg.train.eval_recurrence) if model.recurrent else [None]
    except ValueError:
        raise PonderInputError(f"--recurrence: expected comma-separated integers >= 1, got {recurrence!r}") from None
    default = model.mean_r if model.recurrent else None  # the headline loss is at the model's own depth
    depths = sorted(set(depths) | {default}) if model.recurrent else depths
    text = load_text_for(cfg.task)
    val = torch.from_numpy(text.splits["val"].astype("int64")).to(device)
    tc = cfg.train
    record = loss_by_recurrence(model, val, cfg.model.context, tc.batch_size, tc.eval_batches, depths, default, isinstance(tokenizer, CharTokenizer))
    result: dict[str, Any] = {"data": f"val split of {run}", **record}
    problems = text.problems.get("test") or []
    if problems:
        result["answers"] = answers_by_recurrence(model, tokenizer, problems, depths)
    return result


def sample(
    run: str, prompt: str = "\n", max_new: int = 200, temperature: float = 0.8, top_k: int = 0, recurrence: int = 0,
    seed: int = 0, decoder: str = "autoregressive", cache: str = "auto", window: int = 4, exit_kl: float = 0.0,
    exit_latent: float = 0.0,
) -> dict[str, Any]:
    """Generate text from a language-model run (its EMA weights).

    A recurrent-lm run can decode faster (see `ponder.lm.decoding`): with a shared
    cache, per-token exit or the diffusion-forcing decoder, the prompt and the new
    tokens must fit the model's context, and the result reports the cost per token.

    Args:
        run: the run folder
        prompt: the text to continue (every character must be in the run's vocabulary); on a
            corpus of one problem per line (arithmetic, multihop) it is given after a newline
        max_new: tokens to generate
        temperature: 0 for greedy decoding
        top_k: keep the k likeliest tokens at each step (0: all)
        recurrence: core iterations per token for a recurrent model (0: its default)
        seed: the sampling seed
        decoder: autoregressive (one token per forward pass) or diffusion (the
            diffusion-forcing sampler: a window of tokens refined in parallel, one core
            iteration per pass)
        cache: per-iteration (exact; memory grows with the recurrence), shared (one entry
            per core layer: each past token's latest iteration), or auto (shared for the
            diffusion decoder, per-iteration otherwise)
        window: diffusion: the most tokens in flight
        exit_kl: stop a token's iterations once the KL divergence between two successive
            iterations' predictions is below this (0: off)
        exit_latent: stop a token's iterations once its latent changes by less than this
            fraction between two iterations (0: off)
    """
    from ponder.lm.decoding import CACHE_KINDS, METHODS

    cfg, model, tokenizer, device = load_language_run(run)
    if max_new < 1 or not 0 <= temperature < math.inf or top_k < 0 or recurrence < 0:
        raise PonderInputError(f"--max-new >= 1, --temperature >= 0, --top-k >= 0 and --recurrence >= 0 expected, got {max_new}, {temperature}, {top_k}, {recurrence}")
    if decoder not in METHODS or cache not in (*CACHE_KINDS, "auto"):
        raise PonderInputError(f"--decoder: one of {', '.join(METHODS)} and --cache: one of {', '.join(CACHE_KINDS)}, auto expected, got {decoder!r}, {cache!r}")
    if cache == "auto":
        cache = "shared" if decoder == "diffusion" else "per-iteration"
    if window < 1 or not 0 <= exit_kl < math.inf or not 0 <= exit_latent < math.inf:
        raise PonderInputError(f"--window >= 1, --exit-kl >= 0 and --exit-latent >= 0 expected, got {window}, {exit_kl}, {exit_latent}")
    if decoder == "diffusion" and cache != "shared":
        raise PonderInputError("--decoder diffusion: the diffusion-forcing sampler reads the shared cache, not --cache per-iteration")
    fast = decoder == "diffusion" or cache == "shared" or exit_kl > 0 or exit_latent > 0
    if recurrence and not model.recurrent:
        raise PonderInputError(f"--recurrence: {run} is a '{cfg.model.family}' run, which has no recurrent core")
    if fast and cfg.model.family != "recurrent-lm":
        raise PonderInputError(f"--decoder/--cache/--exit-kl/--exit-latent: fast decoding needs a recurrent-lm run; {run} is '{cfg.model.family}'")
    from ponder.lm.text import at_line_start

    if not prompt:
        raise PonderInputError("--prompt: empty; give at least one character")
    ids = tokenizer.encode(at_line_start(cfg.task.name, prompt))
    if len(ids) > model.context:
        raise PonderInputError(f"--prompt: {len(ids)} tokens, longer than the model's context of {model.context}")
    if fast and len(ids) + max_new - 1 > model.context:
        raise PonderInputError(f"--max-new: a prompt of {len(ids)} tokens and {max_new} new ones exceed the model's context of {model.context} (fast decoding does not slide the window)")
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    costs = None
    if fast:
        from ponder.lm.decoding import decode

        decoded = decode(model, idx, max_new, recurrence or None, decoder, cache, window, exit_kl, exit_latent,
                         temperature, top_k or None, generator)
        out, costs = decoded.tokens, decoded.summary()
    else:
        out = model.generate(idx, max_new, temperature=temperature, top_k=top_k or None, r=recurrence or None, generator=generator)
    new = out[0, idx.shape[1] :].tolist()
    result = {"prompt": prompt, "text": tokenizer.decode(new), "tokens": len(new), "recurrence": recurrence or getattr(model, "mean_r", None)}
    return {**result, **({"decoding": {"decoder": decoder, "cache": cache, **costs}} if costs else {})}


def probe(run: str, prompt: str, recurrence: int = 0, out: str | None = None) -> dict[str, Any]:
    """Read a recurrent language model's latent state after every iteration (logit lens and
    coda lens): the rank of the token it finally predicts and, for an arithmetic prompt,
    of each intermediate result.

    Args:
        run: a recurrent-lm or attractor-lm run folder
        prompt: the text whose last position is probed, e.g. 37+5*2= (after a newline on a
            corpus of one problem per line)
        recurrence: iterations to run and read (0: the model's default)
        out: a PNG to write the ranks to
    """
    from ponder.lm.probe import plot_probe
    from ponder.lm.probe import probe as run_probe

    cfg, model, tokenizer, device = load_language_run(run)
    if recurrence < 0:
        raise PonderInputError(f"--recurrence: expected >= 0, got {recurrence}")
    from ponder.lm.text import at_line_start

    if not prompt:
        raise PonderInputError("probe: the prompt is empty")
    result = run_probe(model, tokenizer, at_line_start(cfg.task.name, prompt), recurrence or getattr(model, "mean_r", 1))
    if out:
        try:
            plot_probe(result, Path(out))
        except OSError as e:
            raise PonderInputError(f"--out: cannot write {out} ({e.strerror or e})") from None
    return {**result.to_dict(), **({"plot": out} if out else {})}


EXAMPLE_PUZZLE = "8....9..349.8..67535....981.1..8246..24.168.96....41...46.7.398......714..3...526"  # solved when no puzzle is given


def checked_sudoku(puzzle: str) -> tuple:
    """(grid, solution count up to 2, first solution) of an 81-character puzzle ("": the
    example puzzle), or a one-line error when it is malformed or has no solution."""
    grid = sudoku.parse_puzzle(puzzle or EXAMPLE_PUZZLE, where="puzzle")
    count, solution = sudoku.solve(grid, limit=2)
    if count == 0:
        raise PonderInputError("puzzle: its givens admit no solution (checked by the exact solver); expected a solvable Sudoku")
    return grid, count, solution


def solve(puzzle: str = "", run: str = "sudoku", segments: int | None = None, exit_tol: float = 0.0) -> dict[str, Any]:
    """Solve one Sudoku (81 characters, '.' or '0' for a blank) with a trained model: the bundled one unless --run names another.

    A puzzle whose givens admit no solution is an error; one with several solutions is
    solved, said so (`unique: false`), and any of them counts as valid.

    Args:
        puzzle: 81 characters, row by row (default: an example puzzle, shown with its answer)
        run: a run folder, a model folder from 'ponder export', or a bundled model's name (default: sudoku, shipped with ponder)
        segments: most segments to think for (default: the run's train.eval_segments)
        exit_tol: also stop once the relative state change over a segment is below this (0: off)

    The run's stop rule chosen on its validation split (`calibrated_halting` in its
    results.json, written by `ponder train`) decides when to stop; a run without one
    stops when its halting head says so.
    """
    if not 0 <= exit_tol < math.inf:
        raise PonderInputError(f"--exit-tol: expected a finite value >= 0, got {exit_tol}")
    from ponder.pretrained import load

    grid, count, _ = checked_sudoku(puzzle)
    reasoner = load(run)
    model, cfg = reasoner.model, reasoner.cfg
    if (model.vocab, model.seq_len) != (sudoku.VOCAB, sudoku.SIZE):
        raise PonderInputError(f"{run}: not a Sudoku model (task '{cfg.task.name}'); 'ponder solve' takes Sudoku runs")
    n_segments = check_segments(segments, cfg.train.eval_segments)
    tokens = torch.from_numpy(grid).long()[None].to(reasoner.device)  # (1, 81)
    rule = reasoner.stop_rule
    if exit_tol > 0:
        rule = dataclasses.replace(rule, exit_tol=exit_tol)
    preds, used = run_early_exit(model, tokens, n_segments, autocast=cfg.train.autocast, ids=reasoner.puzzle_ids(1), rule=rule)
    answer, segments_used = preds[0].numpy(), int(used[0])
    valid = sudoku.is_solution(answer) and bool(((grid == 0) | (grid == answer)).all())
    return {
        "model": str(run),
        "example": not puzzle,
        "puzzle": sudoku.format_grid(grid),
        "solution": sudoku.format_grid(answer),
        "valid": valid,
        "unique": count == 1,  # a puzzle with several solutions accepts any of them
        "segments": segments_used,
        "network_calls": segments_used * model.calls_per_segment,
        "halted": segments_used < n_segments,
        "stop_rule": rule.describe(),
    }


def stop_rule_of(run: str | Path, halting: bool) -> StopRule:
    """The stop rule a run's results chose on validation, else its halting head's own
    (logit > 0; none for a run without halting)."""
    from ponder.pretrained import resolve

    chosen = ((read_results(resolve(run)) or {}).get("calibrated_halting") or {}).get("rule")
    if chosen is None:
        return StopRule(halt_threshold=0.0 if halting else None)
    try:
        return StopRule.from_dict(chosen)
    except (TypeError, ValueError) as e:
        raise PonderInputError(f"{resolve(run) / 'results.json'}: calibrated_halting.rule: {e}") from None


def trace(puzzle: str = "", run: str = "sudoku", out: str = "trace", example: int = -1, split: str = "test", segments: int | None = None) -> dict[str, Any]:
    """Draw a model thinking: an HTML page (self-contained), a PNG strip and a GIF of one example, segment by segment.

    Args:
        puzzle: a Sudoku, 81 characters (default: --example of the run's data, else the example puzzle of 'ponder solve')
        run: a run folder, a model folder or a bundled model's name (default: sudoku)
        out: the folder to write index.html, strip.png, thinking.gif and trace.json into
        example: draw example N of the run's --split instead of a puzzle (any task: Sudoku, Maze, ARC, compositional)
        split: with --example: test or val
        segments: segments to show (default: the run's train.eval_segments)
    """
    from ponder.pretrained import load
    from ponder.viz.trace import trace_data, write_gif, write_html, write_strip

    reasoner = load(run)
    if example >= 0:
        if puzzle:
            raise PonderInputError("give a puzzle or --example, not both")
        if split not in ("test", "val"):
            raise PonderInputError(f"--split: expected test or val, got {split!r}")
        rows = load_dataset_for(reasoner.cfg.task, splits=(split,)).splits[split]
        if example >= len(rows):
            raise PonderInputError(f"--example: the {split} split has {len(rows)} examples (0..{len(rows) - 1}), got {example}")
        tokens, labels, title = torch.from_numpy(rows.inputs[example].astype("int64")), torch.from_numpy(rows.labels[example].astype("int64")), f"{split} example {example}"
    else:
        if reasoner.model.seq_len != sudoku.SIZE or reasoner.model.vocab != sudoku.VOCAB:
            raise PonderInputError(f"{run}: a {reasoner.task} model; draw one of its examples with --example N")
        grid, count, solution = checked_sudoku(puzzle)
        tokens = torch.from_numpy(grid.astype("int64"))
        labels = torch.from_numpy(solution.astype("int64")) if count == 1 else None  # wrong cells are marked only against the one solution
        title = "a Sudoku" if puzzle else "the example Sudoku"
    n_segments = check_segments(segments, reasoner.cfg.train.eval_segments)
    data = trace_data(reasoner, tokens, labels, n_segments, title=f"{reasoner.cfg.model.family} thinking about {title}")
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files = [write_html(data, folder / "index.html"), write_strip(data, folder / "strip.png"), write_gif(data, folder / "thinking.gif")]
        (folder / "trace.json").write_text(json.dumps(data))
    except OSError as e:
        raise PonderInputError(f"--out: cannot write {out} ({e.strerror or e})") from None
    last = data["segments"][-1]
    return {"out": str(folder), "files": [str(f) for f in files] + [str(folder / "trace.json")], "segments": len(data["segments"]),
            "stop_segment": data["stop_segment"], "correct_by_segment": [s["correct"] for s in data["segments"]],
            "final_correct": last["correct"]}


def compare(runs: list[str], out: str = "") -> dict[str, Any]:
    """Put runs side by side: the config keys where they differ, their final results, and (with --out) their curves in one plot.

    Args:
        runs: two or more run folders
        out: a PNG to draw their training loss and validation figure into (default: none)
    """
    from ponder.viz.plots import plot_loss_curves

    if len(runs) < 2:
        raise PonderInputError(f"compare: expected two or more run folders, got {len(runs)}")
    folders = [Path(r) for r in runs]
    configs = [_flat(load_config(f).to_dict()) for f in folders]
    differ = {key: [c.get(key) for c in configs] for key in sorted(set().union(*configs)) if len({json.dumps(c.get(key)) for c in configs}) > 1}
    keys = ("exact_accuracy", "halting_accuracy", "mean_segments", "loss", "step", "train_seconds")
    results = [read_results(f) or {} for f in folders]
    table = {key: [r.get(key) for r in results] for key in keys if any(r.get(key) is not None for r in results)}
    chosen = [((r.get("calibrated_halting") or {}).get("accuracy"), (r.get("calibrated_halting") or {}).get("mean_segments")) for r in results]
    if any(a is not None for a, _ in chosen):
        table["stop_rule_accuracy"], table["stop_rule_segments"] = [a for a, _ in chosen], [m for _, m in chosen]
    out_path = None
    if out:
        curves, language = {}, False
        for f in folders:
            log = read_log(f)
            val = [r for r in log if r.get("event") == "val"]
            language = language or any("exact_accuracy" not in r and "loss" in r for r in val)
            curves[str(f)] = {"train": [[r["step"], r["loss"]] for r in log if r.get("event") == "train" and isinstance(r.get("loss"), (int, float))],
                              "val": [[r["step"], r["loss"] if language else r.get("exact_accuracy")] for r in val]}
        try:
            out_path = str(plot_loss_curves(curves, out, val_label="validation loss" if language else "validation exact accuracy"))
        except OSError as e:
            raise PonderInputError(f"--out: cannot write {out} ({e.strerror or e})") from None
    return {"runs": [str(f) for f in folders], "config_differences": differ, "results": table, "plot": out_path}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def export(run: str, *, out: str, command: str = "") -> dict[str, Any]:
    """Write a trained run as a model folder to hand over: config.json, model.safetensors (EMA weights), results.json and a model card.

    Args:
        run: the run folder (finished: it has a test result)
        out: the folder to write (must not exist or be empty)
        command: the command that trained the run, for the model card (default: ponder train --config config.json, which repeats it)
    """
    from ponder.pretrained import export as export_folder

    if is_language_run(run):
        raise PonderInputError(f"{run}: a language-model run; 'ponder export' takes puzzle runs (language runs are used from their run folder)")
    return export_folder(run, out, command)


def bench_solvers(
    lengths: str = "1000,10000,100000", sizes: str = "4,16,64", methods: str = "quasi_deer,deer,elk", cells: str = "diag_gru,gru",
    dtype: str = "float32", device: str = "cpu", batch: int = 1, repeats: int = 3, threads: int = 0,
    baselines: str = "eager", compile: bool = False, progress: bool = True,
) -> list[dict[str, Any]]:
    """Time Newton-in-time solvers (DEER, quasi-DEER, ELK; parallel over T) against sequential loops.

    Args:
        lengths: sequence lengths T, comma-separated
        sizes: hidden sizes, comma-separated (D in the rows is the state size: 2 x hidden for LSTMs)
        methods: comma-separated, from deer, quasi_deer, elk, quasi_elk
        cells: comma-separated, from gru, lstm, diag_gru, diag_lstm (diag_*: ParaRNN-style diagonal recurrence)
        dtype: float32 or float64
        device: cpu, cuda, cuda:1, mps, ...
        batch: sequences per call
        repeats: timed calls per setting; the best is kept
        threads: CPU threads for torch (0: torch's default); on a shared machine, the cores actually free
        baselines: comma-separated sequential loops to time, from eager (the Python loop, always), compiled (one torch.compile'd scan), torch (torch.nn.GRU, gru only)
        compile: also time each method's compiled Newton path (run_parallel(..., compile=True))
    """
    from ponder.solvers import CELLS, NEWTON_METHODS, benchmark
    from ponder.solvers.bench_time import BASELINES

    def ints(text: str, flag: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise PonderInputError(f"--{flag}: expected comma-separated positive integers, got {text!r}")
        return values

    def names(text: str, flag: str, allowed) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if not values or bad:
            raise PonderInputError(f"--{flag}: expected comma-separated names from {', '.join(allowed)}, got {text!r}")
        return values

    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in dtypes:
        raise PonderInputError(f"--dtype: expected float32 or float64, got {dtype!r}")
    if batch < 1 or repeats < 1 or threads < 0:
        raise PonderInputError(f"--batch and --repeats >= 1 and --threads >= 0 expected, got {batch}, {repeats}, {threads}")
    with process_settings(threads):
        return benchmark(
            lengths=ints(lengths, "lengths"), sizes=ints(sizes, "sizes"), methods=names(methods, "methods", NEWTON_METHODS),
            cell=names(cells, "cells", tuple(CELLS)), dtype=dtypes[dtype], device=pick_device(device), batch=batch, repeats=repeats,
            progress=progress, baselines=names(baselines, "baselines", BASELINES), compile=compile,
        )


def presets() -> list[dict[str, Any]]:
    """The shipped presets: name, trainable parameters (without any puzzle embedding
    table), the table's parameters (an upper bound for ARC, whose symmetric task
    versions are dropped at build time), the training budget in example-segments (a
    language model's: tokens) and FLOP (refill batching: steps x batch; shrinking: at
    most steps x batch x max_segments, less as examples halt), and a one-line description."""
    from ponder.lm.text import TEXT_TASKS
    from ponder.lm.train import build_language_model, is_language_model, lm_flops_per_token
    from ponder.models.flops import segment_flops

    rows = []
    for name in preset_names():
        cfg = build_config(preset=name)
        raw = load_yaml(preset_path(name))
        tc = cfg.train
        if is_language_model(cfg.model.family):  # a budget in tokens; the vocabulary of the task's tokenizer, roughly
            vocab = TEXT_TASKS[cfg.task.name].vocab_hint
            model = build_language_model(cfg.model, vocab)
            units = tc.steps * tc.batch_size * cfg.model.context
            row = {"params": sum(p.numel() for p in model.parameters()), "embedding_params": 0, "batching": "windows",
                   "example_segments": units, "unit": "tokens",
                   "train_flops": units * lm_flops_per_token(model, cfg.model.context, getattr(model, "mean_r", None) if model.recurrent else None),
                   "budget_is_bound": False}
        else:
            # The puzzle table can hold hundreds of millions of numbers: count it, don't build it.
            model = model_for_task(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, puzzle_embedding=False)))
            builder = get_builder(cfg.task.name)
            refill = tc.batching == "refill"
            units = tc.steps * tc.batch_size * (1 if refill else tc.max_segments)
            row = {"params": count_params(model), "embedding_params": preset_puzzles(cfg) * cfg.model.hidden, "batching": tc.batching,
                   "example_segments": units, "unit": "example_segments",
                   "train_flops": units * segment_flops(cfg.model, builder.vocab, builder.seq_len, training=True).train,
                   "budget_is_bound": not refill}
        rows.append({"name": name, **row, "description": str(raw.get("description", ""))})
    return rows


def data_build(name: str, overrides: list[str] | None = None, *, out: str, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Build a dataset folder (data.safetensors + manifest.json), seeded and deterministic.

    Args:
        name: the task (see 'ponder data list')
        out: the folder to write (must not exist or be empty)
        overrides: task keys as key=value, e.g. test_size=500 augmentations=100
        seed: data seed
    """
    import time

    from ponder.tasks.builders import build
    from ponder.tasks.dataset import save_dataset

    if not out:
        raise PonderInputError("--out: empty; expected the folder to write")
    out_dir = Path(out)
    if holds_work(out_dir) or (out_dir.exists() and not out_dir.is_dir()):  # checked before the lock touches the folder
        raise PonderInputError(f"{out_dir}: exists and is not an empty folder; choose another --out")
    values = {"task.name": name, "task.seed": seed, **{_task_key(k): v for k, v in parse_overrides(list(overrides or [])).items()}}
    cfg = apply_values(RunConfig(), values, "override")  # task defaults, not a preset's
    with FolderLock(out_dir, "dataset folder"):  # one builder per folder
        if holds_work(out_dir):
            raise PonderInputError(f"{out_dir}: exists and is not an empty folder; choose another --out")
        start = time.time()
        if is_text_task(name):
            from ponder.lm.text import build_text, save_text
            from ponder.lm.train import text_options

            manifest = save_text(build_text(name, text_options(cfg.task), seed=seed, progress=progress), out_dir)
            counts = {k: int(v) for k, v in manifest.get("tokens", {}).items()}
            return {"out": str(out_dir), "seconds": round(time.time() - start, 1), "counts": counts, "unit": "tokens", **manifest}
        dataset = build(cfg.task, progress=progress)
        manifest = save_dataset(dataset, out_dir)
        return {"out": str(out_dir), "seconds": round(time.time() - start, 1), **manifest}


def data_show(data: str, split: str = "train", n: int = 3) -> dict[str, Any]:
    """Print a few examples of a dataset folder as grids.

    Args:
        data: a folder written by 'ponder data build'
        split: which split
        n: how many examples
    """
    if n < 0:
        raise PonderInputError(f"-n: expected a count >= 0, got {n}")
    if is_text_folder(Path(data)):
        from ponder.lm.text import load_text

        text = load_text(Path(data))
        if split not in text.splits:
            raise PonderInputError(f"{data}: no '{split}' split; it has {', '.join(text.splits)}")
        tokens = text.splits[split]
        problems = text.problems.get(split) or []
        examples = [f"{p.prompt}{p.answer}   (depth {p.depth})" for p in problems[:n]] or [text.tokenizer.decode(tokens[: 200 * n])]
        return {"data": str(data), "name": text.name, "split": split, "count": int(tokens.size), "counts": {k: int(v.size) for k, v in text.splits.items()}, "examples": examples}
    dataset = load_dataset(Path(data))
    if split not in dataset.splits:
        raise PonderInputError(f"{data}: no '{split}' split; it has {', '.join(dataset.splits)}")
    part = dataset.splits[split]
    render = get_builder(dataset.name).render
    examples = [render(part.inputs[i], part.labels[i]) for i in range(min(n, len(part)))]
    return {"data": str(data), "name": dataset.name, "split": split, "count": len(part), "counts": {k: len(v) for k, v in dataset.splits.items()}, "examples": examples}


def data_list() -> list[dict[str, Any]]:
    """The tasks that 'ponder data build' and task.name accept."""
    from ponder.lm.text import TEXT_TASKS
    from ponder.tasks.builders import BUILDERS

    puzzles = [{"name": b.name, "raw": list(b.raw), "keys": list(b.keys), "defaults": b.defaults, "description": b.description} for b in BUILDERS.values()]
    texts = [{"name": t.name, "raw": ["text"] if "text_file" in t.options else [], "keys": list(t.options), "defaults": t.options,
              "description": t.description} for t in TEXT_TASKS.values()]
    return puzzles + texts


# ------------------------------------------------------------------------------ helpers

def _task_key(key: str) -> str:
    """'test_size' or 'task.test_size' -> 'task.test_size'; other sections are refused."""
    if "." in key and not key.startswith("task."):
        raise PonderInputError(f"override '{key}': 'ponder data build' takes task keys only (e.g. test_size=500)")
    return key if key.startswith("task.") else f"task.{key}"

def is_language_run(run: str | Path) -> bool:
    from ponder.lm.models import LM_FAMILIES

    from ponder.pretrained import resolve

    return load_config(resolve(run)).model.family in LM_FAMILIES


def load_language_run(run: str | Path):
    """(config, model with EMA weights in eval mode, tokenizer, device) of a
    language-model run folder."""
    from ponder.lm.text import tokenizer_from_dict
    from ponder.lm.train import build_language_model

    run_dir = Path(run)
    cfg = load_config(run_dir)
    tensors, meta = read_checkpoint(run_dir / CHECKPOINT)
    check_config_matches(cfg, meta, run_dir / CHECKPOINT)
    shape = meta.get("task_shape", {})
    if "tokenizer" not in shape:
        raise PonderInputError(f"{run_dir / CHECKPOINT}: not a language-model checkpoint (no tokenizer in its metadata)")
    device = pick_device(cfg.train.device)
    model = build_language_model(cfg.model, int(shape["vocab"]), shape.get("lm_args"))
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    load_weights(model, tensors, prefix, run_dir / CHECKPOINT)
    return cfg, model.to(device).eval(), tokenizer_from_dict(shape["tokenizer"]), device


def is_text_task(name: str) -> bool:
    from ponder.lm.text import TEXT_TASKS

    return name in TEXT_TASKS


def is_text_folder(folder: Path) -> bool:
    """A folder written by `ponder data build` for a text task (its manifest says so)."""
    import json

    from ponder.lm.text import FORMAT

    try:
        manifest = json.loads((folder / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def load_trained(run: str | Path):
    """(config, model with EMA weights in eval mode, device) from a run folder, a model
    folder (`ponder export`) or a bundled model's name."""
    from ponder.pretrained import WEIGHTS, is_model_folder, read_weights, resolve

    run_dir = resolve(run)
    cfg = load_config(run_dir)
    device = pick_device(cfg.train.device)
    if is_model_folder(run_dir):
        tensors, meta = read_weights(run_dir / WEIGHTS)
        model = model_for_task(cfg, num_puzzles=int(meta.get("num_puzzles", 0)))
        load_weights(model, tensors, "", run_dir / WEIGHTS)
        return cfg, model.to(device).eval(), device
    tensors, meta = read_checkpoint(run_dir / CHECKPOINT)
    check_config_matches(cfg, meta, run_dir / CHECKPOINT)
    model = model_for_task(cfg, num_puzzles=int(meta.get("task_shape", {}).get("num_puzzles", 0)))
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    load_weights(model, tensors, prefix, run_dir / CHECKPOINT)
    return cfg, model.to(device).eval(), device


def model_for_task(cfg, num_puzzles: int = 0):
    """An untrained model of the config's family for its task's shape."""
    builder = get_builder(cfg.task.name)
    mask = builder.attention_mask() if builder.attention_mask else None
    return build_model(cfg.model, builder.vocab, builder.seq_len, mask, num_puzzles)


def preset_puzzles(cfg) -> int:
    """Size of a preset's puzzle table, known before building its data (0 if none)."""
    if not cfg.model.puzzle_embedding:
        return 0
    builder = get_builder(cfg.task.name)
    if builder.puzzle_count is None:
        raise PonderInputError(f"task '{cfg.task.name}' has no puzzle identifiers for model.puzzle_embedding")
    return builder.puzzle_count(builder.resolve(cfg.task))


def check_segments(segments: int | None, default: int) -> int:
    if segments is None:
        return default
    if segments < 1:
        raise PonderInputError(f"--segments: expected an integer >= 1, got {segments}")
    return segments


def _new_run_dir(tag: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{tag}-{stamp}"
    k = 1
    while path.exists():
        k += 1
        path = Path("runs") / f"{tag}-{stamp}-{k}"
    return path
