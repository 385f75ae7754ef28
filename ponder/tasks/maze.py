"""30x30 mazes (Maze-Hard): tokens, the CSV reader, a shortest-path validator, the
dihedral augmentation, a seeded generator and a text picture.

A maze is 900 cells in row-major order. The question marks walls, open cells, the start
S and the goal G; the answer is the same grid with the cells of one shortest S-to-G path
(4-neighbour moves, S and G excluded) marked `o`. S and G stay `S` and `G` in the answer.
Every one of the 900 answer positions is a label.

Tokens (`VOCAB` = 6); token t is the character `ALPHABET[t]`:

    0  pad   never in the data (shown as '?')
    1  '#'   wall
    2  ' '   open cell
    3  'S'   start
    4  'G'   goal
    5  'o'   a cell of the shortest path (answers only)

Path lengths count cells, S and G included: Maze-Hard keeps mazes whose shortest path
has at least 110 cells.

How the generated distribution differs from Maze-Hard (measured on the 1000 mazes of
maze-30x30-hard-1k/train.csv and on `generate(1000, seed=0)`):

    Maze-Hard mazes are not corridor mazes: their walls look independent from cell to
    cell (wall density 0.371; horizontal or vertical wall pairs 0.138 against 0.137 for
    independent cells, 2x2 wall blocks 0.019 against 0.019), so the generator makes
    each cell a wall with a density drawn per maze from `WALL_DENSITY`, then draws S
    and G (see `generate_maze`).

                                    Maze-Hard train    generated
    open-cell fraction, mean (sd)   0.629 (0.027)      0.628 (0.025)
    open-cell fraction, min..max    0.550..0.723       0.544..0.709
    path cells, min / median / max  110 / 113 / 147    110 / 113 / 138
    path cells, 90th percentile     122                119
    unique shortest path            0.0%               0.0%
    answer equals `solve(question)` 100%               100% (by construction)

    The long-path tail is a little lighter (Maze-Hard's test split even reaches 154
    cells) because goals are weighted up to `GOAL_WEIGHT_CAP` rather than sampled
    exactly uniformly over (S, G) pairs; exact sampling was about 15 times slower.
    WALL_DENSITY was fitted by eye, not estimated. Whatever process made Maze-Hard is
    unknown; these are the only statistics compared.

The answer's path among the many shortest ones follows one fixed rule (`solve`): BFS
from S that visits neighbours down, left, right, up, each cell's parent being the cell
that reached it first. That rule reproduces all 2000 answers of maze-30x30-hard-1k
(train and test), so generated labels follow the same convention. A dihedral
augmentation keeps a path shortest but not this convention, so score augmented data
with `valid_answers`, not exact match.
"""

from __future__ import annotations

import csv
import io
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ponder.errors import PonderInputError, read_text
from ponder.tasks import keyed
from ponder.tasks.grids import dihedral, seed_int

SIDE = 30
SIZE = SIDE * SIDE
ALPHABET = "?# SGo"  # token t is ALPHABET[t]
VOCAB = len(ALPHABET)
PAD, WALL, OPEN, START, GOAL, PATH = range(VOCAB)
QUESTION_CHARS = "# SG"
ANSWER_CHARS = "# SGo"
HEADER = "source,question,answer,rating"

WALL_DENSITY = (0.30, 0.45)  # per-maze wall probability is uniform in this range
GOAL_WEIGHT_CAP = 30  # see generate_maze

_TOKEN = {ch: t for t, ch in enumerate(ALPHABET) if t != PAD}
# Neighbours in the order down, left, right, up: the tie-break Maze-Hard's answers use.
_NEIGHBOURS = [
    tuple((r + dr) * SIDE + c + dc for dr, dc in ((1, 0), (0, -1), (0, 1), (-1, 0)) if 0 <= r + dr < SIDE and 0 <= c + dc < SIDE)
    for r in range(SIDE)
    for c in range(SIDE)
]
# _SYMMETRY_CELLS[k][i] is the source cell of destination cell i under dihedral symmetry k.
_SYMMETRY_CELLS = torch.from_numpy(np.stack([dihedral(np.arange(SIZE).reshape(SIDE, SIDE), k).reshape(SIZE) for k in range(8)]))  # (8, 900)


