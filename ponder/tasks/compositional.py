"""Compositional depth: five synthetic tasks whose reasoning depth is a dial.

They test whether a recurrent model trained on shallow problems (depth <= d) solves
deeper ones by running more iterations at test time. Within a task every example has the
same length L and vocabulary V whatever its depth, so one model sees every depth, and
every token a deep example uses also occurs in shallow ones: depth is never announced by
a token (or a count written as a digit) that training did not show. Labels are token ids
of the task's own vocabulary, IGNORE on positions that are not scored; an example is
solved when every scored position is right.

graph-reach  A directed graph on 16 nodes with 32 edges and one source: which nodes are
             reachable from it? Depth = the largest hop distance of a reachable node,
             implied by the edges alone. At least 3 nodes are unreachable, and every node
             has edges in and out, with degrees that hardly differ between the two kinds.
             Every node is named by the same token wherever it occurs (as the source, in
             its own slot, in an edge), so finding a node's edges is matching tokens.
                 [source] [16 node slots: slot j holds node j] [32 edges: from, to]
                 L = 81; the node slots are labelled `yes` / `no`.

graph-lists  The graphs of graph-reach written as adjacency lists: node j's slot is
             followed by the nodes with an edge into j (at most 4, then j again as
             padding), so one hop is a read of those nodes' slots and an OR.
                 [source] [16 blocks: j, in-neighbours of j] ; L = 81; each block's
                 first slot is labelled `yes` / `no`.

bool-depth   A nested boolean expression in prefix notation over the literals 0 and 1
             with & (and), | (or), ^ (xor) and ! (not). Depth = the nesting depth (tree
             height), implied by the expression alone. The value is a fair coin, and
             along the chain of deepest sub-expressions the other operand never decides
             the result, so the deepest literal always matters.
                 [expression, at most 64 tokens] [`.` padding]
                 L = 64; every operator is labelled with the value (0 / 1) of the
                 sub-expression it heads, so position 0 holds the whole expression's value.

khop         A function f on 24 entities, written as a table: slot a holds f(a). Then a
             query entity x followed by k hop markers: f(x), f(f(x)), ..., f^k(x).
             Depth = k, written in unary as a run of the same marker `>`. x, f(x), ...,
             f^k(x) are distinct, so no cycle shortens the chain. One hop is one lookup
             by position (read the slot the entity names).
                 [24 table slots: f(0) .. f(23)] [x] [16 hop slots: `>` * k then `.`]
                 L = 41; hop slot i (1 <= i <= k) is labelled with the entity f^i(x).

cellular     Elementary cellular automaton rule 30 on a ring of 32 cells: the row after s
             steps. Depth = s, the number of step markers `>`, which stand at s
             random slots of 16 (the rest `.`): every slot holds a marker in shallow
             problems too, so a deep problem shows no (position, token) pair that
             training did not.
                 [32 cells: 0 / 1] [16 step slots: s of them `>`, the others `.`]
                 L = 48; the cells are labelled with the row after s steps.

`generate` builds each example from its own seeded generator and computes its labels
with the task's reference solver, which reads the input alone; `check` reruns that
solver, so it never trusts stored labels.
"""

from __future__ import annotations

from collections import deque
import dataclasses
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from ponder.tasks.grids import IGNORE, seed_int


@dataclass(frozen=True)
class TaskSpec:
    name: str
    vocab: int  # V: tokens are 0..V-1, labels too (or IGNORE)
    seq_len: int  # L, the same for every depth
    max_depth: int  # largest depth the generator supports
    default_train_depths: tuple[int, int]  # inclusive range
    default_test_depths: tuple[int, int]  # inclusive range, reaching past training
    tokens: tuple[str, ...]  # a short printable name for each token id
    description: str  # one sentence


# ------------------------------------------------------------------------ graph-reach

