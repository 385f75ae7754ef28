from __future__ import annotations

import numpy as np
import pytest

from ponder.tasks.compositional import TASKS, check, generate, render
from ponder.tasks.grids import IGNORE

NAMES = sorted(TASKS)


def token(task: str, name: str) -> int:
    return TASKS[task].tokens.index(name)


def full_range(task: str) -> tuple[int, int]:
    return (1, TASKS[task].max_depth)


def test_specs_are_consistent():
    assert NAMES == sorted(["graph-reach", "graph-lists", "bool-depth", "khop", "cellular"])
    for name, spec in TASKS.items():
        assert spec.name == name
        assert len(spec.tokens) == spec.vocab == len(set(spec.tokens))
        assert spec.seq_len <= 128
        train_low, train_high = spec.default_train_depths
        test_low, test_high = spec.default_test_depths
        assert 1 <= train_low <= train_high < test_high <= spec.max_depth
        assert 1 <= test_low <= test_high


@pytest.mark.parametrize("task", NAMES)
def test_shapes_dtypes_and_ranges(task):
    spec = TASKS[task]
    inputs, labels, depth = generate(task, 30, spec.default_test_depths, seed=0, split="train")
    assert inputs.shape == labels.shape == (30, spec.seq_len)
    assert depth.shape == (30,)
    assert inputs.dtype == labels.dtype == depth.dtype == np.int64
    assert inputs.min() >= 0 and inputs.max() < spec.vocab
    scored = labels != IGNORE
    assert labels[scored].min() >= 0 and labels[scored].max() < spec.vocab
    assert scored.any(axis=1).all()
    low, high = spec.default_test_depths
    assert depth.min() >= low and depth.max() <= high
    assert len(np.unique(depth)) > 1


@pytest.mark.parametrize("task", NAMES)
def test_generation_is_seeded(task):
    a = generate(task, 12, (1, 4), seed=3, split="train")
    b = generate(task, 12, (1, 4), seed=3, split="train")
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert not np.array_equal(generate(task, 12, (1, 4), seed=4, split="train")[0], a[0])
    assert not np.array_equal(generate(task, 12, (1, 4), seed=3, split="test")[0], a[0])
    prefix = generate(task, 5, (1, 4), seed=3, split="train")  # example i does not depend on n
    assert all(np.array_equal(x, y[:5]) for x, y in zip(prefix, a))


@pytest.mark.parametrize("task", NAMES)
def test_check_accepts_truth_and_rejects_corruption(task):
    spec = TASKS[task]
    inputs, labels, _ = generate(task, 20, full_range(task), seed=1, split="val")
    scored = labels != IGNORE
    noise = np.random.default_rng(0).integers(spec.vocab, size=labels.shape)
    assert check(task, inputs, np.where(scored, labels, noise)).all()  # unscored positions do not count
    corrupted = labels.copy()
    rows = np.arange(len(labels))
    first = scored.argmax(axis=1)  # (n,) first scored position of each row
    corrupted[rows, first] = (labels[rows, first] + 1) % spec.vocab
    assert not check(task, inputs, np.where(scored, corrupted, 0)).any()


@pytest.mark.parametrize("task", NAMES)
def test_deep_examples_use_only_tokens_of_shallow_ones(task):
    shallow = generate(task, 60, (1, 1), seed=2, split="train")[0]
    deepest = TASKS[task].max_depth
    deep = generate(task, 20, (deepest, deepest), seed=2, split="test")[0]
    assert set(np.unique(deep)) <= set(np.unique(shallow))


def test_cellular_deep_examples_show_only_position_token_pairs_of_shallow_ones():
    """The step markers stand at random slots, so a slot past the trained depth has held a
    marker in training too (a run of markers from the first slot would not)."""
    shallow = generate("cellular", 400, (1, 4), seed=2, split="train")[0]
    deep = generate("cellular", 100, (5, 16), seed=2, split="test")[0]
    seen = {(pos, tok) for row in shallow for pos, tok in enumerate(row.tolist())}
    assert {(pos, tok) for row in deep for pos, tok in enumerate(row.tolist())} <= seen


@pytest.mark.parametrize("task", NAMES)
def test_labels_are_not_one_class(task):
    _, labels, _ = generate(task, 80, full_range(task), seed=5, split="train")
    values, counts = np.unique(labels[labels != IGNORE], return_counts=True)
    assert len(values) >= 2
    assert counts.max() / counts.sum() < 0.7


