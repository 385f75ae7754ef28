"""Generated puzzles up to minimal ones, their difficulty, and the curriculum that
trains the easiest first."""

import random

import numpy as np
import pytest
import torch

from conftest import TINY
from ponder import api
from ponder.config import TaskConfig
from ponder.errors import PonderInputError
from ponder.tasks import Split, sudoku
from ponder.tasks.builders import build
from ponder.train.stream import ExampleStream

HARD = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."  # a published "hardest" puzzle


def test_minimal_ok_returns_a_minimal_puzzle():
    puzzle, solution = sudoku.generate_puzzle(random.Random(5), 64, minimal_ok=True)
    assert sudoku.solve(puzzle)[0] == 1 and ((puzzle == 0) | (puzzle == solution)).all()
    for i in np.flatnonzero(puzzle):  # every given is needed
        fewer = puzzle.copy()
        fewer[i] = 0
        assert sudoku.solve(fewer, limit=2)[0] == 2


def test_spread_of_blanks_reaches_minimal_puzzles_and_is_seeded():
    puzzles, solutions = sudoku.generate(12, 40, seed=1, max_blanks=64)
    blanks = (puzzles == 0).sum(1)
    assert blanks.min() >= 40 and blanks.max() < 64 and len(set(blanks.tolist())) > 3
    for p, s in zip(puzzles, solutions):
        count, found = sudoku.solve(p)
        assert count == 1 and (found == s).all()
    again = sudoku.generate(12, 40, seed=1, max_blanks=64)
    assert (again[0] == puzzles).all() and (again[1] == solutions).all()
    with pytest.raises(PonderInputError, match="max_blanks"):
        sudoku.generate(2, 40, seed=1, max_blanks=30)


def test_guesses_measure_search():
    solution = sudoku.solve(sudoku.parse_puzzle(HARD))[1]
    one_blank = solution.copy()
    one_blank[0] = 0
    assert sudoku.guesses(one_blank) == 0 and sudoku.difficulty(one_blank) == 1
    hard = sudoku.parse_puzzle(HARD)
    assert sudoku.guesses(hard) > 10
    assert sudoku.difficulty(hard) == 60 + sudoku.guesses(hard)
    stats = {}
    assert sudoku.solve(hard, limit=2, stats=stats)[0] == 1 and stats["guesses"] >= sudoku.guesses(hard)


def test_harden_keeps_the_answer_and_climbs_toward_more_search():
    puzzles, solutions = sudoku.generate(4, 40, seed=2, max_blanks=64)
    grew = 0
    for k, (p, s) in enumerate(zip(puzzles, solutions)):
        hard = sudoku.harden(p, s, random.Random(k), steps=60)
        count, found = sudoku.solve(hard, limit=2)
        assert count == 1 and (found == s).all()  # still unique, the same answer
        assert sudoku.search_size(hard)[1] >= sudoku.search_size(p)[1]
        assert (sudoku.harden(p, s, random.Random(k), steps=60) == hard).all()  # seeded
        grew += sudoku.search_size(hard)[1] > sudoku.search_size(p)[1]
    assert grew >= 2


def test_hardened_splits_do_not_depend_on_the_worker_count():
    from ponder.tasks.builders import generate_sudoku

    one = generate_sudoku(5, 40, 0, "train", workers=1, max_blanks=64, harden_steps=10)
    two = generate_sudoku(5, 40, 0, "train", workers=2, max_blanks=64, harden_steps=10)
    plain = generate_sudoku(5, 40, 0, "train", workers=1, max_blanks=64)
    assert all((a == b).all() for a, b in zip(one, two))
    assert (one[1] == plain[1]).all() and not (one[0] == plain[0]).all()  # same solutions, other puzzles
    assert one[2].tolist() == [sudoku.difficulty(p) for p in one[0]]
    assert generate_sudoku(3, 40, 0, "train", workers=1, harden_steps=5)[2] is not None  # a difficulty for the curriculum


def test_builder_orders_by_difficulty_and_reads_a_val_file(tmp_path):
    file = tmp_path / "val.txt"
    file.write_text(HARD + "\n")
    data = build(TaskConfig(name="sudoku", max_blanks=64, train_size=6, val_size=3, test_size=2, val_file=str(file)))
    train = data.splits["train"]
    assert train.extra["difficulty"].tolist() == [sudoku.difficulty(p) for p in train.inputs]
    assert sudoku.format_grid(data.splits["val"].inputs[0]) == HARD.replace(".", ".")
    assert "difficulty" not in build(TaskConfig(name="sudoku", train_size=2, val_size=1, test_size=1)).splits["train"].extra
    with pytest.raises(PonderInputError, match="task.max_blanks.*not used by task 'maze-hard'"):
        build(TaskConfig(name="maze-hard", max_blanks=60))


