"""Model folders (export, load, the bundled model), pictures of thinking (trace), and
training logs that read well in a file."""

import json
import shutil
import subprocess

import pytest
import torch

from conftest import TINY
from ponder import api
from ponder.cli import main
from ponder.errors import PonderInputError
from ponder.pretrained import bundled_names, load, resolve
from ponder.tasks import sudoku
from ponder.train import loop

PUZZLE = api.EXAMPLE_PUZZLE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    api.train(TINY, out=str(out), progress=False)
    return out


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny-model"
    api.export(str(tiny), out=str(out))
    return out


def test_export_round_trip_gives_the_same_answers(tiny, exported):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors", "results.json"]
    from_run, from_folder = load(tiny), load(exported)
    for a, b in zip(from_run.model.state_dict().values(), from_folder.model.state_dict().values()):
        assert torch.equal(a, b)
    puzzles = [sudoku.format_grid(p) for p in sudoku.generate(4, 20, seed=5)[0]]
    assert from_folder.solve(puzzles) == from_run.solve(puzzles) == [api.solve(p, run=str(tiny))["solution"] for p in puzzles]
    assert api.evaluate(str(exported))["exact_accuracy"] == api.evaluate(str(tiny))["exact_accuracy"]
    card = (exported / "README.md").read_text()
    assert "exact accuracy" in card and "ponder train --config config.json" in card


def test_think_reports_every_segment(exported):
    model = load(exported)
    thoughts = model.think(PUZZLE, segments=3)
    assert [t.segment for t in thoughts] == [1, 2, 3]
    for t in thoughts:
        assert t.answer.shape == t.confidence.shape == (81,) and 0 <= t.halt_prob <= 1 and t.change >= 0
    as_tensor = model.solve(torch.from_numpy(sudoku.parse_puzzle(PUZZLE)).long())  # (81,) in, (81,) out
    assert as_tensor.shape == (81,) and sudoku.format_grid(as_tensor) == model.solve(PUZZLE)
    with pytest.raises(PonderInputError, match=r"expected \(81,\) or \(N, 81\) tokens"):
        model.solve(torch.zeros(5, dtype=torch.long))


