"""9x9 Sudoku: parsing, an exact solver, a seeded unique-solution generator, file
readers, a batched validator and the symmetry augmentations.

A grid is 81 integers in row-major order, 0 for a blank and 1..9 for a digit. As model
input the same 81 integers are the tokens (vocabulary 10); the label is the solved grid.
"""

from __future__ import annotations

import csv
import io
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ponder.errors import PonderInputError, read_text
from ponder.tasks import keyed
from ponder.tasks.grids import seed_int

SIZE = 81
VOCAB = 10  # 0 = blank, 1..9 = digits
BLANK = 0  # the token of an empty cell
BLANK_CHARS = ".0"

_ROW = [i // 9 for i in range(SIZE)]
_COL = [i % 9 for i in range(SIZE)]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(SIZE)]
_ALL = 0x3FE  # bits 1..9


def units() -> list[list[int]]:
    """The 27 units (9 rows, 9 columns, 9 boxes) as lists of cell indices."""
    rows = [[r * 9 + c for c in range(9)] for r in range(9)]
    cols = [[r * 9 + c for r in range(9)] for c in range(9)]
    boxes = [[i for i in range(SIZE) if _BOX[i] == b] for b in range(9)]
    return rows + cols + boxes


UNITS = torch.tensor(units())  # (27, 9)


def peer_mask() -> torch.Tensor:
    """(81, 81) bool: True where two cells share a row, column or box (or are the same
    cell). Used as an optional attention mask that gives a model the puzzle's structure."""
    r, c, b = (torch.tensor(v) for v in (_ROW, _COL, _BOX))
    return (r[:, None] == r[None]) | (c[:, None] == c[None]) | (b[:, None] == b[None])


# ----------------------------------------------------------------------------- parsing

def parse_puzzle(text: str, where: str = "puzzle", check_givens: bool = True) -> np.ndarray:
    """Parse 81 characters ('.' or '0' blank, '1'-'9' digit) into an int8 grid;
    `check_givens` rejects a digit repeated in a row, column or box."""
    s = text.strip()
    if len(s) != SIZE:
        raise PonderInputError(f"{where}: expected 81 characters ('.' or '0' for a blank, 1-9), got {len(s)}")
    bad = [ch for ch in s if ch not in "0123456789."]
    if bad:
        raise PonderInputError(f"{where}: unexpected character {bad[0]!r}; expected '.', '0' or 1-9")
    grid = np.array([0 if ch in BLANK_CHARS else int(ch) for ch in s], dtype=np.int8)
    if check_givens and not _givens_consistent(grid):
        raise PonderInputError(f"{where}: the givens repeat a digit in a row, column or box")
    return grid


def format_grid(grid, blank: str = ".") -> str:
    """81-character string of a grid."""
    return "".join(blank if int(v) == 0 else str(int(v)) for v in grid)


def render_grid(grid) -> str:
    """Multi-line picture of a grid with box separators ('.' for a blank)."""
    lines = []
    for r in range(9):
        if r in (3, 6):
            lines.append("------+-------+------")
        row = []
        for c in range(9):
            if c in (3, 6):
                row.append("|")
            v = int(grid[r * 9 + c])
            row.append("." if v == 0 else str(v))
        lines.append(" ".join(row))
    return "\n".join(lines)


def render_example(puzzle, solution=None) -> str:
    """The puzzle and, if given, its solution side by side."""
    left = render_grid(puzzle).splitlines()
    if solution is None:
        return "\n".join(left)
    right = render_grid(solution).splitlines()
    return "\n".join(f"{a}    {b}" for a, b in zip(left, right))


def _givens_consistent(grid: np.ndarray) -> bool:
    for unit in units():
        vals = [int(grid[i]) for i in unit if grid[i]]
        if len(vals) != len(set(vals)):
            return False
    return True


# ------------------------------------------------------------------------ exact solver

