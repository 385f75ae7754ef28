"""Dataset building: canonical Sudoku forms, offline augmentation, the dataset folder
format, the builder registry and `ponder data` on tiny fixtures (no ../shared needed)."""

import json
import subprocess

import numpy as np
import pytest
import torch

from ponder.config import RunConfig, TaskConfig
from ponder.errors import PonderInputError
from ponder.tasks import load_task, sudoku
from ponder.tasks.builders import BUILDERS, augment_copies, build, get_builder
from ponder.tasks.dataset import DATA_FILE, MANIFEST, load_dataset, save_dataset


def test_task_names_come_from_the_builders():
    from ponder.registry import check_names, name_choices

    from ponder.lm.text import TEXT_TASKS

    assert name_choices()["task.name"] == tuple(BUILDERS) + tuple(TEXT_TASKS)
    cfg = RunConfig()
    cfg.task.name = "chess"
    with pytest.raises(PonderInputError, match="config key 'task.name': expected one of sudoku"):
        check_names(cfg)


def test_canonical_form_is_invariant_under_the_group_and_separates_puzzles():
    puzzles, solutions = sudoku.generate(12, 45, seed=3)
    rng = np.random.default_rng(0)
    forms = [sudoku.canonical_form(p, s) for p, s in zip(puzzles, solutions)]
    assert len(set(forms)) == len(forms)  # different random puzzles are not equivalent
    for p, s, form in zip(puzzles, solutions, forms):
        for _ in range(3):
            g = sudoku.Symmetry.random(rng)
            assert sudoku.canonical_form(g.apply(p), g.apply(s)) == form
    # One more given makes a different puzzle with the same solution.
    p, s = puzzles[0].copy(), solutions[0]
    blank = int(np.flatnonzero(p == 0)[0])
    p[blank] = s[blank]
    assert sudoku.canonical_form(p, s) != forms[0]
    # The form is itself a puzzle of the same class: its canonical form is itself.
    grid = np.array([0 if c == "." else int(c) for c in forms[1]])
    count, solution = sudoku.solve(grid)
    assert count == 1 and sudoku.canonical_form(grid, solution) == forms[1]


def test_offline_augmentation_keeps_puzzles_valid():
    puzzles, solutions = sudoku.generate(3, 40, seed=1)
    p, s, ids = augment_copies(puzzles, solutions, copies=4, seed=0)
    assert p.shape == (15, 81) and ids.tolist() == [1] * 5 + [2] * 5 + [3] * 5
    assert np.array_equal(p[0], puzzles[0]) and np.array_equal(s[5], solutions[1])  # copy 0 is the original
    assert sudoku.valid_solutions(torch.from_numpy(s).long()).all()
    assert (((p == 0) | (p == s))).all() and ((p == 0).sum(1) == 40).all()
    assert len({row.tobytes() for row in p}) == 15
    assert np.array_equal(augment_copies(puzzles, solutions, 4, 0)[0], p)


def test_dataset_folder_round_trip_and_corruption(tmp_path):
    cfg = TaskConfig(train_size=20, val_size=4, test_size=4, blanks=30)
    data = build(cfg)
    manifest = save_dataset(data, tmp_path / "a")
    save_dataset(build(cfg), tmp_path / "b")
    assert (tmp_path / "a" / DATA_FILE).read_bytes() == (tmp_path / "b" / DATA_FILE).read_bytes()
    assert manifest["counts"] == {"train": 20, "val": 4, "test": 4}
    assert manifest["spec"]["seed"] == 0 and manifest["spec"]["train_size"] == 20
    back = load_dataset(tmp_path / "a")
    assert np.array_equal(back.splits["train"].inputs, data.splits["train"].inputs)
    task = load_task(TaskConfig(data_dir=str(tmp_path / "a")))
    assert task.train.inputs.dtype == torch.int64 and len(task.test) == 4
    with pytest.raises(PonderInputError, match="holds a 'sudoku' dataset"):
        load_task(TaskConfig(name="graph-reach", data_dir=str(tmp_path / "a")))
    # A changed byte is caught by the manifest's hash; a missing manifest is named.
    raw = bytearray((tmp_path / "a" / DATA_FILE).read_bytes())
    raw[-1] ^= 1
    (tmp_path / "a" / DATA_FILE).write_bytes(bytes(raw))
    with pytest.raises(PonderInputError, match="SHA-256"):
        load_dataset(tmp_path / "a")
    (tmp_path / "b" / MANIFEST).unlink()
    with pytest.raises(PonderInputError, match="not a dataset folder"):
        load_dataset(tmp_path / "b")


def test_builders_refuse_keys_they_do_not_read():
    with pytest.raises(PonderInputError, match="task.blanks.*not used by task 'sudoku-hard-test'"):
        get_builder("sudoku-hard-test").resolve(TaskConfig(name="sudoku-hard-test", blanks=30))
    resolved = get_builder("sudoku").resolve(TaskConfig(val_size=7))
    assert (resolved.train_size, resolved.val_size, resolved.test_size) == (10000, 7, 1000)


