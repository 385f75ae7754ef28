"""The CLI end to end on tiny runs: every verb, --json shapes, and bad input."""

import json
import shutil
import subprocess

import pytest

from conftest import TINY
from ponder import api
from ponder.cli import main
from ponder.tasks import sudoku


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    api.train(TINY, out=str(out), progress=False)
    return out


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_writes_a_complete_run_folder(tiny_run):
    for name in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "results.json", "curves.png"):
        assert (tiny_run / name).is_file(), name
    log = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and {"ponder", "git", "torch", "device"} <= set(log[0]["env"])
    assert [r["step"] for r in log if r["event"] == "val"] == [2, 4]
    assert log[-1]["event"] == "test"
    chosen = json.loads((tiny_run / "results.json").read_text())["calibrated_halting"]  # a stop rule chosen on validation
    assert {"rule", "accuracy", "mean_segments", "val_accuracy", "frontier"} <= set(chosen) and chosen["frontier"]


def test_eval_json(tiny_run, capsys):
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--segments", 2, "--json")
    assert code == 0
    result = json.loads(out)
    assert {"exact_accuracy", "cell_accuracy", "accuracy_by_segment", "n", "mean_segments"} <= set(result)
    assert result["n"] == 16 and len(result["accuracy_by_segment"]) == 2


def test_eval_convergence_exit_and_breadth(tiny_run, capsys):
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--segments", 3, "--exit-tol", 1e-2, "--breadth", 3, "--json")
    result = json.loads(out)
    assert code == 0 and 1 <= result["converged_segments"] <= 3 and 0 <= result["converged_accuracy"] <= 1
    b = result["breadth"]
    assert b["breadths"] == [1, 2, 3] and set(b["accuracy"]) == {"residual", "vote", "first_halt", "verified", "oracle"}  # Sudoku has a check
    assert [row[0] for row in b["accuracy"]["vote"]] == result["accuracy_by_segment"]  # breadth 1 = the plain run
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--segments", 2, "--exit_tol", 1e-2, "--breadth", 2)
    assert code == 0 and "exit on convergence" in out and "residual:" in out and "k=2" in out and "answer that checks" in out


def test_eval_commitment(tiny_run, capsys):
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--segments", 2, "--commit", 20, "--breadth", 2, "--json")
    result = json.loads(out)
    c = result["commit"]
    assert code == 0 and c["rounds"] == 6 and c["breadths"] == [1, 2] and len(c["accuracy"]) == 6  # 81 cells / 20, plus one
    assert c["accuracy"][0][0] == result["accuracy_by_segment"][-1]  # round 1, one start: the plain run
    assert all(row[1] >= row[0] for row in c["passed"]) and c["segment_runs"][0] == [2.0, 4.0] and c["filtered"]
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--segments", 2, "--commit", 40, "--commit-rounds", 2, "--commit-restart",
                           "--commit-unfiltered")
    assert code == 0 and "commit: 40 cells per round after 2 segments (from the initial state)" in out and "(unfiltered)" in out


def test_eval_branching(tiny_run, capsys):
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--segments", 2, "--branch", 2, "--branch-segments", 1, "--branch-width", 4, "--json")
    b = json.loads(out)["branch"]
    assert code == 0 and b["depth"] == 2 and b["branch_segments"] == 1 and len(b["accuracy"]) == 3
    assert b["accuracy"][0] == json.loads(out)["accuracy_by_segment"][-1] and b["segment_runs"][0] == 2.0  # level 0: the plain run
    assert b["nodes"][1] <= 1 + 4 and all(x <= y for x, y in zip(b["passed"], b["passed"][1:]))
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--segments", 2, "--branch", 1)
    assert code == 0 and "branch: 2 segments, then 2 per child" in out and "segment-runs" in out