GRAPH_NODES = 16
GRAPH_EDGES = 32
GRAPH_MIN_UNREACHABLE = 3  # every graph has this many unreachable nodes or more
GRAPH_MAX_DEPTH = GRAPH_NODES - GRAPH_MIN_UNREACHABLE - 1  # a path needs depth + 1 reachable nodes
GRAPH_SLOTS = 1  # node j's slot is position GRAPH_SLOTS + j; position 0 names the source
GRAPH_EDGES_AT = GRAPH_SLOTS + GRAPH_NODES  # the first edge's position
GRAPH_LEN = GRAPH_EDGES_AT + 2 * GRAPH_EDGES
_G_YES, _G_NO = GRAPH_NODES, GRAPH_NODES + 1  # after the node ids


def _graph_build(rng: np.random.Generator, depth: int) -> tuple[int, np.ndarray]:
    """A graph whose reachable nodes lie at hop distances 1..depth from the source:
    (source id, (E, 2) edges as (from, to) ids in a random order).

    Reachable nodes sit in BFS layers (at least one per layer); an edge out of a
    reachable node may only go to a reachable node at most one layer further, which keeps
    every layer at its distance. Edges among the unreachable nodes and one or two from
    them into the reachable part (so edge direction matters) complete the graph. Every
    node has an edge in and an edge out, the edge count is fixed, each part gets edges in
    proportion to its size and each edge joins nodes with few edges so far, so a node's
    degrees say little about whether it is reachable.
    """
    n = GRAPH_NODES
    reachable = int(rng.integers(depth + 1, n - GRAPH_MIN_UNREACHABLE + 1))
    unreachable = n - reachable
    # abstract nodes: 0 is the source, 0..reachable-1 reachable, the rest unreachable
    layer = np.full(n, -1)  # (n,) hop distance from the source, -1 when unreachable
    layer[: depth + 1] = np.arange(depth + 1)
    layer[depth + 1 : reachable] = rng.integers(1, depth + 1, size=reachable - depth - 1)
    is_reachable = layer >= 0  # (n,)
    within_reach = ~np.eye(n, dtype=bool) & is_reachable[:, None] & is_reachable[None, :]  # (n, n) tail -> head
    within_reach &= layer[None, :] <= layer[:, None] + 1  # keeps every layer at its distance
    within_unreach = ~np.eye(n, dtype=bool) & ~is_reachable[:, None] & ~is_reachable[None, :]
    into_reach = ~is_reachable[:, None] & is_reachable[None, :]
    adjacency = np.zeros((n, n), dtype=bool)  # (n, n) tail -> head
    out_degree, in_degree = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)  # (n,)

    def add_edge(candidates: np.ndarray) -> None:
        """Add one of the (n, n) candidate edges with the fewest edges out of its tail plus
        into its head so far, ties broken at random."""
        score = np.where(candidates & ~adjacency, out_degree[:, None] + in_degree[None, :], 4 * n)  # (n, n)
        best = np.flatnonzero(score == score.min())
        tail, head = divmod(int(best[rng.integers(len(best))]), n)
        adjacency[tail, head] = True
        out_degree[tail] += 1
        in_degree[head] += 1

    node = np.arange(n)
    for v in range(1, reachable):  # a BFS tree: a parent one layer up
        add_edge(within_reach & (layer == layer[v] - 1)[:, None] & (node == v)[None, :])
    cycle = rng.permutation(np.arange(reachable, n))  # unreachable nodes need a way in and out
    for tail, head in zip(cycle, np.roll(cycle, -1)):
        add_edge((node == tail)[:, None] & (node == head)[None, :])
    for a in range(reachable):  # a way out of every reachable node
        if out_degree[a] == 0:
            add_edge(within_reach & (node == a)[:, None])
    if in_degree[0] == 0:  # and into the source
        add_edge(within_reach & (node == 0)[None, :])
    crossing = int(rng.integers(1, 3))
    for _ in range(crossing):
        add_edge(into_reach)
    # the rest, in proportion to the two parts' sizes
    unreach_target = min(round((GRAPH_EDGES - crossing) * unreachable / n), int(within_unreach.sum()))
    reach_target = min(GRAPH_EDGES - crossing - unreach_target, int(within_reach.sum()))
    for _ in range(reach_target - int((adjacency & within_reach).sum())):
        add_edge(within_reach)
    for _ in range(GRAPH_EDGES - int(adjacency.sum())):
        add_edge(within_unreach)

    node_id = rng.permutation(n)  # (n,) abstract node -> the id the example shows
    ordered = np.argwhere(adjacency)[rng.permutation(GRAPH_EDGES)]  # (E, 2) in shown order
    return int(node_id[0]), node_id[ordered]