def solve(grid, limit: int = 2, stats: dict | None = None) -> tuple[int, np.ndarray | None]:
    """Count solutions of `grid` up to `limit` by backtracking with the
    fewest-candidates rule. Returns (count, first solution or None); `stats`, when
    given, receives "guesses": the branch points visited (cells tried with two or
    more candidates), a measure of how much search the puzzle needs."""
    cells = [int(v) for v in grid]
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(cells):
        if v:
            bit = 1 << v
            if (rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]]) & bit:
                return 0, None
            rows[_ROW[i]] |= bit
            cols[_COL[i]] |= bit
            boxes[_BOX[i]] |= bit
    empty = [i for i in range(SIZE) if cells[i] == 0]
    found: list[list[int]] = []
    count = 0

    def search() -> bool:  # True = stop (limit reached)
        nonlocal count
        best, best_mask, best_n = -1, 0, 10
        for i in empty:
            if cells[i]:
                continue
            mask = _ALL & ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]])
            n = bin(mask).count("1")
            if n < best_n:
                best, best_mask, best_n = i, mask, n
                if n <= 1:
                    break
        if best < 0:
            count += 1
            if not found:
                found.append(list(cells))
            return count >= limit
        if best_n == 0:
            return False
        if stats is not None and best_n > 1:
            stats["guesses"] = stats.get("guesses", 0) + 1
        r, c, b = _ROW[best], _COL[best], _BOX[best]
        mask = best_mask
        while mask:
            bit = mask & -mask
            mask ^= bit
            cells[best] = bit.bit_length() - 1
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            stop = search()
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            cells[best] = 0
            if stop:
                return True
        return False

    if stats is not None:
        stats["guesses"] = 0
    search()
    return count, (np.array(found[0], dtype=np.int8) if found else None)


def guesses(grid) -> int:
    """Branch points the exact solver visits before its first solution: 0 for a puzzle
    that filling forced cells alone solves; the published hardest puzzles need tens to
    hundreds, random minimal puzzles a handful."""
    stats: dict = {}
    solve(grid, limit=1, stats=stats)
    return stats["guesses"]


def difficulty(grid) -> int:
    """Blanks plus `guesses`: the order a curriculum trains generated puzzles in (a
    40-blank puzzle scores about 40, a random minimal one 55-65, a published hard one
    far more)."""
    return int((np.asarray(grid) == 0).sum()) + guesses(grid)


def is_solution(grid) -> bool:
    """True when a full grid has every digit once in each row, column and box."""
    return bool(valid_solutions(torch.as_tensor(np.asarray(grid, dtype=np.int64))[None])[0])


def valid_solutions(grids: torch.Tensor) -> torch.Tensor:
    """(B, 81) int grids -> (B,) bool: every unit holds the digits 1..9 exactly once."""
    per_unit = grids.long()[:, UNITS.to(grids.device)]  # (B, 27, 9)
    onehot = torch.nn.functional.one_hot(per_unit, VOCAB)[..., 1:]  # (B, 27, 9, 9)
    return (onehot.sum(dim=2) == 1).all(dim=(1, 2))


def candidates(grids: torch.Tensor) -> torch.Tensor:
    """(B, 81) grids, 0 = blank -> (B, 81, VOCAB) bool: the digits each cell may still
    take: a filled cell its own digit, a blank cell every digit none of its peers holds
    (never the blank token). A blank cell with none left means a contradiction."""
    onehot = torch.nn.functional.one_hot(grids.long(), VOCAB).float()  # (B, 81, V)
    onehot[..., BLANK] = 0
    peers = peer_mask().to(grids.device).float()  # (81, 81), each cell its own peer
    taken = (peers @ onehot) > 0  # (B, 81, V) some peer (or the cell) holds the digit
    return torch.where((grids == BLANK)[..., None], ~taken, onehot > 0) & (torch.arange(VOCAB, device=grids.device) != BLANK)