def test_eval_calibrates_a_stop_rule_on_validation(tiny_run, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--segments", 3, "--calibrate-halting", "--json")
    c = json.loads(out)["calibrated_halting"]
    assert code == 0 and 1 <= c["mean_segments"] <= 3 and c["val_accuracy"] >= c["val_all_segments"]
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--segments", 3, "--calibrate_halting")
    assert code == 0 and "stop rule chosen on validation" in out and "trade-off" in out
    assert c["val_n"] == 16  # the run's own validation split
    folder = tmp_path / "data"
    assert api.data_build("sudoku", ["task.blanks=20", "task.train_size=4", "task.val_size=24", "task.test_size=8"], out=str(folder), progress=False)
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--data", folder, "--segments", 2, "--calibrate-halting", "--json")
    result = json.loads(out)
    assert code == 0 and result["n"] == 8 and result["calibrated_halting"]["val_n"] == 24  # the folder's validation split
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--segments", 3, "--calibrate-halting", "--calibrate-target", "best", "--json")
    best = json.loads(out)["calibrated_halting"]
    assert code == 0 and best["target"] == "best" and best["val_target"] >= best["val_all_segments"]
    assert best["val_accuracy"] >= best["val_target"] and best["frontier"] == c["frontier"]
    code, _, err = run_cli(capsys, "eval", tiny_run, "--calibrate-halting", "--calibrate-target", "first")
    assert code != 0 and "--calibrate-target: expected one of last, best, got 'first'" in err


def test_bench_solvers_json(capsys):
    code, out, _ = run_cli(capsys, "bench", "solvers", "--lengths", "16,32", "--sizes", 4, "--cells", "gru", "--methods", "deer,quasi_deer", "--repeats", 1, "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 4
    for row in rows:
        assert {"method", "T", "D", "dtype", "seconds_parallel", "seconds_sequential", "speedup", "iterations", "max_abs_err"} <= set(row)
        assert row["max_abs_err"] < 1e-3 and row["dtype"] == "float32"


def test_eval_on_a_file(tiny_run, capsys, tmp_path):
    puzzles, solutions = sudoku.generate(3, 30, seed=9)
    f = tmp_path / "p.csv"
    f.write_text("source,question,answer,rating\n" + "".join(f"t,{sudoku.format_grid(p)},{sudoku.format_grid(s)},\n" for p, s in zip(puzzles, solutions)))
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--data", f)
    assert code == 0 and "3 examples" in out and "accuracy vs segments" in out
    lines = tmp_path / "p.txt"
    lines.write_text("".join(sudoku.format_grid(p, blank="0") + "\n" for p in puzzles))
    code, out, _ = run_cli(capsys, "eval", tiny_run, "--data", lines, "--json")
    assert code == 0 and json.loads(out)["n"] == 3


def test_solve(tiny_run, capsys):
    puzzle = sudoku.format_grid(sudoku.generate(1, 30, seed=1)[0][0])
    code, out, _ = run_cli(capsys, "solve", puzzle, "--run", tiny_run)
    assert code == 0 and "segment" in out and "|" in out
    chosen = json.loads((tiny_run / "results.json").read_text())["calibrated_halting"]["describe"]
    assert f"stop rule: {chosen}" in out  # the rule the run chose on validation
    code, out, _ = run_cli(capsys, "solve", puzzle, "--run", tiny_run, "--json")
    result = json.loads(out)
    assert code == 0 and len(result["solution"]) == 81 and isinstance(result["valid"], bool) and result["segments"] >= 1


def test_presets_json(capsys):
    code, out, _ = run_cli(capsys, "presets", "--json")
    rows = json.loads(out)
    assert code == 0 and rows and all({"name", "params", "description"} <= set(r) for r in rows)
    assert "trm-sudoku-cpu" in {r["name"] for r in rows}


def corrupt_copy(run, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(run, bad)
    ckpt = bad / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    return bad


def bad_cases(tiny_run, tmp_path):
    wrong = tmp_path / "wrong.csv"
    puzzles, solutions = sudoku.generate(1, 30, seed=2)
    broken = solutions[0].copy()
    broken[[0, 1]] = broken[[1, 0]]
    wrong.write_text(f"source,question,answer,rating\nx,{sudoku.format_grid(puzzles[0])},{sudoku.format_grid(broken)},\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  hiddn: 3\n")
    no_config = tmp_path / "empty_run"
    no_config.mkdir()
    return [
        (["train", "model.nonsense=1"], "unknown config key 'model.nonsense'"),
        (["train", "train.lr=fast"], "config key 'train.lr': expected float"),
        (["train", "model.mixer=conv"], "expected one of attention, mlp"),
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--config", bad_yaml], "unknown config key 'model.hiddn'; did you mean model.hidden?"),
        (["train", "max_segments=8"], "unknown config key 'max_segments'; did you mean train.max_segments?"),
        (["train", "--device", "tpu"], "config key 'train.device': unknown device 'tpu'"),
        (["train", "--config", tmp_path / "missing.yaml"], "no such config file"),
        (["train", "lr"], "expected key=value"),
        (["solve", "12345", "--run", tiny_run], "expected 81 characters"),
        (["solve", "a" * 81, "--run", tiny_run], "unexpected character 'a'"),
        (["eval", tiny_run, "--data", wrong], "wrong.csv:2: the answer is not a complete valid"),
        (["eval", tiny_run, "--data", tmp_path / "none.csv"], "no such file"),
        (["eval", tiny_run, "--solver-iters", 0], "only attractor runs have a solver"),
        (["bench", "solvers", "--lengths", "10,x"], "--lengths: expected comma-separated positive integers"),
        (["bench", "solvers", "--methods", "newton"], "--methods: expected comma-separated names from deer"),
        (["bench", "solvers", "--dtype", "int8"], "--dtype: expected float32 or float64"),
        (["eval", tiny_run, "--exit-tol", 0], "--exit-tol: expected a tolerance > 0"),
        (["eval", tiny_run, "--breadth", 0], "--breadth >= 1"),
        (["eval", tiny_run, "--commit", 5, "--commit-rounds", 0], "--commit >= 0 and --commit-rounds >= 1 expected"),
        (["eval", tiny_run, "--branch", 2, "--branch-width", 0], "--branch-width >= 1 expected"),
        (["solve", "." * 81, "--run", tiny_run, "--exit-tol", -1], "--exit-tol: expected a finite value >= 0"),
        (["eval", tmp_path / "missing"], "no such run folder"),
        (["eval", no_config], "not a run folder"),
        (["eval", corrupt_copy(tiny_run, tmp_path)], "corrupt checkpoint"),
        (["train", "--resume", no_config], "not a run folder"),
    ]


def test_bad_input_is_one_line_exit_2(tiny_run, tmp_path, capsys):
    for argv, message in bad_cases(tiny_run, tmp_path):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, argv
        assert message in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err


def test_bad_train_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    code, _, _ = run_cli(capsys, "train", "--out", out, "model.nonsense=1")
    assert code == 2 and not out.exists()


def test_existing_out_folder_is_refused(tiny_run, capsys):
    code, _, err = run_cli(capsys, "train", "--out", tiny_run, *TINY)
    assert code == 2 and "not empty" in err


def test_real_process_exit_code(ponder_cmd, tmp_path):
    proc = subprocess.run(ponder_cmd + ["train", "--preset", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("ponder train: error: unknown preset") and proc.stderr.count("\n") == 1


def test_resume_can_extend_a_finished_run(tmp_path, capsys):
    run = tmp_path / "run"
    api.train(TINY, out=str(run), progress=False)
    code, out, err = run_cli(capsys, "train", "--resume", run, "train.steps=6", "--json")
    assert code == 0, err
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["event"] for r in log].count("test") == 1
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 6
    assert json.loads((run / "config.json").read_text())["model"]["hidden"] == 16
    code, _, err = run_cli(capsys, "train", "--resume", run, "model.hidden=32")
    assert code == 2 and "a resumed run keeps its config" in err
    code, out, _ = run_cli(capsys, "train", "--resume", run, "train.steps=7")  # the summary says which times are which
    assert code == 0 and "s training over all invocations" in out and "s this invocation (resumed at step 6)" in out


def test_help_gives_each_verb_whole_sentences(capsys, monkeypatch):
    """`ponder --help` shows each verb's first docstring paragraph, not its first line."""
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping inside a word
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "answer recorded (a language-model run: validation loss by test-time recurrence)." in text
    assert "and a one-line description." in text


def test_counts_are_singular_or_plural():
    from ponder.cli import plural

    assert plural(1, "example") == "1 example" and plural(0, "segment") == "0 segments" and plural(12, "network call") == "12 network calls"