# ----------------------------------------------------------------------------- tokens

def encode(text: str, where: str = "maze") -> np.ndarray:
    """900 characters of '#', ' ', 'S', 'G', 'o' -> (900,) int8 tokens. Only the
    characters are checked; what a question or answer may hold is `read_csv`'s job."""
    if len(text) != SIZE:
        raise PonderInputError(f"{where} has {len(text)} characters; expected {SIZE} (a {SIDE}x{SIDE} grid, row-major)")
    tokens = [_TOKEN.get(ch, PAD) for ch in text]
    if PAD in tokens:
        i = tokens.index(PAD)
        raise PonderInputError(f"{where} has an unexpected character {text[i]!r} at {_cell(i)}; expected one of {ANSWER_CHARS!r}")
    return np.array(tokens, dtype=np.int8)


def decode(tokens) -> str:
    """(900,) tokens -> the 900-character text (a pad token shows as '?')."""
    return "".join(ALPHABET[int(t)] for t in _numpy(tokens).reshape(-1))


def render(tokens_row, labels_row=None) -> str:
    """The maze as 30 lines of 30 characters; with labels, their path cells ('o') are
    drawn over the question, so a model's prediction can be shown on its maze."""
    cells = _numpy(tokens_row).reshape(SIZE).copy()
    if labels_row is not None:
        labels = _numpy(labels_row).reshape(SIZE)
        cells[labels == PATH] = PATH
    text = decode(cells)
    return "\n".join(text[r * SIDE:(r + 1) * SIDE] for r in range(SIDE))


# ------------------------------------------------------------------------------ paths

def _bfs(passable: Sequence[bool], start: int) -> tuple[list[int], list[int]]:
    """Steps from `start` to every cell (-1 where unreachable) and each reached cell's
    BFS parent (the first cell to reach it, neighbours taken down, left, right, up)."""
    dist = [-1] * SIZE
    parent = [-1] * SIZE
    dist[start] = 0
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for v in _NEIGHBOURS[u]:
            if passable[v] and dist[v] < 0:
                dist[v] = dist[u] + 1
                parent[v] = u
                queue.append(v)
    return dist, parent


def _mark_path(question: np.ndarray, parent: list[int], goal: int) -> np.ndarray:
    """The answer: `question` with the parent chain from G back to S marked 'o'."""
    answer = question.copy()
    cell = parent[goal]
    while question[cell] != START:
        answer[cell] = PATH
        cell = parent[cell]
    return answer


def solve(question) -> np.ndarray | None:
    """The answer Maze-Hard would store for a (900,) question: one shortest path, chosen
    by the BFS tie-break described in the module docstring; None when G is unreachable."""
    q = _numpy(question).reshape(SIZE).astype(np.int8)
    start, goal = _only(q, START), _only(q, GOAL)
    if start is None or goal is None:
        raise PonderInputError(f"question: {(q == START).sum()} S and {(q == GOAL).sum()} G; expected exactly one of each")
    dist, parent = _bfs((q != WALL).tolist(), start)
    return None if dist[goal] < 0 else _mark_path(q, parent, goal)


def is_shortest_path(question_tokens, answer_tokens) -> bool:
    """True when the answer keeps the question's walls, S and G and its 'o' cells plus S
    and G are exactly the cells of some shortest S-to-G path (any of them, not only the
    stored one). A question without exactly one S and one G has no valid answer."""
    q = _numpy(question_tokens).reshape(SIZE)
    a = _numpy(answer_tokens).reshape(SIZE)
    start, goal = _only(q, START), _only(q, GOAL)
    if start is None or goal is None or not np.isin(q, (WALL, OPEN, START, GOAL)).all():
        return False
    fixed = q != OPEN
    if (a[fixed] != q[fixed]).any() or not np.isin(a[~fixed], (OPEN, PATH)).all():
        return False
    shortest = _bfs((q != WALL).tolist(), start)[0][goal]
    on_path = np.isin(a, (START, GOAL, PATH))
    along_path = _bfs(on_path.tolist(), start)[0][goal]
    # Reaching G in `shortest` steps inside the marked cells visits shortest + 1 of them;
    # with exactly that many marked, the marks are that path and nothing else.
    return shortest >= 0 and along_path == shortest and int(on_path.sum()) == shortest + 1