def solves(puzzles: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """(B, 81) puzzles and (B, 81) answers -> (B,) bool: a valid full grid that keeps
    every given. Reads no label: where the solution is unique, this is "right"."""
    keeps_givens = ((puzzles == 0) | (puzzles == grids)).all(dim=1)
    return valid_solutions(grids) & keeps_givens.to(grids.device)


# -------------------------------------------------------------------------- generator

def random_solution(rng: random.Random) -> np.ndarray:
    """A uniformly shuffled search for a complete valid grid."""
    cells = [0] * SIZE
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9

    def fill(pos: int) -> bool:
        if pos == SIZE:
            return True
        r, c, b = _ROW[pos], _COL[pos], _BOX[pos]
        mask = _ALL & ~(rows[r] | cols[c] | boxes[b])
        digits = [d for d in range(1, 10) if mask >> d & 1]
        rng.shuffle(digits)
        for d in digits:
            bit = 1 << d
            cells[pos] = d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            if fill(pos + 1):
                return True
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
        cells[pos] = 0
        return False

    fill(0)
    return np.array(cells, dtype=np.int8)


QUICK_CHECK_BLANKS = 50  # see generate_puzzle


def generate_puzzle(rng: random.Random, blanks: int, minimal_ok: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One (puzzle, solution) pair with exactly `blanks` blanks and a unique solution;
    with `minimal_ok`, at most `blanks`: a puzzle that becomes minimal first (no given
    can go without admitting a second solution) is returned as it is.

    Blanks are drawn in a random order. Removing a given can only add solutions, so if
    the first `blanks` cells of the order leave a unique puzzle, every prefix did too
    and one solver call suffices; otherwise we walk the order and skip any cell whose
    removal would admit a second solution (a skipped cell stays needed, so a walk that
    ends short has made a minimal puzzle). Above QUICK_CHECK_BLANKS blanks the one-call
    shortcut is skipped: it rarely succeeds there, and counting the solutions of a grid
    with under 31 random givens can take the plain backtracking solver minutes."""
    if not 0 <= blanks <= 64:
        raise PonderInputError(f"blanks: expected 0..64 (a 9x9 puzzle needs at least 17 givens), got {blanks}")
    while True:
        solution = random_solution(rng)
        order = list(range(SIZE))
        rng.shuffle(order)
        puzzle = solution.copy()
        puzzle[order[:blanks]] = 0
        if blanks <= QUICK_CHECK_BLANKS and solve(puzzle, limit=2)[0] == 1:
            return puzzle, solution
        puzzle = solution.copy()
        removed = 0
        for i in order:
            if removed == blanks:
                break
            keep = puzzle[i]
            puzzle[i] = 0
            if solve(puzzle, limit=2)[0] == 1:
                removed += 1
            else:
                puzzle[i] = keep
        if removed == blanks or minimal_ok:
            return puzzle, solution


def search_size(grid) -> tuple[int, int]:
    """(solutions up to 2, branch points of the whole search that proves it): unlike
    `guesses`, which stops at the first solution, this does not depend on the order the
    solver happens to try digits in, so it is the score `harden` climbs."""
    stats: dict = {}
    count, _ = solve(grid, limit=2, stats=stats)
    return count, stats["guesses"]


def harden(puzzle: np.ndarray, solution: np.ndarray, rng: random.Random, steps: int) -> np.ndarray:
    """Hill-climb a unique puzzle toward more search: each of `steps` moves swaps a
    random given for a random blank (filled from `solution`, so the answer stays the
    same), half the time also removing a second given, and is kept when the puzzle stays
    unique and `search_size`'s branch count does not fall. Random generation, even of
    minimal puzzles, rarely needs the search the published hardest puzzles need; a few
    hundred moves take a random minimal puzzle a good part of the way."""
    puzzle = puzzle.copy()
    best = search_size(puzzle)[1]
    for _ in range(steps):
        givens, blanks = np.flatnonzero(puzzle), np.flatnonzero(puzzle == 0)
        if len(blanks) == 0:
            break
        candidate = puzzle.copy()
        candidate[givens[rng.randrange(len(givens))]] = 0
        filled = int(blanks[rng.randrange(len(blanks))])
        candidate[filled] = solution[filled]
        count = 0
        if rng.random() < 0.5:  # try one given fewer first
            fewer = candidate.copy()
            left = np.flatnonzero(fewer)
            fewer[left[rng.randrange(len(left))]] = 0
            count, size = search_size(fewer)
            if count == 1:
                candidate = fewer
        if count != 1:
            count, size = search_size(candidate)
        if count == 1 and size >= best:
            puzzle, best = candidate, size
    return puzzle


def generate(n: int, blanks: int, seed: int, progress: bool = False, max_blanks: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` seeded puzzles and solutions as two (n, 81) int8 arrays. The same
    (n, blanks, seed, max_blanks) gives the same bytes on every machine.

    With `max_blanks` > `blanks`, each puzzle asks for a blank count drawn uniformly
    from blanks..max_blanks and keeps fewer when it turns minimal first: a spread of
    difficulty from `blanks` up to minimal puzzles (max_blanks=64)."""
    if max_blanks and max_blanks < blanks:
        raise PonderInputError(f"max_blanks: expected 0 (off) or at least blanks={blanks}, got {max_blanks}")
    rng = random.Random(seed)
    puzzles = np.zeros((n, SIZE), dtype=np.int8)
    solutions = np.zeros((n, SIZE), dtype=np.int8)
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"generating {n} puzzles ({blanks} blanks)", unit="puzzle", leave=False)
    for k in it:
        if max_blanks > blanks:
            puzzles[k], solutions[k] = generate_puzzle(rng, rng.randint(blanks, max_blanks), minimal_ok=True)
        else:
            puzzles[k], solutions[k] = generate_puzzle(rng, blanks)
    return puzzles, solutions


# ------------------------------------------------------------------------------ files

def read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the public CSV layout `source,question,answer,rating` ('.' = blank).
    Every answer must be a valid solution that agrees with its question."""
    path = Path(path)
    questions, answers = [], []
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise PonderInputError(f"{path}: empty file; expected a header 'source,question,answer,rating'")
        cols = [h.strip().lower() for h in header]
        if "question" not in cols or "answer" not in cols:
            raise PonderInputError(f"{path}:1: expected a header with 'question' and 'answer' columns, got {header}")
        qi, ai = cols.index("question"), cols.index("answer")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            where = f"{path}:{lineno}"
            if len(row) != len(cols):
                raise PonderInputError(f"{where}: expected {len(cols)} fields, got {len(row)}")
            q = parse_puzzle(row[qi], where=f"{where} question")
            a = parse_puzzle(row[ai], where=f"{where} answer", check_givens=False)
            if (a == 0).any() or not is_solution(a):
                raise PonderInputError(f"{where}: the answer is not a complete valid Sudoku grid")
            if ((q != 0) & (q != a)).any():
                raise PonderInputError(f"{where}: the answer does not solve its question (it changes a given)")
            questions.append(q)
            answers.append(a)
    if not questions:
        raise PonderInputError(f"{path}: no puzzles found")
    return np.stack(questions), np.stack(answers)


def read_lines(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one puzzle per line (no solutions; '#' lines are comments) and solve each
    with the exact solver, rejecting puzzles without exactly one solution."""
    path = Path(path)
    questions, answers = [], []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{lineno}"
            q = parse_puzzle(line.split()[0], where=where)
            count, solution = solve(q, limit=2)
            if count != 1:
                what = "no solution" if count == 0 else "more than one solution"
                raise PonderInputError(f"{where}: the puzzle has {what}; expected exactly one")
            questions.append(q)
            answers.append(solution)
    if not questions:
        raise PonderInputError(f"{path}: no puzzles found")
    return np.stack(questions), np.stack(answers)


def read_puzzles(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """CSV (by `.csv` suffix) or one-puzzle-per-line file."""
    path = Path(path)
    if not path.is_file():
        raise PonderInputError(f"{path}: no such file; expected a Sudoku CSV or a puzzle-per-line text file")
    return read_csv(path) if path.suffix.lower() == ".csv" else read_lines(path)


def _open_text(path: Path):
    """The file's text as a stream, read whole first so a non-UTF-8 byte is a one-line error."""
    return io.StringIO(read_text(path, "expected a Sudoku CSV or a puzzle-per-line text file"), newline="")


# ---------------------------------------------------------------------- augmentations

@dataclass(frozen=True)
class Symmetry:
    """One element of the Sudoku symmetry group used for augmentation.

    `cells[k]` is the source cell of destination cell k and `digits[v]` the new value
    of digit v (digits[0] == 0, so blanks stay blank). Applying it keeps a valid puzzle
    valid and maps its solution to the solution of the new puzzle."""

    cells: np.ndarray  # (81,) source cell per destination cell
    digits: np.ndarray  # (10,) digit map, digits[0] == 0

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return self.digits[np.asarray(grid)[..., self.cells]]

    def inverse(self) -> "Symmetry":
        return Symmetry(cells=np.argsort(self.cells), digits=np.argsort(self.digits))

    @staticmethod
    def random(rng: np.random.Generator) -> "Symmetry":
        """Digit permutation, transpose, band/stack shuffles, row/column shuffles
        within bands/stacks: each drawn uniformly."""
        digits = np.concatenate([[0], rng.permutation(9) + 1])
        rows = np.concatenate([band * 3 + rng.permutation(3) for band in rng.permutation(3)])
        cols = np.concatenate([stack * 3 + rng.permutation(3) for stack in rng.permutation(3)])
        cells = (rows[:, None] * 9 + cols[None, :]).reshape(SIZE)
        if rng.random() < 0.5:
            cells = cells.reshape(9, 9).T.reshape(SIZE)
        return Symmetry(cells=cells, digits=digits)


# One salt per independent draw of a keyed symmetry, so the draws of one key are unrelated.
KEYED_SALTS = {
    "digits": seed_int("sudoku-symmetry", "digits"),
    "bands": seed_int("sudoku-symmetry", "bands"),
    "rows": tuple(seed_int("sudoku-symmetry", "rows", k) for k in range(3)),
    "stacks": seed_int("sudoku-symmetry", "stacks"),
    "cols": tuple(seed_int("sudoku-symmetry", "cols", k) for k in range(3)),
    "transpose": seed_int("sudoku-symmetry", "transpose"),
}


def _keyed_lines(keys: torch.Tensor, order_salt: int, inner_salts: tuple[int, ...]) -> torch.Tensor:
    """(B,) keys -> (B, 9) source row (or column) of each destination row: an order of
    the three bands, then an order of the three rows inside each, as in `Symmetry.random`."""
    groups = keyed.permutations(keys, 3, order_salt)  # (B, 3) source band of each destination band
    inner = torch.stack([keyed.permutations(keys, 3, salt) for salt in inner_salts], dim=1)  # (B, 3, 3)
    return (groups[:, :, None] * 3 + inner).reshape(-1, 9)


def keyed_symmetries(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) int64 keys -> the group element each key names, as `Symmetry` stores one:
    (B, 81) source cell per destination cell and (B, 10) digit maps (0 stays 0). Drawn
    from the same group and distribution as `Symmetry.random`, with tensor ops on the
    keys' device, so a key names the same element whatever batch it is in."""
    digits = torch.cat([torch.zeros_like(keys.long())[:, None], keyed.permutations(keys, 9, KEYED_SALTS["digits"]) + 1], dim=1)  # (B, 10)
    rows = _keyed_lines(keys, KEYED_SALTS["bands"], KEYED_SALTS["rows"])  # (B, 9)
    cols = _keyed_lines(keys, KEYED_SALTS["stacks"], KEYED_SALTS["cols"])  # (B, 9)
    cells = rows[:, :, None] * 9 + cols[:, None, :]  # (B, 9, 9)
    transpose = keyed.integers(keys, 2, KEYED_SALTS["transpose"]).bool()  # (B,)
    cells = torch.where(transpose[:, None, None], cells.transpose(1, 2), cells).reshape(-1, SIZE)  # (B, 81)
    return cells, digits


def augment_keyed(puzzles: torch.Tensor, solutions: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The symmetry `keyed_symmetries` names for each row's key applied to (B, 81)
    puzzles and solutions (the same one to a puzzle and its solution), on their device
    and in their dtype. A pure function of the keys: a resumed or multi-GPU run sees the
    same augmented example at the same stream position. Sudoku labels are complete
    solutions, but a value outside 0..9 (an IGNORE label) would move with its cell and
    keep its value."""
    cells, digits = keyed_symmetries(keys.to(puzzles.device))

    def one(x: torch.Tensor) -> torch.Tensor:
        moved = torch.gather(x.long(), 1, cells)  # (B, 81)
        is_digit = (moved >= 0) & (moved < VOCAB)
        mapped = torch.gather(digits, 1, moved.clamp(0, VOCAB - 1))  # (B, 81)
        return torch.where(is_digit, mapped, moved).to(x.dtype)

    return one(puzzles), one(solutions)


# -------------------------------------------------------------------- canonical form

def _within_group_orders() -> np.ndarray:
    """(1296, 9): every order of 9 rows (or columns) that the Sudoku group allows: an
    order of the three bands, and an order of the three rows inside each band."""
    orders = []
    for bands in itertools.permutations(range(3)):
        for inner in itertools.product(itertools.permutations(range(3)), repeat=3):
            orders.append([bands[b] * 3 + inner[b][i] for b in range(3) for i in range(3)])
    return np.array(orders)


_ORDERS = _within_group_orders()  # (1296, 9)
_POW10 = 10 ** np.arange(8, -1, -1, dtype=np.int64)  # (9,) a row of digits as one integer


def _digit_maps(first_rows: np.ndarray) -> np.ndarray:
    """(K, 9) complete rows -> (K, 10) digit relabelings that turn each row into
    1 2 ... 9 (blank 0 stays 0)."""
    maps = np.zeros((len(first_rows), 10), dtype=np.int64)
    np.put_along_axis(maps, first_rows.astype(np.int64), np.arange(1, 10)[None, :], axis=1)
    return maps


def canonical_form(puzzle: np.ndarray, solution: np.ndarray) -> str:
    """A string that is equal for two puzzles exactly when one is the image of the
    other under the Sudoku symmetry group (digit relabelings, transpose, band and stack
    orders, row and column orders inside them: 9! * 2 * 6^8 elements).

    Searching the group for the lexicographically smallest puzzle directly is slow
    because blanks leave the digit relabeling open. The solution grid pins it down:
    find every group element that maps the (unique) solution to its smallest form —
    the first row becomes 123456789 and the search prunes on the second row — and
    return the smallest image of the puzzle among those elements. Equivalent puzzles
    have solutions related by the same group element, so they get the same set of
    images; inequivalent puzzles cannot share an image. Returns 81 characters with
    '.' for a blank."""
    puzzle, solution = np.asarray(puzzle).reshape(9, 9), np.asarray(solution).reshape(9, 9)
    candidates = []  # (second-row code, transposed, first row, second row, column order index)
    for transposed in (False, True):
        grid = solution.T if transposed else solution
        for r0 in range(9):
            band = r0 // 3 * 3
            maps = _digit_maps(grid[r0][_ORDERS])  # (1296, 10), one per column order
            for r1 in range(band, band + 3):
                if r1 == r0:
                    continue
                second = np.take_along_axis(maps, grid[r1][_ORDERS].astype(np.int64), axis=1)  # (1296, 9)
                codes = second @ _POW10  # (1296,)
                for k in np.flatnonzero(codes == codes.min()):
                    candidates.append((int(codes[k]), transposed, r0, r1, int(k)))
    best_code = min(c[0] for c in candidates)
    best_grid, elements = None, []  # the smallest solution image and the group elements reaching it
    for code, transposed, r0, r1, k in candidates:
        if code != best_code:
            continue
        band = r0 // 3
        r2 = next(r for r in range(3 * band, 3 * band + 3) if r not in (r0, r1))  # the band's remaining row
        others = [b for b in range(3) if b != band]
        grid = solution.T if transposed else solution
        cols = _ORDERS[k]
        digit_map = _digit_maps(grid[r0][cols][None])[0]  # (10,)
        for first, second in (others, others[::-1]):
            for inner_a in itertools.permutations(range(3)):
                for inner_b in itertools.permutations(range(3)):
                    rows = [r0, r1, r2] + [first * 3 + i for i in inner_a] + [second * 3 + i for i in inner_b]
                    image = digit_map[grid[rows][:, cols]].tobytes()
                    if best_grid is None or image < best_grid:
                        best_grid, elements = image, [(transposed, rows, cols, digit_map)]
                    elif image == best_grid:
                        elements.append((transposed, rows, cols, digit_map))
    images = []
    for transposed, rows, cols, digit_map in elements:
        grid = puzzle.T if transposed else puzzle
        images.append(digit_map[grid[rows][:, cols]].reshape(-1))
    smallest = min(images, key=lambda a: a.tobytes())
    return "".join("." if v == 0 else str(int(v)) for v in smallest)