def test_graph_reach_depth_is_the_hop_count():
    task, nodes = "graph-reach", 16
    inputs, labels, depth = generate(task, 60, full_range(task), seed=7, split="test")
    for row, label, hops in zip(inputs, labels, depth):
        assert row[1 : 1 + nodes].tolist() == list(range(nodes))  # slot j names node j
        edges = row[1 + nodes :].reshape(-1, 2)
        adjacency = np.zeros((nodes, nodes), dtype=bool)
        adjacency[edges[:, 0], edges[:, 1]] = True
        assert adjacency.sum() == len(edges)  # no repeated edge
        assert not adjacency.diagonal().any()
        assert adjacency.any(axis=0).all() and adjacency.any(axis=1).all()  # every node has an edge in and out
        reached = np.arange(nodes) == row[0]
        rounds = 0  # grow the reached set one hop at a time until it stops changing
        while not np.array_equal(grown := reached | adjacency[reached].any(axis=0), reached):
            reached, rounds = grown, rounds + 1
        assert rounds == hops
        assert np.array_equal(label[1 : 1 + nodes], np.where(reached, token(task, "yes"), token(task, "no")))
        assert label[0] == IGNORE and (label[1 + nodes :] == IGNORE).all()
        assert not reached.all()


def test_graph_lists_blocks_list_each_nodes_in_neighbours():
    task, nodes, block = "graph-lists", 16, 5
    inputs, labels, depth = generate(task, 60, full_range(task), seed=7, split="test")
    for row, label, hops in zip(inputs, labels, depth):
        blocks = row[1:].reshape(nodes, block)
        assert blocks[:, 0].tolist() == list(range(nodes))  # block j starts with node j
        adjacency = np.zeros((nodes, nodes), dtype=bool)  # tail -> head
        for j in range(nodes):
            tails = [a for a in blocks[j, 1:] if a != j]  # j itself is padding
            assert len(tails) == len(set(tails)) >= 1  # no repeated edge; every node has an edge in
            assert (blocks[j, 1 + len(tails) :] == j).all()  # padding only after the listed nodes
            adjacency[tails, j] = True
        assert adjacency.sum() == 32 and adjacency.any(axis=1).all()
        reached = np.arange(nodes) == row[0]
        rounds = 0
        while not np.array_equal(grown := reached | adjacency[reached].any(axis=0), reached):
            reached, rounds = grown, rounds + 1
        assert rounds == hops
        assert np.array_equal(label[1::block], np.where(reached, token(task, "yes"), token(task, "no")))
        assert label[0] == IGNORE and (np.delete(label, np.arange(1, len(label), block)) == IGNORE).all()


def evaluate_prefix(names: list[str], pos: int, values: dict[int, int]) -> tuple[int, int, int]:
    """(value, height, next position) of the expression starting at `pos`; records each
    operator's value in `values`."""
    head = names[pos]
    if head in "01":
        return int(head), 0, pos + 1
    if head == "!":
        value, height, pos_after = evaluate_prefix(names, pos + 1, values)
        values[pos] = 1 - value
        return 1 - value, height + 1, pos_after
    left, left_height, middle = evaluate_prefix(names, pos + 1, values)
    right, right_height, pos_after = evaluate_prefix(names, middle, values)
    values[pos] = int({"&": left and right, "|": left or right, "^": left != right}[head])
    return values[pos], max(left_height, right_height) + 1, pos_after


def test_bool_depth_is_the_nesting_depth():
    task = "bool-depth"
    names_of = TASKS[task].tokens
    inputs, labels, depth = generate(task, 200, full_range(task), seed=8, split="test")
    for row, label, nesting in zip(inputs, labels, depth):
        names = [names_of[t] for t in row]
        values: dict[int, int] = {}
        value, height, end = evaluate_prefix(names, 0, values)
        assert height == nesting
        assert set(names[end:]) == {"."}
        assert label[0] == token(task, str(value))
        expected = np.full(len(row), IGNORE)
        for pos, v in values.items():
            expected[pos] = token(task, str(v))
        assert np.array_equal(label, expected)
    root_true = (labels[:, 0] == token(task, "1")).mean()
    assert 0.35 < root_true < 0.65


def test_khop_depth_is_the_number_of_hops():
    task, entities = "khop", 24
    inputs, labels, depth = generate(task, 60, full_range(task), seed=9, split="test")
    hop = token(task, ">")
    for row, label, k in zip(inputs, labels, depth):
        table = row[:entities].tolist()  # slot a holds f(a)
        assert max(table) < entities
        query, slots = int(row[entities]), row[entities + 1 :]
        assert (slots == hop).sum() == k and (slots[:k] == hop).all()
        chain = [query]
        for _ in range(k):
            chain.append(table[chain[-1]])
        assert len(set(chain)) == k + 1  # no cycle lets a shorter chain give the answer
        assert label[entities + k] == chain[-1]
        assert label[entities + 1 : entities + 1 + k].tolist() == chain[1:]
        assert (np.delete(label, np.arange(entities + 1, entities + 1 + k)) == IGNORE).all()