def valid_answers(questions, answers) -> torch.Tensor:
    """(n, 900) questions and answers (numpy or torch) -> (n,) bool: `is_shortest_path`
    per row. The score for mazes, where any shortest path is right."""
    q, a = _numpy(questions), _numpy(answers)
    if q.ndim != 2 or q.shape != a.shape or q.shape[1] != SIZE:
        raise ValueError(f"questions {q.shape} and answers {a.shape}: expected the same (n, {SIZE}) shape")
    return torch.tensor([is_shortest_path(qi, ai) for qi, ai in zip(q, a)], dtype=torch.bool)


# ------------------------------------------------- any shortest path as the training target

FAR = SIZE  # a distance no cell reaches: "unreached"
# _NEIGHBOUR_INDEX[i] holds cell i's neighbours down, left, right, up; SIZE where off the grid.
_NEIGHBOUR_INDEX = torch.tensor([
    [(r + dr) * SIDE + c + dc if 0 <= r + dr < SIDE and 0 <= c + dc < SIDE else SIZE for dr, dc in ((1, 0), (0, -1), (0, 1), (-1, 0))]
    for r in range(SIDE) for c in range(SIDE)
])  # (900, 4)


def _neighbour_min(x: torch.Tensor, fill: float) -> torch.Tensor:
    """(B, 900) -> (B, 900): each cell's smallest value among its 4 neighbours (`fill` off the grid)."""
    grid = torch.nn.functional.pad(x.view(-1, SIDE, SIDE), (1, 1, 1, 1), value=fill)  # (B, 32, 32)
    sides = (grid[:, 2:, 1:-1], grid[:, 1:-1, :-2], grid[:, 1:-1, 2:], grid[:, :-2, 1:-1])  # down, left, right, up
    return torch.stack(sides).amin(dim=0).reshape(x.shape)


def grid_distances(passable: torch.Tensor, source: torch.Tensor, max_steps: int = SIZE - 1,
                   stop_when: torch.Tensor | None = None) -> torch.Tensor:
    """BFS steps over 4-neighbour moves, vectorised over a batch: (B, 900) bool passable
    cells and (B, 900) bool source cells -> (B, 900) int64 steps from the nearest source
    (`FAR` where unreachable, or farther than `max_steps`). One sweep per step; it stops
    early once every row has reached its `stop_when` cell (B, 900 bool), if given."""
    dist = torch.where(source, 0, FAR)
    for step in range(1, max_steps + 1):
        reached = passable & (dist == FAR) & (_neighbour_min(dist, FAR) == step - 1)
        if not bool(reached.any()):
            break
        dist = torch.where(reached, step, dist)
        if stop_when is not None and bool(((dist < FAR) | ~stop_when).all()):
            break
    return dist


