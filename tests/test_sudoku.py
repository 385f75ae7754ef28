
import numpy as np
import pytest
import torch

from ponder.errors import PonderInputError
from ponder.tasks import keyed, sudoku
from ponder.tasks.grids import IGNORE

SOLVED = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def test_solver_finds_unique_solution():
    grid = sudoku.parse_puzzle(SOLVED)
    puzzle = grid.copy()
    puzzle[::10] = 0  # one blank per row: a unique solution
    count, solution = sudoku.solve(puzzle)
    assert count == 1
    assert sudoku.format_grid(solution) == SOLVED


def test_solver_counts_multiple_and_zero():
    empty = np.zeros(81, dtype=np.int8)
    assert sudoku.solve(empty, limit=2)[0] == 2
    dead = np.zeros(81, dtype=np.int8)
    dead[:8] = np.arange(1, 9)  # row 0 needs a 9 at column 8 ...
    dead[9 + 8] = 9  # ... but column 8 already has one
    assert sudoku.solve(dead) == (0, None)


def test_generated_puzzles_are_unique_with_given_blanks():
    puzzles, solutions = sudoku.generate(20, blanks=45, seed=3)
    for p, s in zip(puzzles, solutions):
        assert (p == 0).sum() == 45
        assert ((p == 0) | (p == s)).all()
        count, found = sudoku.solve(p)
        assert count == 1 and (found == s).all()
    assert sudoku.valid_solutions(torch.from_numpy(solutions).long()).all()


def test_generation_is_seeded():
    a = sudoku.generate(5, 30, seed=11)
    b = sudoku.generate(5, 30, seed=11)
    c = sudoku.generate(5, 30, seed=12)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (a[0] == c[0]).all()


def test_validator_rejects_broken_grids():
    grid = torch.tensor([int(c) for c in SOLVED])[None]
    assert sudoku.valid_solutions(grid).tolist() == [True]
    swapped = grid.clone()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]  # breaks two columns
    assert sudoku.valid_solutions(swapped).tolist() == [False]
    assert sudoku.valid_solutions(torch.zeros(1, 81, dtype=torch.long)).tolist() == [False]


@pytest.mark.parametrize(
    "text, message",
    [
        ("123", "expected 81 characters"),
        ("x" * 81, "unexpected character 'x'"),
        ("11" + "." * 79, "repeat a digit"),
    ],
)
def test_parse_errors_are_one_line(text, message):
    with pytest.raises(PonderInputError, match=message) as info:
        sudoku.parse_puzzle(text)
    assert "\n" not in str(info.value)


def test_symmetry_keeps_validity_and_inverts():
    rng = np.random.default_rng(0)
    puzzles, solutions = sudoku.generate(5, 40, seed=0)
    for p, s in zip(puzzles, solutions):
        sym = sudoku.Symmetry.random(rng)
        p2, s2 = sym.apply(p), sym.apply(s)
        assert sudoku.is_solution(s2)
        assert ((p2 == 0) | (p2 == s2)).all() and (p2 == 0).sum() == 40
        assert sudoku.solve(p2)[0] == 1
        inv = sym.inverse()
        assert (inv.apply(p2) == p).all() and (inv.apply(s2) == s).all()


def test_symmetry_group_covers_each_generator():
    rng = np.random.default_rng(1)
    syms = [sudoku.Symmetry.random(rng) for _ in range(64)]
    assert any((s.digits != np.arange(10)).any() for s in syms)
    transposed = sudoku.Symmetry(cells=np.arange(81).reshape(9, 9).T.reshape(81), digits=np.arange(10))
    grid = sudoku.parse_puzzle(SOLVED)
    assert sudoku.is_solution(transposed.apply(grid))
    assert len({tuple(s.cells) for s in syms}) == 64