def _graph_make(rng: np.random.Generator, depth: int) -> np.ndarray:
    """graph-reach: [source] [node slots 0..15] [edges as (from, to) pairs]."""
    source, edges = _graph_build(rng, depth)
    row = np.empty(GRAPH_LEN, dtype=np.int64)
    row[0] = source
    row[GRAPH_SLOTS:GRAPH_EDGES_AT] = np.arange(GRAPH_NODES)
    row[GRAPH_EDGES_AT:] = edges.reshape(-1)
    return row


def _check_source(row: np.ndarray, task: str) -> None:
    if not 0 <= row[0] < GRAPH_NODES:
        raise ValueError(f"{task}: position 0 must name the source, a node id 0..{GRAPH_NODES - 1}")


def _graph_read(row: np.ndarray) -> tuple[int, list[list[int]]]:
    """(source, out-neighbours of each node) of a graph-reach input."""
    _check_source(row, "graph-reach")
    if not np.array_equal(row[GRAPH_SLOTS:GRAPH_EDGES_AT], np.arange(GRAPH_NODES)):
        raise ValueError(f"graph-reach: node slot j (positions {GRAPH_SLOTS}..{GRAPH_EDGES_AT - 1}) must hold node j")
    edges = row[GRAPH_EDGES_AT:].reshape(-1, 2)  # (E, 2)
    if edges.min() < 0 or edges.max() >= GRAPH_NODES:
        raise ValueError(f"graph-reach: edge endpoints must be node ids 0..{GRAPH_NODES - 1}")
    out: list[list[int]] = [[] for _ in range(GRAPH_NODES)]
    for a, b in edges.tolist():
        out[a].append(b)
    return int(row[0]), out


def _hop_distances(source: int, out: list[list[int]]) -> dict[int, int]:
    """Breadth-first search: {node: hop distance from the source} over the reachable nodes."""
    distance = {source: 0}
    queue = deque([source])
    while queue:
        a = queue.popleft()
        for b in out[a]:
            if b not in distance:
                distance[b] = distance[a] + 1
                queue.append(b)
    return distance


def _reach_labels(source: int, out: list[list[int]], length: int, node_at: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels, largest hop distance reached): `yes` / `no` at node j's labelled position
    node_at[j] ((nodes,) positions), IGNORE elsewhere in a row of `length`."""
    distance = _hop_distances(source, out)
    labels = np.full(length, IGNORE, dtype=np.int64)
    labels[node_at] = _G_NO
    labels[node_at[list(distance)]] = _G_YES
    return labels, max(distance.values())


def _graph_solve(row: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels, largest hop distance reached) of a graph-reach input: node slots say yes / no."""
    return _reach_labels(*_graph_read(row), GRAPH_LEN, GRAPH_SLOTS + np.arange(GRAPH_NODES))


def _graph_render(row: np.ndarray, labels: np.ndarray | None) -> str:
    source, _ = _graph_read(row)
    lines = [
        f"graph-reach: {GRAPH_NODES} nodes, source {source}, depth {_graph_solve(row)[1]}",
        "edges  " + " ".join(f"{a}>{b}" for a, b in row[GRAPH_EDGES_AT:].reshape(-1, 2).tolist()),
    ]
    if labels is not None:
        lines += _reach_lines(labels[GRAPH_SLOTS:GRAPH_EDGES_AT])
    return "\n".join(lines)


def _reach_lines(marks: np.ndarray) -> list[str]:
    """The reachable and the unreachable nodes, given each node's (nodes,) yes / no label."""
    return [
        "reachable    " + " ".join(str(v) for v in range(GRAPH_NODES) if marks[v] == _G_YES),
        "unreachable  " + " ".join(str(v) for v in range(GRAPH_NODES) if marks[v] != _G_YES),
    ]


# ------------------------------------------------------------------------ graph-lists

