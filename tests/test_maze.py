from pathlib import Path

import numpy as np
import pytest
import torch

from ponder.errors import PonderInputError
from ponder.tasks import keyed, maze
from ponder.tasks.grids import DIHEDRAL_INVERSE, IGNORE, dihedral


def embed(rows: list[str]) -> str:
    """A small picture in the top-left corner of a 30x30 grid of walls."""
    lines = [row.ljust(maze.SIDE, "#") for row in rows] + ["#" * maze.SIDE] * (maze.SIDE - len(rows))
    return "".join(lines)


# Three ways from S to G: two shortest of 6 cells (along the top, or through the
# middle row) and a longer one of 10 cells (down the left side, along the bottom, up).
QUESTION = embed(["S   ", " ## ", "   G", " ## ", "    "])
MIDDLE = embed(["S   ", "o## ", "oooG", " ## ", "    "])  # what the BFS tie-break (down first) stores
TOP = embed(["Sooo", " ##o", "   G", " ## ", "    "])
LONGER = embed(["S   ", "o## ", "o  G", "o##o", "oooo"])
BROKEN = embed(["So o", " ##o", "   G", " ## ", "    "])
THROUGH_WALL = embed(["S   ", "oooo", "   G", " ## ", "    "])  # as short, but across two walls
EXTRA_MARK = embed(["S   ", "o## ", "oooG", " ## ", "   o"])  # a shortest path plus a stray 'o'
NO_START = embed(["o   ", "o## ", "oooG", " ## ", "    "])

HEADER = "source,question,answer,rating\n"


def tokens(*texts: str) -> np.ndarray:
    return np.stack([maze.encode(t) for t in texts])  # (n, 900)


def test_encode_decode_round_trip():
    t = maze.encode(MIDDLE)
    assert t.shape == (maze.SIZE,) and t.dtype == np.int8
    assert maze.decode(t) == MIDDLE
    assert maze.decode(torch.from_numpy(t)) == MIDDLE
    assert set(t.tolist()) == {maze.WALL, maze.OPEN, maze.START, maze.GOAL, maze.PATH}
    assert maze.VOCAB == 6 and maze.ALPHABET[maze.PAD] == "?"


@pytest.mark.parametrize(
    "text, message",
    [(QUESTION[:-1], "899 characters; expected 900"), (QUESTION[:-1] + "x", r"unexpected character 'x' at row 29, column 29")],
)
def test_encode_errors_are_one_line(text, message):
    with pytest.raises(PonderInputError, match=message) as info:
        maze.encode(text)
    assert "\n" not in str(info.value)


def test_render_draws_the_path_over_the_question():
    picture = maze.render(maze.encode(QUESTION), maze.encode(TOP))
    lines = picture.split("\n")
    assert len(lines) == maze.SIDE and all(len(line) == maze.SIDE for line in lines)
    assert lines[:3] == [row.ljust(maze.SIDE, "#") for row in ("Sooo", " ##o", "   G")]
    assert maze.render(maze.encode(QUESTION)).split("\n")[0] == "S   ".ljust(maze.SIDE, "#")


def test_solve_follows_the_maze_hard_tie_break():
    assert maze.decode(maze.solve(maze.encode(QUESTION))) == MIDDLE
    walled_off = maze.encode(embed(["S#  G"]))
    assert maze.solve(walled_off) is None


def test_valid_answers_accepts_any_shortest_path_only():
    answers = [MIDDLE, TOP, LONGER, BROKEN, THROUGH_WALL, EXTRA_MARK, NO_START, QUESTION]
    q = tokens(*[QUESTION] * len(answers))
    got = maze.valid_answers(q, tokens(*answers))
    assert got.dtype == torch.bool
    assert got.tolist() == [True, True, False, False, False, False, False, False]
    assert maze.valid_answers(torch.from_numpy(q).long(), torch.from_numpy(tokens(*answers)).long()).tolist() == got.tolist()
    assert maze.is_shortest_path(q[0], maze.encode(TOP))


def write_csv(path: Path, *rows: tuple[str, str], header: str = HEADER) -> Path:
    path.write_text(header + "".join(f"small,{q},{a},\n" for q, a in rows))
    return path


def test_read_csv_reads_good_rows(tmp_path):
    qs, ans = maze.read_csv(write_csv(tmp_path / "good.csv", (QUESTION, MIDDLE), (QUESTION, TOP)))
    assert qs.shape == ans.shape == (2, maze.SIZE) and qs.dtype == np.int8
    assert maze.decode(qs[1]) == QUESTION and maze.decode(ans[1]) == TOP


two_s = QUESTION.replace(" ", "S", 1)
walls_differ = MIDDLE[:3] + "#" + MIDDLE[4:]  # a wall on the open cell (0, 3)