def _stream(n: int, curriculum: int, start: float = 0.25) -> ExampleStream:
    inputs = torch.arange(n)[:, None].repeat(1, 3)  # row i holds i
    difficulty = torch.tensor([(7 * i) % n for i in range(n)])  # a scrambled order
    split = Split(inputs, inputs.clone(), extra={"difficulty": difficulty})
    return ExampleStream(split, seed=3, device=torch.device("cpu"), curriculum_examples=curriculum, curriculum_start=start)


def test_curriculum_draws_the_easiest_then_hands_over_to_epochs():
    n, P = 40, 400
    stream, plain = _stream(n, P), _stream(n, 0)
    positions = torch.arange(0, 2 * P)
    drawn = stream.fetch(positions, 0, 2 * P)[0][:, 0]  # (2P,) example index per position
    rank = torch.empty(n, dtype=torch.long)
    rank[stream.easiest_first] = torch.arange(n)  # 0 = easiest
    pool = [np.ceil(n * (0.25 + 0.75 * p / P)) for p in range(P)]  # easiest examples open at position p
    assert all(rank[drawn[p]] < pool[p] for p in range(P))
    assert rank[drawn[: P // 4]].max() < n / 2 and rank[drawn[P - 40 : P]].max() > n / 2  # the hard ones come late
    assert torch.equal(drawn[P:], plain.fetch(positions[P:], P, 2 * P)[0][:, 0])  # epochs after P
    assert torch.equal(stream.fetch(positions[5:9], 5, 9)[0][:, 0], drawn[5:9])  # a function of the position alone


def test_curriculum_needs_a_difficulty(tmp_path):
    with pytest.raises(PonderInputError, match="train.curriculum_examples.*no difficulty"):
        api.train(TINY + ["train.steps=1", "train.curriculum_examples=10"], out=str(tmp_path / "run"), progress=False)


def test_curriculum_run_trains(tmp_path):
    result = api.train(TINY + ["train.steps=3", "task.max_blanks=64", "train.curriculum_examples=64"], out=str(tmp_path / "run"), progress=False)
    assert 0 <= result["exact_accuracy"] <= 1


def test_the_dataset_cache_sees_a_changed_val_file(tmp_path):
    from ponder.tasks import load_dataset_for

    file = tmp_path / "val.txt"
    file.write_text(HARD + "\n")
    cfg = TaskConfig(name="sudoku", train_size=4, val_size=1, test_size=2, val_file=str(file))
    first = load_dataset_for(cfg).splits["val"].inputs
    other = sudoku.format_grid(sudoku.generate(1, 30, seed=4)[0][0])
    file.write_text(other + "\n" + other + "\n")
    second = load_dataset_for(cfg).splits["val"].inputs
    assert len(first) == 1 and len(second) == 2 and sudoku.format_grid(second[0]) == other


def test_the_dataset_cache_is_rebuilt_when_the_task_code_changes(monkeypatch, tmp_path):
    import ponder.tasks as tasks

    monkeypatch.setenv("PONDER_CACHE", str(tmp_path))  # empty, whatever other test processes built

    cfg = TaskConfig(name="sudoku", train_size=4, val_size=1, test_size=2, seed=7)
    calls = []
    real_build = __import__("ponder.tasks.builders", fromlist=["build"]).build
    monkeypatch.setattr("ponder.tasks.builders.build", lambda *a, **k: calls.append(1) or real_build(*a, **k))
    tasks.load_dataset_for(cfg)
    tasks.load_dataset_for(cfg)
    assert len(calls) == 1  # the second load read the cache
    monkeypatch.setattr(tasks, "code_fingerprint", lambda: "another generator")
    tasks.load_dataset_for(cfg)
    assert len(calls) == 2  # a changed generator builds again


def test_difficulty_table_reads_the_runs_own_training_puzzles(tmp_path):
    """`benchmarks/hard_sudoku.py difficulty` quotes the difficulty stored in the run's
    dataset (hardened puzzles are not generated a second time)."""
    import sys

    from conftest import ROOT
    from ponder.tasks import load_dataset_for
    from ponder.tasks.dataset import save_dataset
    from ponder.run_folder import load_config

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from hard_sudoku import difficulty_table

    run = tmp_path / "run"
    api.train(TINY + ["task.max_blanks=50", "task.harden_steps=3", "train.steps=2"], out=str(run), progress=False)
    save_dataset(build(TaskConfig(name="sudoku", train_size=1, val_size=1, test_size=5)), tmp_path / "test")
    stored = load_dataset_for(load_config(run).task).splits["train"].extra["difficulty"][:10].tolist()
    row = difficulty_table(run, tmp_path / "test", 10).splitlines()[2].split(" | ")
    assert row[0] == "| training puzzles (first 10)" and int(row[-1].rstrip(" |")) == max(stored)
    assert int(row[3]) == sorted(stored)[5]  # the median of 10


def test_hard_report_chooses_the_noise_on_validation_and_verified_is_at_least_the_vote(tmp_path):
    """`benchmarks/hard_sudoku.py report --val`: the noise scale with the best verified
    accuracy on the validation file is the one tested, and on puzzles with one solution
    the verified rule (first valid grid, else the vote) is right wherever the vote is."""
    import json
    import sys

    from conftest import ROOT
    from ponder.tasks.dataset import save_dataset

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import hard_sudoku

    run = tmp_path / "run"
    api.train(TINY + ["train.steps=2"], out=str(run), progress=False)
    save_dataset(build(TaskConfig(name="sudoku", blanks=4, train_size=1, val_size=1, test_size=12)), tmp_path / "test")
    puzzles, _ = sudoku.generate(6, 4, seed=9)
    (tmp_path / "val.txt").write_text("\n".join(sudoku.format_grid(p) for p in puzzles) + "\n")
    text = hard_sudoku.report(run, tmp_path / "test", segments=2, starts=3, out=tmp_path / "out", val=tmp_path / "val.txt", noises=(0.1, 3.0))
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    scores = {float(k): v for k, v in result["val_verified_accuracy_by_noise"].items()}
    assert result["breadth"]["init_noise"] == max(scores, key=lambda n: (scores[n], -n)) and "Verified" in text
    acc = result["breadth"]["accuracy"]
    for s in range(2):
        for j in range(len(result["breadth"]["breadths"])):
            assert acc["verified"][s][j] >= max(acc["vote"][s][j], acc["oracle"][s][j])


def test_hints_write_k_right_digits_into_blank_cells(tmp_path):
    """`benchmarks/hard_sudoku.py hints`: k blank cells per puzzle take the solution's
    digit, the givens stay, and the curve has one accuracy per k."""
    import sys

    import torch

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import hard_sudoku

    puzzles, solutions = (torch.from_numpy(a).long() for a in sudoku.generate(4, 30, seed=3))
    hinted = hard_sudoku.with_hints(puzzles, solutions, 7, torch.Generator().manual_seed(0))
    changed = hinted != puzzles
    assert changed.sum(dim=1).tolist() == [7] * 4 and bool((puzzles[changed] == 0).all())
    assert torch.equal(hinted[changed], solutions[changed])
    assert torch.equal(hard_sudoku.with_hints(puzzles, solutions, 99, torch.Generator()), solutions)  # every blank
    run = tmp_path / "run"
    api.train(TINY + ["train.steps=2"], out=str(run), progress=False)
    (tmp_path / "p.txt").write_text("\n".join(sudoku.format_grid(p) for p in puzzles.numpy()) + "\n")
    curve = hard_sudoku.hint_curve(run, tmp_path / "p.txt", [0, 99], segments=2)
    assert list(curve) == [0, 99] and all(0 <= a <= 1 for a in curve.values())


def test_seeds_table_means_and_rejects_mismatched_runs(tmp_path):
    """`benchmarks/hard_sudoku.py seeds`: per-seed accuracy, mean ± sample std and mean
    segment-runs by depth limit; runs with other settings or other files are refused."""
    import json
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import hard_sudoku

    def write(name, accuracy, runs, **settings):
        branch = {"n": 100, "segments": 8, "branch_segments": 2, "depth": 2, "width": 64, "accuracy": accuracy, "segment_runs": runs}
        (tmp_path / name).write_text(json.dumps({"exact_accuracy": accuracy[0], "branch": {**branch, **settings}}))
        return tmp_path / name

    a = write("s0.json", [0.01, 0.20, 0.50], [8.0, 20.0, 40.0])
    b = write("s1.json", [0.03, 0.30, 0.60], [8.0, 22.0, 44.0])
    table = hard_sudoku.seeds_table([a, b], depths=[0, 2])
    assert table.splitlines()[0] == "| depth limit | s0 | s1 | mean ± std | segment-runs per puzzle (mean) |"
    assert table.splitlines()[2:] == ["| 0 | 1.0% | 3.0% | 2.0% ± 1.4% | 8.0 |", "| 2 | 50.0% | 60.0% | 55.0% ± 7.1% | 42.0 |"]
    with pytest.raises(SystemExit, match="s2.json: branch_segments 4; .*s0.json has branch_segments 2"):
        hard_sudoku.seeds_table([a, write("s2.json", [0.0] * 3, [8.0] * 3, branch_segments=4)])
    (tmp_path / "plain.json").write_text(json.dumps({"exact_accuracy": 0.1}))
    with pytest.raises(SystemExit, match="plain.json: expected the JSON of 'ponder eval --branch D --json'"):
        hard_sudoku.seeds_table([a, tmp_path / "plain.json"])
    with pytest.raises(SystemExit, match="--depths: expected limits within 0..2"):
        hard_sudoku.seeds_table([a, b], depths=[3])