def test_missing_benchmark_folder_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PONDER_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(PonderInputError, match="PONDER_DATA=.*no such folder"):
        build(TaskConfig(name="sudoku-extreme-1k"))
    monkeypatch.setenv("PONDER_DATA", str(tmp_path))
    with pytest.raises(PonderInputError, match="sudoku-extreme-1k.*not found"):
        build(TaskConfig(name="sudoku-extreme-1k"))
    from ponder.tasks import builders

    monkeypatch.delenv("PONDER_DATA")  # and no ../shared/data beside the working folder or the source tree
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builders, "__file__", str(tmp_path / "src" / "ponder" / "tasks" / "builders.py"))
    with pytest.raises(PonderInputError, match=rf"PONDER_DATA is not set and there is no {tmp_path.parent}/shared/data nor"):
        build(TaskConfig(name="sudoku-extreme-1k"))


def test_sudoku_extreme_drops_held_out_puzzles_equivalent_to_training(fake_benchmarks):
    train_p, train_s = fake_benchmarks
    data = build(TaskConfig(name="sudoku-extreme-1k", val_size=4, test_size=8, augmentations=2))
    assert len(data.splits["train"]) == 6 * 3 and data.splits["train"].extra["ids"].max() == 6
    assert sum(data.info["held_out_skipped"].values()) <= 2
    train_forms = {sudoku.canonical_form(p, s) for p, s in zip(train_p, train_s)}
    held = [data.splits[k] for k in ("val", "test")]
    held_forms = [sudoku.canonical_form(p, s) for split in held for p, s in zip(split.inputs, split.labels)]
    assert not train_forms & set(held_forms) and len(set(held_forms)) == 12
    assert all(sudoku.valid_solutions(torch.from_numpy(split.labels).long()).all() for split in held)
    # The stand-alone test set is the same sample.
    alone = build(TaskConfig(name="sudoku-hard-test", test_size=8))
    assert np.array_equal(alone.splits["test"].inputs, data.splits["test"].inputs) and list(alone.splits) == ["test"]
    val_alone = build(TaskConfig(name="sudoku-extreme-1k", val_size=4, test_size=8), splits=("val",))
    assert list(val_alone.splits) == ["val"] and np.array_equal(val_alone.splits["val"].inputs, data.splits["val"].inputs)
    # 12 of the 14 puzzles are distinct from training: asking for 13 must fail, not leak.
    with pytest.raises(PonderInputError, match="only 12 distinct puzzles left"):
        build(TaskConfig(name="sudoku-hard-test", test_size=13))