@pytest.mark.parametrize(
    "row, message",
    [
        ((QUESTION[:-1], MIDDLE), r"bad.csv:3: question has 899 characters; expected 900"),
        ((QUESTION, MIDDLE + " "), r"bad.csv:3: answer has 901 characters; expected 900"),
        ((QUESTION, MIDDLE.replace("o", "*", 1)), r"bad.csv:3: answer has an unexpected character '\*' at row 1, column 0"),
        ((MIDDLE, MIDDLE), r"bad.csv:3: question has a path mark 'o' at row 1, column 0"),
        ((two_s, MIDDLE), r"bad.csv:3: question has 2 S; expected exactly one"),
        ((QUESTION.replace("G", " "), MIDDLE), r"bad.csv:3: question has 0 G; expected exactly one"),
        ((QUESTION, walls_differ), r"bad.csv:3: answer has '#' where the question has ' ' at row 0, column 3"),
        ((QUESTION, LONGER), r"bad.csv:3: the 8 'o' cells are not a shortest S-to-G path; expected a connected path of 4"),
        ((embed(["S#  G"]), embed(["S#  G"])), r"bad.csv:3: G cannot be reached from S"),
    ],
)
def test_read_csv_errors_name_file_and_line(tmp_path, row, message):
    path = write_csv(tmp_path / "bad.csv", (QUESTION, MIDDLE), row)
    with pytest.raises(PonderInputError, match=message) as info:
        maze.read_csv(path)
    assert "\n" not in str(info.value)


def test_read_csv_header_and_field_errors(tmp_path):
    with pytest.raises(PonderInputError, match=r"bad.csv:1: header 'source,puzzle,solution' lacks"):
        maze.read_csv(write_csv(tmp_path / "bad.csv", header="source,puzzle,solution\n"))
    fields = tmp_path / "fields.csv"
    fields.write_text(f"{HEADER}small,{QUESTION},{MIDDLE},\nsmall,{QUESTION}\n")
    with pytest.raises(PonderInputError, match=r"fields.csv:3: 2 fields; expected 4"):
        maze.read_csv(fields)
    with pytest.raises(PonderInputError, match=r"empty.csv: no mazes found"):
        maze.read_csv(write_csv(tmp_path / "empty.csv"))
    with pytest.raises(PonderInputError, match=r"missing.csv: cannot be read"):
        maze.read_csv(tmp_path / "missing.csv")


def test_every_symmetry_composed_with_its_inverse_is_the_identity():
    grids = torch.from_numpy(tokens(*[MIDDLE] * 8)).long()  # (8, 900)
    ks = torch.arange(8)
    moved = maze.apply_symmetry(grids, ks)
    for k in range(8):
        picture = grids[k].numpy().reshape(maze.SIDE, maze.SIDE)
        assert (moved[k].numpy() == dihedral(picture, k).reshape(-1)).all()
    assert len({tuple(row.tolist()) for row in moved}) == 8  # the corner maze has no symmetry
    back = maze.apply_symmetry(moved, torch.tensor(DIHEDRAL_INVERSE)[ks])
    assert torch.equal(back, grids)


def test_augment_keyed_keeps_paths_shortest_and_follows_the_drawn_symmetry():
    keys = keyed.example_keys(3, torch.arange(64))
    inputs = torch.from_numpy(tokens(*[QUESTION] * 64))  # (64, 900) int8
    labels = torch.from_numpy(tokens(*[TOP, MIDDLE] * 32))
    x, y = maze.augment_keyed(inputs, labels, keys)
    assert x.dtype == y.dtype == torch.int8
    assert maze.valid_answers(x, y).all()
    ks = keyed.integers(keys, 8, maze.KEYED_SALT)
    assert set(ks.tolist()) == set(range(8))
    assert torch.equal(x, maze.apply_symmetry(inputs, ks)) and torch.equal(y, maze.apply_symmetry(labels, ks))
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    x2, y2 = maze.augment_keyed(inputs[order], labels[order], keys[order])
    assert torch.equal(x2, x[order]) and torch.equal(y2, y[order])
    assert torch.equal(maze.augment_keyed(inputs[3:4], labels[3:4], keys[3:4])[1], y[3:4])


def test_augment_keyed_moves_ignore_labels_with_their_cells():
    keys = keyed.example_keys(0, torch.arange(8))
    inputs = torch.from_numpy(tokens(*[QUESTION] * 8)).long()
    labels = torch.from_numpy(tokens(*[MIDDLE] * 8)).long()
    labels[:, 1::2] = IGNORE
    x, y = maze.augment_keyed(inputs, labels, keys)
    ks = keyed.integers(keys, 8, maze.KEYED_SALT)
    assert torch.equal(y == IGNORE, maze.apply_symmetry(labels == IGNORE, ks))
    assert int((y == IGNORE).sum()) == int((labels == IGNORE).sum())


def test_generation_is_seeded():
    a = maze.generate(3, seed=1, min_path=60)
    b = maze.generate(3, seed=1, min_path=60)
    c = maze.generate(3, seed=2, min_path=60)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert not (a[0] == c[0]).all()
    assert (maze.generate(1, seed=1, min_path=60)[0] == a[0][:1]).all()