def test_cellular_depth_is_the_number_of_rule_30_steps():
    task, width = "cellular", 32
    inputs, labels, depth = generate(task, 40, full_range(task), seed=10, split="test")
    for row, label, steps in zip(inputs, labels, depth):
        assert (row[width:] == token(task, ">")).sum() == steps
        cells = row[:width].tolist()
        for _ in range(steps):  # rule 30: left XOR (centre OR right)
            cells = [cells[i - 1] ^ (cells[i] | cells[(i + 1) % width]) for i in range(width)]
        assert label[:width].tolist() == cells
        assert (label[width:] == IGNORE).all()


def test_rule_30_from_one_cell():
    task = "cellular"
    row = np.full(TASKS[task].seq_len, token(task, "."))
    row[:32] = 0
    row[16] = 1
    row[32:34] = token(task, ">")  # two steps
    answer = np.full_like(row, IGNORE)
    answer[:32] = 0
    answer[14:19] = [1, 1, 0, 0, 1]  # rule 30's familiar second row below a single cell
    assert check(task, row[None], answer[None]).tolist() == [True]
    answer[16] = 1
    assert check(task, row[None], answer[None]).tolist() == [False]


@pytest.mark.parametrize("task", NAMES)
def test_render(task):
    inputs, labels, _ = generate(task, 1, (2, 2), seed=0, split="train")
    plain = render(task, inputs[0])
    answered = render(task, inputs[0], labels[0])
    assert task in plain and "depth 2" in plain
    assert answered.startswith(plain) and len(answered.splitlines()) > len(plain.splitlines())


def test_errors():
    with pytest.raises(ValueError, match="unknown compositional task 'maze'.*graph-reach, graph-lists, bool-depth, khop, cellular"):
        generate("maze", 1, (1, 2), 0, "train")
    with pytest.raises(ValueError, match="unknown compositional task"):
        check("maze", np.zeros((1, 4)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="unknown compositional task"):
        render("maze", np.zeros(4))
    for bad in [(0, 2), (1, TASKS["khop"].max_depth + 1), (3, 2)]:
        with pytest.raises(ValueError, match=rf"khop: depths .* within 1\.\.{TASKS['khop'].max_depth}"):
            generate("khop", 1, bad, 0, "train")
    inputs, labels, _ = generate("cellular", 2, (1, 2), 0, "train")
    with pytest.raises(ValueError, match="shape"):
        check("cellular", inputs, labels[:, :10])
    with pytest.raises(ValueError, match="2 inputs but 1 prediction rows"):
        check("cellular", inputs, labels[:1])


def test_malformed_inputs_name_what_was_expected():
    row = generate("graph-reach", 1, (2, 2), 0, "train")[0][0]
    swapped = row.copy()
    swapped[[1, 2]] = swapped[[2, 1]]
    with pytest.raises(ValueError, match="node slot j .* must hold node j"):
        render("graph-reach", swapped)
    row[0] = 16
    with pytest.raises(ValueError, match="position 0 must name the source"):
        render("graph-reach", row)
    lists = generate("graph-lists", 1, (2, 2), 0, "train")[0][0]
    lists[[1, 6]] = lists[[6, 1]]
    with pytest.raises(ValueError, match=r"position 1 \+ 5 \* j must hold node j"):
        render("graph-lists", lists)
    cells = generate("cellular", 1, (2, 2), 0, "train")[0][0]
    for slots in (np.full(16, 3), np.r_[np.full(15, 3), 0]):  # no marker; a cell value among the step slots
        cells[32:] = slots
        with pytest.raises(ValueError, match="step slots must hold at least one marker"):
            render("cellular", cells)
    table = generate("khop", 1, (2, 2), 0, "train")[0][0]
    table[3] = token("khop", ">")  # a marker where the table holds an entity
    with pytest.raises(ValueError, match="table slots and the query must hold entity ids"):
        render("khop", table)


def test_depth_table_shows_the_trained_segments_beside_the_last():
    """`benchmarks/depth.py report`: a model can lose at 16 segments what it reached at
    the 4 it trained with, so the table gives both."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from depth import table

    by_depth = {str(d): [0.1 * d] * 3 + [1.0] + [0.5] * 4 for d in range(1, 9)}  # 8 segments; segment 4 is right
    run = {"accuracy_by_depth": by_depth, "segments": 8, "n": 80, "step": 7, "train_depths": "1-4", "train_segments": 4}
    lines = table({"khop": {"trm": run}}).splitlines()
    last = next(line for line in lines if line.startswith("| trm |")).split(" | ")
    trained = next(line for line in lines if line.startswith("| trm (after 4 seg) |")).split(" | ")
    assert last[2:10] == ["50.0%"] * 8 and trained[2:10] == ["100.0%"] * 8
    run["train_segments"] = 8  # trained with every segment it is tested on: no second row
    assert not any("(after" in line for line in table({"khop": {"trm": run}}).splitlines())