def test_data_cli_build_show_and_errors(ponder_cmd, tmp_path):
    out = tmp_path / "d"
    run = subprocess.run(ponder_cmd + ["data", "build", "sudoku", "--out", str(out), "train_size=8", "val_size=2", "test_size=2", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["counts"] == {"train": 8, "val": 2, "test": 2} and len(result["sha256"]) == 64
    shown = subprocess.run(ponder_cmd + ["data", "show", str(out), "-n", "1"], capture_output=True, text=True)
    assert shown.returncode == 0 and "------+-------+------" in shown.stdout
    for args, message in [
        (["data", "build", "sudoku", "--out", str(out)], "exists and is not an empty folder"),
        (["data", "build", "sudoku", "--out", str(tmp_path / "e"), "bogus=1"], "unknown config key 'task.bogus'"),
        (["data", "build", "nosuch", "--out", str(tmp_path / "e")], "config key 'task.name': expected one of"),
        (["data", "show", str(tmp_path)], "not a dataset folder"),
    ]:
        bad = subprocess.run(ponder_cmd + args, capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert not (tmp_path / "e").exists()


def test_puzzle_embedding_trains_only_seen_rows_by_sign_sgd(fake_benchmarks, tmp_path):
    """HRM's per-puzzle vectors: ids 1..6 (one per training puzzle) are looked up in
    training and move; id 0, which the held-out puzzles use, stays zero."""
    from ponder import api
    from ponder.train.checkpoint import read_checkpoint

    overrides = ["model.hidden=16", "model.heads=2", "model.layers=1", "model.latent_steps=1", "model.cycles=1", "model.puzzle_embedding=true",
                 "task.name=sudoku-extreme-1k", "task.val_size=2", "task.test_size=2", "task.augmentations=1", "train.steps=3",
                 "train.batch_size=4", "train.max_segments=2", "train.eval_segments=2", "train.lr_warmup=1", "train.ema=0"]
    result = api.train(overrides, out=str(tmp_path / "run"), progress=False)
    assert result["n"] == 2
    tensors, meta = read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    table = tensors["model.embed.puzzles.weight"]  # (7, 16)
    assert meta["task_shape"]["num_puzzles"] == 7 and table.shape == (7, 16)
    assert (table[0] == 0).all() and (table[1:].abs().sum(dim=1) > 0).sum() >= 3
    assert api.evaluate(str(tmp_path / "run"), segments=1)["n"] == 2  # held-out rows use id 0


def test_arc_and_maze_runs_report_their_own_scores(fake_benchmarks, tmp_path):
    """An ARC run votes over augmented versions and reports pass@k under both rules,
    says whether evaluation demonstrations were trained on, and writes submission.json;
    a maze run counts any shortest path."""
    from ponder import api

    small = ["model.hidden=16", "model.heads=2", "model.layers=1", "model.latent_steps=1", "model.cycles=1", "train.steps=2",
             "train.batch_size=4", "train.max_segments=1", "train.eval_segments=1", "train.lr_warmup=1"]
    result = api.train(small + ["task.augmentations=3", "task.concept_arc=false"], preset="trm-arc-agi-1", out=str(tmp_path / "arc"), progress=False)
    metrics = result["task_metrics"]
    assert metrics["trained_on_eval_demonstrations"] is True and metrics["test_inputs"] == 2
    assert set(metrics["pass@1"]) == {"task", "input", "tasks"} and metrics["pass@1"]["tasks"] == 2
    submission = json.loads((tmp_path / "arc" / "submission.json").read_text())
    assert sorted(submission) == ["1e0", "1e1"] and set(submission["1e0"][0]) == {"attempt_1", "attempt_2"}
    ablation = result["identifier_ablation"]  # the scores with a blank and a random puzzle identifier
    assert set(ablation) == {"blank", "random"} and all(set(a["task_metrics"]["pass@1"]) == {"task", "input", "tasks"} for a in ablation.values())
    assert all(0 <= a["cell_accuracy"] <= 1 for a in ablation.values())
    assert json.loads((tmp_path / "arc" / "submission.json").read_text()) == submission  # the ablations write no submission
    evaluated = api.evaluate(str(tmp_path / "arc"), segments=1)
    assert evaluated["identifier_ablation"] == ablation
    assert evaluated["task_metrics"] == {k: v for k, v in metrics.items() if k != "submission"}  # eval writes no submission
    held_out = api.train(small + ["task.augmentations=3", "task.concept_arc=false", "task.eval_demos=false"], preset="trm-arc-agi-1",
                         out=str(tmp_path / "arc-held-out"), progress=False)
    assert held_out["task_metrics"]["trained_on_eval_demonstrations"] is False and "identifier_ablation" in held_out
    maze_run = api.train(small + ["task.val_size=2"], preset="trm-maze-hard", out=str(tmp_path / "maze"), progress=False)
    assert 0 <= maze_run["task_metrics"]["valid_path_accuracy"] <= 1 and maze_run["n"] == 4
    assert api.evaluate(str(tmp_path / "maze"), segments=1)["task_metrics"] == maze_run["task_metrics"]
    any_path = api.train(small + ["task.val_size=2", "train.loss_target=nearest"], preset="trm-maze-hard", out=str(tmp_path / "maze-any"), progress=False)
    assert 0 <= any_path["task_metrics"]["valid_path_accuracy"] <= 1
    puzzles = tmp_path / "p.txt"
    puzzles.write_text(sudoku.format_grid(fake_benchmarks[0][0]) + "\n")
    with pytest.raises(PonderInputError, match="a Sudoku file .* does not fit this model"):
        api.evaluate(str(tmp_path / "maze"), data=str(puzzles))


def test_accuracy_by_depth_matches_a_direct_count():
    from ponder.eval.evaluate import evaluate
    from ponder.models import TRM
    from ponder.train.losses import answer_correct

    torch.manual_seed(0)
    model = TRM(vocab=5, seq_len=6, hidden=16, heads=2, layers=1)
    inputs = torch.randint(0, 5, (12, 6))
    labels = inputs.clone()
    labels[:, :2] = -100  # unscored
    depths = torch.tensor([1, 2, 3] * 4)
    result = evaluate(model, inputs, labels, segments=2, depths=depths)
    preds = model(inputs).logits.argmax(-1)  # segment 1 from the initial state
    for d in (1, 2, 3):
        rows = depths == d
        assert result.accuracy_by_depth[str(d)][0] == pytest.approx(float(answer_correct(preds[rows], labels[rows]).float().mean()))
    assert set(result.cell_accuracy_by_depth) == {"1", "2", "3"}


def test_ablation_identifiers_are_blank_or_random_learned_rows():
    from ponder.eval.evaluate import ablation_ids

    ids = torch.arange(1, 41)
    swapped = ablation_ids(ids, table_size=50, seed=3)
    assert torch.equal(swapped["blank"], torch.zeros_like(ids))
    random = swapped["random"]
    assert random.dtype == ids.dtype and 1 <= int(random.min()) and int(random.max()) < 50 and not torch.equal(random, ids)
    assert torch.equal(random, ablation_ids(ids, table_size=50, seed=3)["random"])  # seeded
    assert torch.equal(ablation_ids(ids, table_size=1)["random"], torch.zeros_like(ids))  # no learned rows: blank