LIST_WIDTH = 4  # in-neighbour slots per node: every graph-lists node has at most 4 edges in
LIST_BLOCK = 1 + LIST_WIDTH  # node j's block: [j, its in-neighbours], at position 1 + j * LIST_BLOCK
LIST_LEN = 1 + GRAPH_NODES * LIST_BLOCK  # 81, as graph-reach


def _lists_make(rng: np.random.Generator, depth: int) -> np.ndarray:
    """graph-lists: the graphs of graph-reach (drawn again from the same generator while a
    node has more than LIST_WIDTH edges in) as [source] then, for each node j, the block
    [j, the nodes with an edge into j in a random order, j itself as padding]. One hop is
    a read of the listed nodes' own blocks and an OR within a block."""
    while True:
        source, edges = _graph_build(rng, depth)
        if np.bincount(edges[:, 1], minlength=GRAPH_NODES).max() <= LIST_WIDTH:
            break
    row = np.empty(LIST_LEN, dtype=np.int64)
    row[0] = source
    for j in range(GRAPH_NODES):
        tails = rng.permutation(edges[edges[:, 1] == j, 0])
        block = row[1 + j * LIST_BLOCK : 1 + (j + 1) * LIST_BLOCK]
        block[:] = j  # an edge from j into j changes nothing, so it pads
        block[1 : 1 + len(tails)] = tails
    return row


def _lists_read(row: np.ndarray) -> tuple[int, list[list[int]]]:
    """(source, out-neighbours of each node) of a graph-lists input."""
    _check_source(row, "graph-lists")
    blocks = row[1:].reshape(GRAPH_NODES, LIST_BLOCK)  # (nodes, 1 + width)
    if not np.array_equal(blocks[:, 0], np.arange(GRAPH_NODES)):
        raise ValueError(f"graph-lists: position 1 + {LIST_BLOCK} * j must hold node j (the head of its block)")
    if blocks.min() < 0 or blocks.max() >= GRAPH_NODES:
        raise ValueError(f"graph-lists: in-neighbours must be node ids 0..{GRAPH_NODES - 1}")
    out: list[list[int]] = [[] for _ in range(GRAPH_NODES)]
    for j, tails in enumerate(blocks[:, 1:].tolist()):
        for a in tails:
            if a != j:
                out[a].append(j)
    return int(row[0]), out