def test_generated_answers_are_shortest_and_long_enough():
    questions, answers = maze.generate(3, seed=0)
    assert questions.shape == answers.shape == (3, maze.SIZE) and questions.dtype == np.int8
    assert maze.valid_answers(questions, answers).all()
    assert ((answers == maze.PATH).sum(1) + 2 >= 110).all()
    assert ((questions == maze.START).sum(1) == 1).all() and ((questions == maze.GOAL).sum(1) == 1).all()
    for q, a in zip(questions, answers):
        assert (maze.solve(q) == a).all()


def test_generate_rejects_bad_arguments():
    with pytest.raises(PonderInputError, match="min_path: 1; expected 2..900"):
        maze.generate(1, seed=0, min_path=1)


def shared_data() -> Path | None:
    """The Maze-Hard folder under the benchmark data root (`$PONDER_DATA` or
    ../shared/data), or None where it is absent."""
    from ponder.tasks.builders import raw_root

    try:
        folder = raw_root() / "maze-30x30-hard-1k"
    except PonderInputError:
        return None
    return folder if (folder / "test.csv").is_file() else None


def test_real_maze_hard_rows_match_the_tie_break():
    folder = shared_data()
    if folder is None:
        pytest.skip("Maze-Hard data not found under $PONDER_DATA or ../shared/data")
    questions, answers = maze.read_csv(folder / "test.csv")
    assert questions.shape == (1000, maze.SIZE)
    assert ((answers == maze.PATH).sum(1) + 2 >= 110).all()
    for q, a in zip(questions[:50], answers[:50]):
        assert (maze.solve(q) == a).all()


def all_shortest_paths(question: np.ndarray) -> list[set[int]]:
    """Every shortest S-to-G path's intermediate cells, by exhaustive search (small mazes only)."""
    start, goal = int((question == maze.START).argmax()), int((question == maze.GOAL).argmax())
    dist = maze._bfs((question != maze.WALL).tolist(), start)[0]
    paths = []

    def walk(cell, cells):
        if cell == goal:
            paths.append(set(cells[:-1]))
            return
        for nxt in maze._NEIGHBOURS[cell]:
            if question[nxt] != maze.WALL and dist[nxt] == dist[cell] + 1:
                walk(nxt, cells + [nxt])

    walk(start, [])
    return paths


def test_grid_distances_match_the_bfs():
    questions, _ = maze.generate(4, seed=5)
    q = torch.from_numpy(questions).long()
    dist = maze.grid_distances(q != maze.WALL, q == maze.START)
    for i in range(4):
        ref = torch.tensor(maze._bfs((questions[i] != maze.WALL).tolist(), int((questions[i] == maze.START).argmax()))[0])
        assert torch.equal(dist[i], torch.where(ref < 0, maze.FAR, ref))


def test_nearest_shortest_path_is_the_cheapest_of_all_shortest_paths():
    """On an open 4x6 room (C(8,3) = 56 shortest paths), with random logits the target
    is a valid shortest path whose loss is the least over every path found by exhaustive
    search; labels elsewhere are unchanged."""
    room = embed(["S     ", "      ", "      ", "     G"])
    question = maze.encode(room)
    answer = maze.solve(question)
    paths = all_shortest_paths(question)
    assert len(paths) == 56
    torch.manual_seed(0)
    q, a = torch.from_numpy(question).long()[None].repeat(6, 1), torch.from_numpy(answer).long()[None].repeat(6, 1)
    logits = torch.randn(6, maze.SIZE, maze.VOCAB) * 3
    target = maze.nearest_shortest_path(q, a, logits)
    assert maze.valid_answers(q, target).all()
    logp = logits.log_softmax(-1)
    extra = logp[..., maze.OPEN] - logp[..., maze.PATH]  # (6, 900) cost of marking a cell 'o'
    for i in range(6):
        chosen = set((target[i] == maze.PATH).nonzero().flatten().tolist())
        costs = [float(extra[i, list(p)].sum()) for p in paths]
        assert chosen in paths and float(extra[i, list(chosen)].sum()) == pytest.approx(min(costs), abs=1e-5)
        assert torch.equal(target[i][target[i] != maze.PATH], torch.where(a[i] == maze.PATH, maze.OPEN, a[i])[target[i] != maze.PATH])


def test_nearest_shortest_path_keeps_a_confident_right_answer_and_unreachable_mazes():
    questions, answers = maze.generate(3, seed=7)
    q, a = torch.from_numpy(questions).long(), torch.from_numpy(answers).long()
    sure = torch.nn.functional.one_hot(a, maze.VOCAB).float() * 5  # the model predicts the stored path
    assert torch.equal(maze.nearest_shortest_path(q, a, sure), a)
    blocked = maze.encode(embed(["S#  ", "##  ", "   G"]))
    b = torch.from_numpy(blocked).long()[None]
    assert torch.equal(maze.nearest_shortest_path(b, b, torch.randn(1, maze.SIZE, maze.VOCAB)), b)