def keyed_reference(key: int) -> sudoku.Symmetry:
    """The element `augment_keyed` should apply for one key, built the slow way: the
    same draws, assembled row by row as `Symmetry.random` does."""
    k, salts = torch.tensor([key]), sudoku.KEYED_SALTS

    def perm(n, salt):
        return keyed.permutations(k, n, salt)[0].numpy()

    def lines(order_salt, inner_salts):
        order = perm(3, order_salt)
        return np.concatenate([order[i] * 3 + perm(3, inner_salts[i]) for i in range(3)])

    digits = np.concatenate([[0], perm(9, salts["digits"]) + 1])
    rows, cols = lines(salts["bands"], salts["rows"]), lines(salts["stacks"], salts["cols"])
    cells = (rows[:, None] * 9 + cols[None, :]).reshape(81)
    if int(keyed.integers(k, 2, salts["transpose"])[0]):
        cells = cells.reshape(9, 9).T.reshape(81)
    return sudoku.Symmetry(cells=cells, digits=digits)


def keyed_batch(n: int = 48):
    puzzles, solutions = sudoku.generate(6, 40, seed=5)
    reps = -(-n // 6)
    p = torch.from_numpy(np.tile(puzzles, (reps, 1))[:n]).to(torch.uint8)  # (n, 81), as the datasets store them
    s = torch.from_numpy(np.tile(solutions, (reps, 1))[:n]).to(torch.uint8)
    return p, s, keyed.example_keys(7, torch.arange(n))


def test_augment_keyed_keeps_puzzles_valid_and_matches_the_reference():
    p, s, keys = keyed_batch()
    p2, s2 = sudoku.augment_keyed(p, s, keys)
    assert p2.dtype == s2.dtype == torch.uint8 and p2.shape == p.shape
    assert sudoku.valid_solutions(s2).all()
    assert ((p2 == 0) | (p2 == s2)).all()
    assert torch.equal((p2 == 0).sum(1), (p == 0).sum(1))
    for row, key in enumerate(keys.tolist()):
        sym = keyed_reference(key)
        assert (sym.apply(p[row].numpy()) == p2[row].numpy()).all()
        assert (sym.apply(s[row].numpy()) == s2[row].numpy()).all()
    assert len({tuple(row) for row in s2.tolist()}) == len(keys)
    p3, s3 = sudoku.augment_keyed(p.long(), s.long(), keys)
    assert p3.dtype == torch.int64 and torch.equal(p3, p2.long()) and torch.equal(s3, s2.long())


def test_augment_keyed_depends_only_on_each_rows_key():
    p, s, keys = keyed_batch()
    p2, s2 = sudoku.augment_keyed(p, s, keys)
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0))
    p3, s3 = sudoku.augment_keyed(p[order], s[order], keys[order])
    assert torch.equal(p3, p2[order]) and torch.equal(s3, s2[order])
    p4, s4 = sudoku.augment_keyed(p[5:7], s[5:7], keys[5:7])
    assert torch.equal(p4, p2[5:7]) and torch.equal(s4, s2[5:7])


def test_keyed_symmetries_cover_the_group_generators():
    cells, digits = sudoku.keyed_symmetries(keyed.example_keys(0, torch.arange(2000)))
    assert (digits[:, 0] == 0).all()
    assert torch.equal(digits.sort(1).values, torch.arange(10).expand(2000, 10))
    for v in range(1, 10):
        assert set(digits[:, v].tolist()) == set(range(1, 10))  # digit v goes everywhere
    assert set(cells[:, 0].tolist()) == set(range(81))  # any cell can land in the corner
    transposed = cells[:, 1] // 9 != cells[:, 0] // 9  # a row's neighbour comes from another row
    assert 800 < int(transposed.sum()) < 1200