def _lists_solve(row: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels, largest hop distance reached) of a graph-lists input: block heads say yes / no."""
    return _reach_labels(*_lists_read(row), LIST_LEN, 1 + LIST_BLOCK * np.arange(GRAPH_NODES))


def _lists_render(row: np.ndarray, labels: np.ndarray | None) -> str:
    source, _ = _lists_read(row)
    blocks = row[1:].reshape(GRAPH_NODES, LIST_BLOCK)
    lines = [
        f"graph-lists: {GRAPH_NODES} nodes, source {source}, depth {_lists_solve(row)[1]}",
        "edges in  " + "  ".join(f"{j}<" + ",".join(str(a) for a in blocks[j, 1:] if a != j) for j in range(GRAPH_NODES)),
    ]
    if labels is not None:
        lines += _reach_lines(labels[1::LIST_BLOCK])
    return "\n".join(lines)


# ------------------------------------------------------------------------- bool-depth

BOOL_LEN = 64
BOOL_MAX_DEPTH = 12
_B_FALSE, _B_TRUE, _B_AND, _B_OR, _B_XOR, _B_NOT, _B_PAD = range(7)
_B_BINARY: dict[int, Callable[[int, int], int]] = {
    _B_AND: lambda a, b: a & b,
    _B_OR: lambda a, b: a | b,
    _B_XOR: lambda a, b: a ^ b,
}
_B_SIDE_HEIGHT_P = (0.5, 0.3, 0.2)  # height 0, 1, 2 of the subtree hanging off the spine


def _bool_tree(rng: np.random.Generator, height: int, value: int, budget: int, spine: bool) -> list[int]:
    """Prefix tokens of an expression of exactly `height` that evaluates to `value`, at
    most `budget` tokens long (needs budget >= height + 1).

    A binary node has a deep child of height - 1 and a side child of at most that height.
    Along the spine (the chain of deep children from the root) the side child never
    decides the result (it is 1 under &, 0 under |), so the root's value depends on the
    deepest literal and the nesting depth is the real depth of the computation; elsewhere
    the children's values are any pair giving `value`.
    """
    if height == 0:
        return [_B_TRUE if value else _B_FALSE]
    op = int(rng.integers(_B_AND, _B_NOT + 1)) if budget >= height + 2 else _B_NOT
    if op == _B_NOT:
        return [op] + _bool_tree(rng, height - 1, 1 - value, budget - 1, spine)
    side_cap = min(height - 1, budget - height - 2)  # leaves room for the deep child
    if spine:
        side_height = min(int(rng.choice(len(_B_SIDE_HEIGHT_P), p=_B_SIDE_HEIGHT_P)), side_cap)
        side_value = {_B_AND: 1, _B_OR: 0}.get(op, int(rng.integers(2)))
        deep_value = value ^ side_value if op == _B_XOR else value
    else:
        side_height = int(rng.integers(side_cap + 1))
        pairs = [(a, b) for a in (0, 1) for b in (0, 1) if _B_BINARY[op](a, b) == value]
        side_value, deep_value = pairs[int(rng.integers(len(pairs)))]
    side = _bool_tree(rng, side_height, side_value, budget - 1 - height, False)
    deep = _bool_tree(rng, height - 1, deep_value, budget - 1 - len(side), spine)
    return [op] + (side + deep if rng.integers(2) else deep + side)


def _bool_make(rng: np.random.Generator, depth: int) -> np.ndarray:
    """A depth-`depth` expression whose value is a fair coin, padded to BOOL_LEN."""
    expression = _bool_tree(rng, depth, int(rng.integers(2)), BOOL_LEN, spine=True)
    row = np.full(BOOL_LEN, _B_PAD, dtype=np.int64)
    row[: len(expression)] = expression
    return row


def _bool_length(row: np.ndarray) -> int:
    """Number of expression tokens before the padding."""
    pads = np.flatnonzero(row == _B_PAD)
    length = int(pads[0]) if len(pads) else BOOL_LEN
    if length == 0 or (row[length:] != _B_PAD).any() or (row[:length] > _B_NOT).any():
        raise ValueError("bool-depth: expected one prefix expression of 0 1 & | ^ ! followed by '.' padding only")
    return length


def _bool_solve(row: np.ndarray) -> tuple[np.ndarray, int]:
    """Evaluate the prefix expression right to left with a stack of (value, height):
    (labels with each operator's value, nesting depth)."""
    labels = np.full(BOOL_LEN, IGNORE, dtype=np.int64)
    stack: list[tuple[int, int]] = []
    for pos in range(_bool_length(row) - 1, -1, -1):
        token = int(row[pos])
        arity = 0 if token in (_B_FALSE, _B_TRUE) else 1 if token == _B_NOT else 2
        if len(stack) < arity:
            raise ValueError(f"bool-depth: operator at position {pos} is missing an operand")
        if arity == 0:
            stack.append((token - _B_FALSE, 0))
            continue
        if arity == 1:
            value, height = stack.pop()
            value, height = 1 - value, height + 1
        else:
            (left, left_height), (right, right_height) = stack.pop(), stack.pop()
            value, height = _B_BINARY[token](left, right), max(left_height, right_height) + 1
        labels[pos] = _B_FALSE + value
        stack.append((value, height))
    if len(stack) != 1:
        raise ValueError("bool-depth: the tokens form more than one expression")
    return labels, stack[0][1]


def _bool_render(row: np.ndarray, labels: np.ndarray | None) -> str:
    names = TASKS["bool-depth"].tokens
    length = _bool_length(row)
    infix: list[str] = []  # a stack of rendered sub-expressions, read right to left
    for token in row[:length][::-1].tolist():
        if token in _B_BINARY:
            left, right = infix.pop(), infix.pop()
            infix.append(f"({left} {names[token]} {right})")
        else:
            infix.append(names[token] + (infix.pop() if token == _B_NOT else ""))
    lines = [
        f"bool-depth: depth {_bool_solve(row)[1]}",
        f"expr    {infix[0]}",
        "prefix  " + " ".join(names[t] for t in row[:length].tolist()),
    ]
    if labels is not None:
        lines.append("values  " + " ".join(names[v] if 0 <= v < len(names) else " " for v in labels[:length].tolist()).rstrip())
    return "\n".join(lines)


# ------------------------------------------------------------------------------- khop

KHOP_ENTITIES = 24
KHOP_MAX_DEPTH = 16
KHOP_QUERY = KHOP_ENTITIES  # position of the query entity; the table comes before it, the hop slots after
KHOP_LEN = KHOP_QUERY + 1 + KHOP_MAX_DEPTH
_K_HOP, _K_PAD = KHOP_ENTITIES, KHOP_ENTITIES + 1  # entity ids come first


def _khop_make(rng: np.random.Generator, depth: int) -> np.ndarray:
    """A random function f with f^1(x)..f^depth(x) all distinct and different from x, so
    no cycle lets a shallow answer stand in for a deep one."""
    n = KHOP_ENTITIES
    chain = rng.permutation(n)[: depth + 1]  # x, f(x), ..., f^depth(x)
    image = rng.integers(n, size=n)  # (n,) f
    image[chain[:-1]] = chain[1:]
    row = np.full(KHOP_LEN, _K_PAD, dtype=np.int64)
    row[:KHOP_QUERY] = image
    row[KHOP_QUERY] = chain[0]
    row[KHOP_QUERY + 1 : KHOP_QUERY + 1 + depth] = _K_HOP
    return row


def _unary_count(slots: np.ndarray, marker: int, pad: int, task: str) -> int:
    """Length of the marker run that opens `slots` (the rest must be padding)."""
    count = int(np.argmin(slots == marker)) if (slots != marker).any() else len(slots)
    if count == 0 or (slots[count:] != pad).any():
        raise ValueError(f"{task}: the depth slots must be a run of at least one marker followed by padding")
    return count


def _khop_read(row: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(f as an (n,) array, query entity, hop count) of a khop input."""
    entities = row[: KHOP_QUERY + 1]  # the table and the query
    if entities.min() < 0 or entities.max() >= KHOP_ENTITIES:
        raise ValueError(f"khop: the table slots and the query must hold entity ids 0..{KHOP_ENTITIES - 1}")
    return row[:KHOP_QUERY].astype(np.int64), int(row[KHOP_QUERY]), _unary_count(row[KHOP_QUERY + 1 :], _K_HOP, _K_PAD, "khop")


def _khop_solve(row: np.ndarray) -> tuple[np.ndarray, int]:
    """Follow f from the query one hop per marker: (labels, hop count)."""
    image, entity, hops = _khop_read(row)
    labels = np.full(KHOP_LEN, IGNORE, dtype=np.int64)
    for i in range(1, hops + 1):
        entity = int(image[entity])
        labels[KHOP_QUERY + i] = entity
    return labels, hops


def _khop_render(row: np.ndarray, labels: np.ndarray | None) -> str:
    names = TASKS["khop"].tokens
    _, query, hops = _khop_read(row)
    lines = [
        f"khop: depth {hops} (hops)",
        "facts  " + " ".join(f"{names[a]}>{names[b]}" for a, b in enumerate(row[:KHOP_QUERY].tolist())),
        f"query  {names[query]}",
    ]
    if labels is not None:
        chain = labels[KHOP_QUERY + 1 : KHOP_QUERY + 1 + hops].tolist()
        lines.append("chain  " + " > ".join([names[query]] + [names[e] if 0 <= e < len(names) else "?" for e in chain]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- cellular

CA_WIDTH = 32
CA_MAX_DEPTH = 16
CA_RULE = 30  # Wolfram number: chaotic, so s steps are not predictable without running them
CA_LEN = CA_WIDTH + CA_MAX_DEPTH
_C_STEP, _C_PAD = 2, 3  # after the cell states 0 and 1
_CA_LEFT = np.roll(np.arange(CA_WIDTH), 1)  # (W,) index of each cell's left neighbour on the ring
_CA_RIGHT = np.roll(np.arange(CA_WIDTH), -1)


def _ca_step(cells: np.ndarray) -> np.ndarray:
    """One step on a ring: the new cell is bit (4 left + 2 centre + right) of the rule."""
    return (CA_RULE >> (4 * cells[_CA_LEFT] + 2 * cells + cells[_CA_RIGHT])) & 1


def _ca_make(rng: np.random.Generator, depth: int) -> np.ndarray:
    """A uniformly random starting row and `depth` step markers at random slots."""
    row = np.full(CA_LEN, _C_PAD, dtype=np.int64)
    row[:CA_WIDTH] = rng.integers(2, size=CA_WIDTH)
    row[CA_WIDTH + rng.choice(CA_MAX_DEPTH, size=depth, replace=False)] = _C_STEP
    return row


def _ca_read(row: np.ndarray) -> tuple[np.ndarray, int]:
    """(starting cells, step count) of a cellular input."""
    cells = row[:CA_WIDTH]
    if not np.isin(cells, (0, 1)).all():
        raise ValueError("cellular: the first cells must be 0 or 1")
    slots = row[CA_WIDTH:]
    steps = int((slots == _C_STEP).sum())
    if steps == 0 or not np.isin(slots, (_C_STEP, _C_PAD)).all():
        raise ValueError("cellular: the step slots must hold at least one marker '>' and otherwise '.'")
    return cells, steps


def _ca_solve(row: np.ndarray) -> tuple[np.ndarray, int]:
    """Run the rule once per marker: (labels, step count)."""
    cells, steps = _ca_read(row)
    for _ in range(steps):
        cells = _ca_step(cells)
    labels = np.full(CA_LEN, IGNORE, dtype=np.int64)
    labels[:CA_WIDTH] = cells
    return labels, steps


def _ca_render(row: np.ndarray, labels: np.ndarray | None) -> str:
    cells, steps = _ca_read(row)
    picture = {0: ".", 1: "#"}
    lines = [f"cellular: rule {CA_RULE}, depth {steps} (steps)", "start  " + "".join(picture[c] for c in cells.tolist())]
    if labels is not None:
        lines.append("after  " + "".join(picture.get(c, "?") for c in labels[:CA_WIDTH].tolist()))
    return "\n".join(lines)


# --------------------------------------------------------------------------- registry


class _Solver(NamedTuple):
    make: Callable[[np.random.Generator, int], np.ndarray]  # (rng, depth) -> (L,) tokens
    solve: Callable[[np.ndarray], tuple[np.ndarray, int]]  # (L,) tokens -> ((L,) labels, depth)
    render: Callable[[np.ndarray, np.ndarray | None], str]


_GRAPH_REACH = TaskSpec(
    name="graph-reach",
    vocab=GRAPH_NODES + 2,
    seq_len=GRAPH_LEN,
    max_depth=GRAPH_MAX_DEPTH,
    default_train_depths=(1, 4),
    default_test_depths=(1, 8),
    tokens=tuple(str(v) for v in range(GRAPH_NODES)) + ("yes", "no"),
    description="Which nodes of a 16-node directed graph are reachable from the source.",
)

TASKS: dict[str, TaskSpec] = {
    "graph-reach": _GRAPH_REACH,
    "graph-lists": dataclasses.replace(
        _GRAPH_REACH, name="graph-lists", seq_len=LIST_LEN,
        description="graph-reach's question with each node's in-neighbours listed beside it.",
    ),
    "bool-depth": TaskSpec(
        name="bool-depth",
        vocab=7,
        seq_len=BOOL_LEN,
        max_depth=BOOL_MAX_DEPTH,
        default_train_depths=(1, 4),
        default_test_depths=(1, 8),
        tokens=("0", "1", "&", "|", "^", "!", "."),
        description="The value of every operator of a nested boolean expression in prefix notation.",
    ),
    "khop": TaskSpec(
        name="khop",
        vocab=KHOP_ENTITIES + 2,
        seq_len=KHOP_LEN,
        max_depth=KHOP_MAX_DEPTH,
        default_train_depths=(1, 4),
        default_test_depths=(1, 8),
        tokens=tuple(chr(ord("a") + e) for e in range(KHOP_ENTITIES)) + (">", "."),
        description="Follow a table of facts a -> f(a) from a query entity for k hops.",
    ),
    "cellular": TaskSpec(
        name="cellular",
        vocab=4,
        seq_len=CA_LEN,
        max_depth=CA_MAX_DEPTH,
        default_train_depths=(1, 4),
        default_test_depths=(1, 8),
        tokens=("0", "1", ">", "."),
        description=f"The row of elementary cellular automaton rule {CA_RULE} on a 32-cell ring after s steps.",
    ),
}

_SOLVERS: dict[str, _Solver] = {
    "graph-reach": _Solver(_graph_make, _graph_solve, _graph_render),
    "graph-lists": _Solver(_lists_make, _lists_solve, _lists_render),
    "bool-depth": _Solver(_bool_make, _bool_solve, _bool_render),
    "khop": _Solver(_khop_make, _khop_solve, _khop_render),
    "cellular": _Solver(_ca_make, _ca_solve, _ca_render),
}


def _spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"unknown compositional task {task!r}; expected one of: {', '.join(TASKS)}")
    return TASKS[task]


def _rows(spec: TaskSpec, array: np.ndarray, what: str) -> np.ndarray:
    """`array` as (n, L) int64, or a clear error."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] != spec.seq_len:
        raise ValueError(f"{spec.name}: expected {what} of shape (n, {spec.seq_len}), got {array.shape}")
    return array.astype(np.int64, copy=False)


def generate(task: str, n: int, depths: tuple[int, int], seed: int, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n examples with depth drawn uniformly from the inclusive range `depths`.
    Returns inputs (n, L) int64, labels (n, L) int64 (IGNORE where unscored), depth (n,) int64.

    Example i has its own generator seeded by (task, seed, split, depths, i), so the bytes
    depend on nothing else and a smaller n gives a prefix of a larger one. Labels come
    from the reference solver, which also re-derives each example's depth from its input.
    """
    spec = _spec(task)
    low, high = (int(d) for d in depths)
    if not 1 <= low <= high <= spec.max_depth:
        raise ValueError(f"{task}: depths {tuple(depths)} must be an inclusive range within 1..{spec.max_depth}")
    if n < 0:
        raise ValueError(f"{task}: expected n >= 0 examples, got {n}")
    solver = _SOLVERS[task]
    inputs = np.empty((n, spec.seq_len), dtype=np.int64)  # (n, L)
    labels = np.empty((n, spec.seq_len), dtype=np.int64)  # (n, L)
    depth = np.empty(n, dtype=np.int64)  # (n,)
    for i in range(n):
        rng = np.random.default_rng(seed_int("compositional", task, seed, split, low, high, i))
        depth[i] = rng.integers(low, high + 1)
        inputs[i] = solver.make(rng, int(depth[i]))
        labels[i], solved_depth = solver.solve(inputs[i])
        if solved_depth != depth[i]:
            raise RuntimeError(f"{task}: example {i} was built for depth {depth[i]} but solves at depth {solved_depth}")
    return inputs, labels, depth


def check(task: str, inputs: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """(n,) bool: whether each predicted (n, L) label row is the correct answer for its input,
    recomputed from the input alone with the reference solver (not by comparing to stored
    labels). Only scored positions count; what is predicted elsewhere is ignored."""
    spec = _spec(task)
    inputs, predictions = _rows(spec, inputs, "inputs"), _rows(spec, predictions, "predictions")
    if len(inputs) != len(predictions):
        raise ValueError(f"{task}: {len(inputs)} inputs but {len(predictions)} prediction rows")
    solve = _SOLVERS[task].solve
    truth = np.stack([solve(row)[0] for row in inputs]) if len(inputs) else np.empty_like(inputs)  # (n, L)
    return ((predictions == truth) | (truth == IGNORE)).all(axis=1)


def render(task: str, inputs_row: np.ndarray, labels_row: np.ndarray | None = None) -> str:
    """A few human-readable terminal lines showing one example (input and, if given, its answer)."""
    spec = _spec(task)
    row = _rows(spec, np.asarray(inputs_row)[None], "an input row")[0]
    labels = None if labels_row is None else _rows(spec, np.asarray(labels_row)[None], "a label row")[0]
    return _SOLVERS[task].render(row, labels)