@torch.no_grad()
def nearest_shortest_path(inputs: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The loss target that accepts any shortest path: (B, 900) questions, labels and
    (B, 900, V) logits -> (B, 900) labels whose 'o' cells are the shortest S-to-G path
    the model already finds likeliest, the one that minimises the cross-entropy over
    all shortest paths (marking a cell 'o' costs log p(' ') - log p('o') more than
    leaving it open). A dynamic programme over the layers of the shortest-path graph
    (cells with d(S, c) + d(c, G) = d(S, G)) finds it exactly; a maze whose G cannot
    be reached keeps its labels. With it, dihedral augmentation no longer asks for
    one tie-breaking rule among equally short paths."""
    B = inputs.shape[0]
    passable = inputs != WALL
    from_start = grid_distances(passable, inputs == START, stop_when=inputs == GOAL)  # (B, 900), exact up to d(S, G)
    goal = (inputs == GOAL).float().argmax(dim=1)  # (B,)
    length = from_start.gather(1, goal[:, None])  # (B, 1) steps S -> G
    reachable = length[:, 0] < FAR
    steps = int(length[reachable].max()) if bool(reachable.any()) else 0
    to_goal = grid_distances(passable, inputs == GOAL, max_steps=steps)
    on_some_path = passable & (from_start + to_goal == length)  # (B, 900), S and G included
    logp = logits.float().log_softmax(dim=-1)
    cost = torch.where(inputs == OPEN, logp[..., OPEN] - logp[..., PATH], 0.0)  # (B, 900)
    # best[c]: the least cost of a shortest path from S to c (S and c included), layer by layer
    best = torch.where(inputs == START, 0.0, torch.inf)
    for k in range(1, steps + 1):
        layer = on_some_path & (from_start == k)
        best = torch.where(layer, cost + _neighbour_min(best, torch.inf), best)
    # walk back from G, each time to the cheapest neighbour one step nearer S
    index = _NEIGHBOUR_INDEX.to(inputs.device)
    best_padded = torch.cat([best, best.new_full((B, 1), torch.inf)], dim=1)  # (B, 901): off-grid is never chosen
    dist_padded = torch.cat([from_start, from_start.new_full((B, 1), FAR)], dim=1)
    rows = torch.arange(B, device=inputs.device)
    cell = goal.clone()
    path = torch.zeros_like(passable)
    for _ in range(steps - 1):
        here = from_start[rows, cell]  # (B,)
        moving = reachable & (here > 1)  # the predecessor is not S yet
        neighbours = index[cell]  # (B, 4)
        nearer = dist_padded.gather(1, neighbours) == (here - 1)[:, None]
        value = torch.where(nearer, best_padded.gather(1, neighbours), torch.inf)
        previous = neighbours.gather(1, value.argmin(dim=1, keepdim=True))[:, 0]
        cell = torch.where(moving, previous, cell)
        path[rows[moving], cell[moving]] = True
    target = torch.where(path, PATH, torch.where(labels == PATH, OPEN, labels))
    return torch.where(reachable[:, None], target, labels)


# ------------------------------------------------------------------------------ files

def read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read Maze-Hard's CSV layout `source,question,answer,rating` into (n, 900) int8
    questions and answers. Every answer must mark a shortest path of its question."""
    path = Path(path)
    questions, answers = [], []
    f = io.StringIO(read_text(path, "expected a maze CSV file"), newline="")  # read whole: a bad byte is a one-line error
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise PonderInputError(f"{path}: empty file; expected a header '{HEADER}'")
        cols = [h.strip().lower() for h in header]
        if "question" not in cols or "answer" not in cols:
            raise PonderInputError(f"{path}:1: header {','.join(header)!r} lacks 'question' or 'answer'; expected '{HEADER}'")
        qi, ai = cols.index("question"), cols.index("answer")
        for row in reader:
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(cols):
                raise PonderInputError(f"{where}: {len(row)} fields; expected {len(cols)} ({','.join(cols)})")
            q, a = _parse_row(row[qi], row[ai], where)
            questions.append(q)
            answers.append(a)
    if not questions:
        raise PonderInputError(f"{path}: no mazes found; expected rows after the header '{HEADER}'")
    return np.stack(questions), np.stack(answers)


def _parse_row(question: str, answer: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Check and encode one question and its answer; errors name `where`."""
    q = encode(question, f"{where}: question")
    a = encode(answer, f"{where}: answer")
    if (q == PATH).any():
        raise PonderInputError(f"{where}: question has a path mark 'o' at {_cell(int(np.argmax(q == PATH)))}; expected only {QUESTION_CHARS!r}")
    for token, name in ((START, "S"), (GOAL, "G")):
        if (q == token).sum() != 1:
            raise PonderInputError(f"{where}: question has {(q == token).sum()} {name}; expected exactly one")
    # The answer keeps every wall, S and G, and may turn an open cell into 'o' only.
    differs = np.flatnonzero((q != a) & ~((q == OPEN) & (a == PATH)))
    if len(differs):
        i = int(differs[0])
        raise PonderInputError(
            f"{where}: answer has {ALPHABET[a[i]]!r} where the question has {ALPHABET[q[i]]!r} at {_cell(i)}; "
            "expected the question's walls, S and G with 'o' only on open cells"
        )
    best = solve(q)
    if best is None:
        raise PonderInputError(f"{where}: G cannot be reached from S; expected a solvable maze")
    if not is_shortest_path(q, a):
        marked, shortest = int((a == PATH).sum()), int((best == PATH).sum())
        raise PonderInputError(f"{where}: the {marked} 'o' cells are not a shortest S-to-G path; expected a connected path of {shortest} 'o' cells")
    return q, a


# ---------------------------------------------------------------------- augmentations

def apply_symmetry(grids: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Row b of (B, 900) `grids` transformed by dihedral symmetry `ks[b]` (0..7, as in
    `ponder.tasks.grids.dihedral` on the 30x30 grid); undo it with DIHEDRAL_INVERSE."""
    cells = _SYMMETRY_CELLS.to(grids.device)[ks.to(grids.device)]  # (B, 900)
    return torch.gather(grids, 1, cells)


KEYED_SALT = 0x3A2E  # the salt of the keyed draw of a maze's symmetry


def augment_keyed(inputs: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation or reflection each row's key names (`keyed.integers(keys, 8,
    KEYED_SALT)`) applied to (B, 900) inputs and labels, the same one to a maze and its
    answer, on their device and in their dtype. A pure function of the keys, so every
    run sees the same augmented maze at the same stream position; labels only move, so
    IGNORE stays IGNORE."""
    ks = keyed.integers(keys.to(inputs.device), 8, KEYED_SALT)  # (B,)
    return apply_symmetry(inputs, ks), apply_symmetry(labels, ks)


# -------------------------------------------------------------------------- generator

def generate_maze(rng: np.random.Generator, min_path: int = 110) -> tuple[np.ndarray, np.ndarray]:
    """One (question, answer) pair of (900,) int8 tokens whose shortest path has at
    least `min_path` cells.

    Each cell is a wall with a probability drawn per maze from WALL_DENSITY; S is a
    uniform open cell and G a uniform cell at least `min_path` cells away. Drawing S
    and G uniformly over all open pairs and rejecting short paths would weight each
    (maze, S) by its number of far goals; accepting with probability
    min(goals, GOAL_WEIGHT_CAP) / GOAL_WEIGHT_CAP approximates that at a fraction of
    the cost, and keeps the longer paths Maze-Hard has."""
    while True:
        wall_density = rng.uniform(*WALL_DENSITY)
        passable = rng.random(SIZE) >= wall_density  # (900,)
        open_cells = np.flatnonzero(passable)
        if len(open_cells) < min_path:
            continue
        start = int(open_cells[rng.integers(len(open_cells))])
        dist, parent = _bfs(passable.tolist(), start)
        if max(dist) < min_path - 1:  # the usual case; skips the array work below
            continue
        goals = np.flatnonzero(np.array(dist) >= min_path - 1)
        if rng.random() * GOAL_WEIGHT_CAP >= len(goals):
            continue
        goal = int(goals[rng.integers(len(goals))])
        question = np.where(passable, OPEN, WALL).astype(np.int8)
        question[start], question[goal] = START, GOAL
        return question, _mark_path(question, parent, goal)


def generate(n: int, seed: int | str, min_path: int = 110, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`n` seeded mazes and answers as two (n, 900) int8 arrays. The same (seed,
    min_path) gives the same bytes on every machine, and the first k of n mazes are
    `generate(k, ...)`. About 3.5 mazes a second on one CPU core at min_path=110;
    paths much longer than 140 cells are rare, so a `min_path` far above that makes
    generation very slow."""
    if n < 0:
        raise PonderInputError(f"n: {n}; expected a count >= 0")
    if not 2 <= min_path <= SIZE:
        raise PonderInputError(f"min_path: {min_path}; expected 2..{SIZE} cells (S and G included)")
    rng = np.random.default_rng(seed_int("maze", seed, min_path))
    questions = np.zeros((n, SIZE), dtype=np.int8)
    answers = np.zeros((n, SIZE), dtype=np.int8)
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"generating {n} mazes (path >= {min_path})", unit="maze", leave=False)
    for k in it:
        questions[k], answers[k] = generate_maze(rng, min_path)
    return questions, answers


# ---------------------------------------------------------------------------- helpers

def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _only(tokens: np.ndarray, token: int) -> int | None:
    """The index of the single cell holding `token`, or None if it is not exactly one."""
    where = np.flatnonzero(tokens == token)
    return int(where[0]) if len(where) == 1 else None


def _cell(i: int) -> str:
    return f"row {i // SIDE}, column {i % SIDE}"