def test_augment_keyed_keeps_ignore_labels():
    p, s, keys = keyed_batch(8)
    labels = s.long().clone()
    labels[:, ::7] = IGNORE
    _, s2 = sudoku.augment_keyed(p, s, keys)
    _, l2 = sudoku.augment_keyed(p.long(), labels, keys)
    cells, _ = sudoku.keyed_symmetries(keys)
    ignored = torch.gather(labels == IGNORE, 1, cells)  # (8, 81) where the IGNORE cells went
    assert torch.equal(l2 == IGNORE, ignored)
    assert torch.equal(l2[~ignored], s2.long()[~ignored])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_keyed_on_cuda_equals_cpu():
    p, s, keys = keyed_batch()
    p2, s2 = sudoku.augment_keyed(p.cuda(), s.cuda(), keys.cuda())
    assert p2.is_cuda and p2.dtype == torch.uint8
    want = sudoku.augment_keyed(p, s, keys)
    assert torch.equal(p2.cpu(), want[0]) and torch.equal(s2.cpu(), want[1])


def test_peer_mask():
    mask = sudoku.peer_mask()
    assert mask.shape == (81, 81) and mask.diagonal().all()
    assert (mask.sum(1) == 21).all()  # 20 peers and itself


def test_read_csv_and_errors(tmp_path):
    grid = sudoku.parse_puzzle(SOLVED)
    q = grid.copy()
    q[:30] = 0
    good = tmp_path / "good.csv"
    good.write_text(f"source,question,answer,rating\nx,{sudoku.format_grid(q)},{SOLVED},\n")
    qs, ans = sudoku.read_csv(good)
    assert qs.shape == (1, 81) and (ans[0] == grid).all()

    wrong = grid.copy()
    wrong[[0, 1]] = wrong[[1, 0]]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"source,question,answer,rating\nx,{sudoku.format_grid(q)},{SOLVED},\ny,{sudoku.format_grid(q)},{sudoku.format_grid(wrong)},\n")
    with pytest.raises(PonderInputError, match=r"bad.csv:3: the answer is not a complete valid"):
        sudoku.read_csv(bad)

    changes_given = tmp_path / "given.csv"
    q2 = grid.copy()
    q2[80] = 1 if grid[80] != 1 else 2
    q2[79] = 0
    changes_given.write_text(f"source,question,answer,rating\nx,{'.' * 80}{q2[80]},{SOLVED},\n")
    with pytest.raises(PonderInputError, match=r"given.csv:2: the answer does not solve its question"):
        sudoku.read_csv(changes_given)

    short = tmp_path / "short.csv"
    short.write_text("source,question,answer,rating\nx,123,456\n")
    with pytest.raises(PonderInputError, match=r"short.csv:2: expected 4 fields"):
        sudoku.read_csv(short)


def test_read_lines_solves_and_checks_uniqueness(tmp_path):
    q, grid = (a[0] for a in sudoku.generate(1, 50, seed=0))
    f = tmp_path / "puzzles.txt"
    f.write_text(f"# comment\n{sudoku.format_grid(q)}\n")
    qs, ans = sudoku.read_lines(f)
    assert (ans[0] == grid).all()
    g = tmp_path / "multi.txt"
    g.write_text("." * 81 + "\n")
    with pytest.raises(PonderInputError, match=r"multi.txt:1: the puzzle has more than one solution"):
        sudoku.read_lines(g)


def test_solves_needs_a_valid_grid_that_keeps_the_givens():
    from ponder.tasks import sudoku

    puzzle, solution = sudoku.generate(1, blanks=40, seed=3)
    puzzle, solution = torch.as_tensor(puzzle).long(), torch.as_tensor(solution).long()
    other = sudoku.Symmetry.random(np.random.default_rng(0)).apply(solution[0].numpy())  # valid, but not this puzzle's
    broken = solution.clone()
    broken[0, :2] = broken[0, [1, 0]]  # two cells swapped: rows stay full, columns do not
    answers = torch.cat([solution, torch.as_tensor(other)[None].long(), broken])
    assert sudoku.solves(puzzle.expand(3, -1), answers).tolist() == [True, False, False]