def test_export_refuses_what_it_should(tiny, exported, tmp_path):
    with pytest.raises(PonderInputError, match="exists and is not an empty folder"):
        api.export(str(tiny), out=str(exported))
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PonderInputError, match="model.safetensors: corrupt model weights"):
        load(bad)
    unfinished = tmp_path / "unfinished"
    api.train(TINY + ["train.max_minutes=0.0001"], out=str(unfinished), progress=False)
    with pytest.raises(PonderInputError, match="no test result yet"):
        api.export(str(unfinished), out=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_bundled_model_is_small_and_scores_as_recorded():
    assert "sudoku" in bundled_names()
    folder = resolve("sudoku")
    assert (folder / "model.safetensors").stat().st_size < 2**20
    recorded = json.loads((folder / "results.json").read_text())
    model = load("sudoku")
    cfg = model.cfg.task
    puzzles, solutions, _ = __import__("ponder.tasks.builders", fromlist=["x"]).generate_sudoku(200, cfg.blanks, cfg.seed, "test", workers=1)
    answers = model.solve([sudoku.format_grid(p) for p in puzzles], segments=recorded["segments"])
    # `solve` stops by the stop rule; the recorded figure is for all segments: the two agree within a few points
    accuracy = sum(a == sudoku.format_grid(s) for a, s in zip(answers, solutions)) / len(puzzles)
    assert abs(accuracy - recorded["exact_accuracy"]) <= 0.05, (accuracy, recorded["exact_accuracy"])


def test_verbs_take_the_bundled_name(tmp_path):
    file = tmp_path / "three.txt"
    file.write_text("".join(sudoku.format_grid(p) + "\n" for p in sudoku.generate(3, 40, seed=8)[0]))
    result = api.evaluate("sudoku", data=str(file), segments=2)
    assert result["n"] == 3 and len(result["accuracy_by_segment"]) == 2
    assert api.solve(PUZZLE, run="sudoku")["model"] == "sudoku"


def test_solve_with_no_arguments_solves_the_example(capsys):
    assert main(["solve"]) == 0
    out = capsys.readouterr().out
    assert "an example puzzle" in out and "a valid solution" in out
    assert api.solve()["valid"]


def test_trace_writes_a_page_a_strip_and_a_gif(exported, tmp_path):
    result = api.trace(run=str(exported), out=str(tmp_path / "t"), segments=4)
    names = sorted(p.name for p in (tmp_path / "t").iterdir())
    assert names == ["index.html", "strip.png", "thinking.gif", "trace.json"]
    data = json.loads((tmp_path / "t" / "trace.json").read_text())
    assert len(data["segments"]) == 4 and 1 <= data["stop_segment"] <= 4
    solution = sudoku.format_grid(sudoku.solve(sudoku.parse_puzzle(PUZZLE))[1])
    for step in data["segments"]:  # wrong cells are exactly where the answer differs from the solution
        assert step["wrong"] == [str(a) != c for a, c in zip(step["answer"], solution)]
    assert result["correct_by_segment"] == [s["correct"] for s in data["segments"]]
    page = (tmp_path / "t" / "index.html").read_text()
    assert "<script id='trace-data' type='application/json'>" in page and "http" not in page.split("<script")[0]
    from PIL import Image

    with Image.open(tmp_path / "t" / "thinking.gif") as gif:
        assert gif.n_frames == 4


def test_trace_draws_any_task_by_example(tmp_path):
    run = tmp_path / "khop"
    api.train(["model.hidden=16", "model.heads=2", "model.layers=1", "model.latent_steps=1", "model.cycles=1", "task.train_size=32",
               "task.val_size=8", "task.test_size=8", "train.steps=2", "train.batch_size=8", "train.max_segments=2", "train.eval_segments=2",
               "train.eval_every=2", "train.checkpoint_every=2"], preset="trm-khop", out=str(run), progress=False)
    api.trace(run=str(run), out=str(tmp_path / "t"), example=3)
    data = json.loads((tmp_path / "t" / "trace.json").read_text())
    assert data["layout"]["labels"][0] and len(data["segments"]) == 2 and data["segments"][0]["wrong"] is not None
    with pytest.raises(PonderInputError, match="draw one of its examples with --example N"):
        api.trace(run=str(run), out=str(tmp_path / "u"))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (.ci/run installs Debian's chromium when it can)")
def test_trace_page_renders_in_a_headless_browser(exported, tmp_path):
    api.trace(run=str(exported), out=str(tmp_path / "t"), segments=3)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", (tmp_path / "t" / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-rendered="3"' in dom  # the script ran to its end
    assert dom.count('class="seg') == 3 and dom.count("data-segment=") == 3
    assert dom.count('class="cell ') == 3 * 2 * 81  # per segment: the board and the doubt map
    assert "the stop rule stops here" in dom and "<polyline" in dom


def test_piped_training_prints_plain_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop, "LINE_SECONDS", 0.0)  # a line every step
    api.train(TINY + ["train.steps=3"], out=str(tmp_path / "run"), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = [line for line in err.splitlines() if line.startswith("batch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"] and all("loss" in line and "ETA" in line for line in lines)
    api.train(TINY + ["train.steps=2"], out=str(tmp_path / "quiet"), quiet=True)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_minutes_format():
    assert [loop._minutes(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_compare_lists_differences_and_results(tiny, tmp_path, capsys):
    other = tmp_path / "other"
    api.train(TINY + ["train.lr=0.003"], out=str(other), progress=False)
    result = api.compare([str(tiny), str(other)], out=str(tmp_path / "curves.png"))
    assert list(result["config_differences"]) == ["train.lr"] and result["config_differences"]["train.lr"][1] == 0.003
    assert len(result["results"]["exact_accuracy"]) == 2 and (tmp_path / "curves.png").stat().st_size > 0
    assert main(["compare", str(tiny), str(other)]) == 0
    out = capsys.readouterr().out
    assert "train.lr" in out and "exact accuracy" in out
    with pytest.raises(PonderInputError, match="two or more run folders"):
        api.compare([str(tiny)])


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorboard") is None, reason="the tensorboard package is not installed")
def test_tensorboard_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    api.train(TINY + ["train.tensorboard=true"], out=str(tmp_path / "run"), progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "val/exact_accuracy", "test/exact_accuracy"} <= set(tags["scalars"])
    assert {"val/accuracy_by_segment", "val/thinking"} <= set(tags["images"])
    losses = [e.value for e in events.Scalars("train/loss")]
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([r["loss"] for r in log if r["event"] == "train"])


@pytest.mark.parametrize("task, seq_len, vocab", [("maze-hard", 900, 6), ("arc-agi-1", 900, 12), ("graph-reach", 81, 18)])
def test_every_task_has_a_picture(task, seq_len, vocab, tmp_path):
    """The page, strip and GIF draw a grid task in colour and a compositional one as tokens."""
    from ponder.viz.trace import layout, write_gif, write_html, write_strip

    shape = layout(task, seq_len, vocab)
    assert shape["rows"] * shape["cols"] >= seq_len and len(shape["labels"]) >= vocab
    assert (shape["colors"] is None) == (task == "graph-reach")
    g = torch.Generator().manual_seed(0)
    answers = [torch.randint(0, vocab, (seq_len,), generator=g).tolist() for _ in range(2)]
    data = {"title": task, "model": "m", "task": task, "layout": shape, "inputs": answers[0], "labels": answers[1], "halting": True,
            "stop_segment": 2, "segments": [{"segment": k + 1, "answer": a, "changed": [True] * seq_len, "wrong": [x != y for x, y in zip(a, answers[1])],
                                             "confidence": [0.5] * seq_len, "halt_prob": 0.5, "change": 0.1, "correct": a == answers[1]}
                                            for k, a in enumerate(answers)]}
    for write, name in ((write_html, "index.html"), (write_strip, "strip.png"), (write_gif, "thinking.gif")):
        assert write(data, tmp_path / name).stat().st_size > 0
