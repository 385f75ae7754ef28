from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from ponder.errors import PonderInputError
from ponder.lm.text import (
    TEXT_TASKS,
    BPETokenizer,
    CharTokenizer,
    Problem,
    build_text,
    evaluate_left_to_right,
    load_text,
    read_text_file,
    save_text,
    tokenizer_from_dict,
    windows,
)

SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 4
SMALL_ARITH = {"train_size": 300, "val_size": 40, "test_size": 120}
SMALL_HOP = {"entities": 30, "train_depths": "1-3", "test_depths": "1-6", "train_size": 400, "val_size": 30, "test_size": 120, "fact_copies": 3}


def one_line_error(excinfo, *parts: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(SAMPLE)
    return path


def left_to_right(prompt: str) -> int:
    """An independent reading of an arithmetic prompt: numbers and operators, folded
    from the left."""
    assert prompt.endswith("=")
    tokens = re.findall(r"\d+|[-+*]", prompt[:-1])
    value = int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2]):
        value = {"+": value + int(number), "-": value - int(number), "*": value * int(number)}[op]
    return value


# ------------------------------------------------------------------------ tokenizers

def test_char_tokenizer_round_trip():
    tok = CharTokenizer(SAMPLE)
    assert tok.chars == "".join(sorted(set(SAMPLE)))
    ids = tok.encode(SAMPLE)
    assert max(ids) == tok.vocab_size - 1 and tok.decode(ids) == SAMPLE
    assert tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids)) == SAMPLE
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert isinstance(again, CharTokenizer) and again.encode(SAMPLE) == ids


def test_char_tokenizer_unknown_character():
    tok = CharTokenizer("abc")
    with pytest.raises(PonderInputError) as excinfo:
        tok.encode("abz")
    one_line_error(excinfo, "'z'", "position 2")
    with pytest.raises(PonderInputError):
        tok.decode([3])


def test_bpe_tokenizer_round_trip():
    tok = BPETokenizer(SAMPLE, vocab_size=280)
    assert 256 < tok.vocab_size <= 280
    ids = tok.encode(SAMPLE)
    assert len(ids) < len(SAMPLE.encode())  # merges happened
    assert tok.decode(ids) == SAMPLE
    unseen = "Ünïcode ✓ text\tnever seen\n"
    assert tok.decode(tok.encode(unseen)) == unseen  # byte level: any text encodes
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert isinstance(again, BPETokenizer) and again.encode(SAMPLE) == ids
    with pytest.raises(PonderInputError) as excinfo:
        BPETokenizer(SAMPLE, vocab_size=100)
    one_line_error(excinfo, "vocab_size")


def test_tokenizer_from_bad_dict():
    with pytest.raises(PonderInputError):
        tokenizer_from_dict({"kind": "words"})


# ------------------------------------------------------------------------ text files

def test_text_file_errors(tmp_path):
    missing, empty, binary, latin = (tmp_path / n for n in ("missing.txt", "empty.txt", "binary.txt", "latin.txt"))
    empty.write_bytes(b"")
    binary.write_bytes(b"abc\0def")
    latin.write_bytes("caf\xe9".encode("latin-1"))
    for path, what in ((missing, "no such"), (empty, "empty"), (binary, "binary"), (latin, "UTF-8")):
        with pytest.raises(PonderInputError) as excinfo:
            read_text_file(path)
        one_line_error(excinfo, str(path), what)
    with pytest.raises(PonderInputError) as excinfo:
        build_text("shakespeare-char", {"text_file": str(binary)})
    one_line_error(excinfo, str(binary))


# ------------------------------------------------------------- build, save and load

def test_shakespeare_char_split(text_file):
    data = build_text("shakespeare-char", {"text_file": str(text_file)})
    n = len(SAMPLE)
    assert len(data.splits["train"]) == int(0.9 * n) and len(data.splits["val"]) == n - int(0.9 * n)
    assert data.splits["train"].dtype == np.uint16 and data.problems == {}
    tok = data.tokenizer
    assert tok.decode(data.splits["train"]) + tok.decode(data.splits["val"]) == SAMPLE
    assert data.spec["options"] == {"text_file": str(text_file)} and data.spec["seed"] == 0


def test_default_text_file_under_ponder_data(tmp_path, monkeypatch):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "tinyshakespeare.txt").write_text(SAMPLE)
    monkeypatch.setenv("PONDER_DATA", str(tmp_path))
    data = build_text("shakespeare-char")
    assert sum(len(v) for v in data.splits.values()) == len(SAMPLE)


def test_bpe_corpus_tokenizer_sees_train_only(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(SAMPLE * 4 + "qqqq qqqq " * 5)  # the last 10% holds a word the train part lacks
    data = build_text("shakespeare-bpe", {"text_file": str(path), "vocab_size": "300"})
    train, val = data.tokenizer.decode(data.splits["train"]), data.tokenizer.decode(data.splits["val"])
    assert train + val == path.read_text()
    vocab = data.tokenizer.to_dict()["tokenizer"]["model"]["vocab"]
    assert not any("qqq" in token for token in vocab)
    assert data.spec["options"]["vocab_size"] == 300


@pytest.mark.parametrize("name,options", [
    ("shakespeare-char", None), ("shakespeare-bpe", {"vocab_size": 300}), ("arithmetic", SMALL_ARITH), ("multihop", SMALL_HOP),
])
def test_save_load_round_trip_and_determinism(tmp_path, text_file, name, options):
    options = dict(options or {})
    if name.startswith("shakespeare"):
        options["text_file"] = str(text_file)
    data = build_text(name, options, seed=5)
    manifest = save_text(data, tmp_path / "a")
    assert manifest["format"] == "ponder-text-1" and manifest["name"] == name
    assert manifest["tokens"] == {k: len(v) for k, v in data.splits.items()}
    if name.startswith("shakespeare"):
        assert len(manifest["corpus_sha256"]) == 64
    else:
        assert manifest["corpus_sha256"] is None and set(manifest["problems"]) == {"val", "test"}
    loaded = load_text(tmp_path / "a")
    assert loaded.name == name and loaded.spec == json.loads(json.dumps(data.spec))
    assert loaded.tokenizer.to_dict() == data.tokenizer.to_dict()
    assert set(loaded.splits) == set(data.splits)
    for split, tokens in data.splits.items():
        assert np.array_equal(loaded.splits[split], tokens) and loaded.splits[split].dtype == np.uint16
    assert loaded.problems == data.problems
    save_text(build_text(name, options, seed=5), tmp_path / "b")
    for file in ("data.safetensors", "manifest.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_seed_changes_generated_corpora():
    for name, options in (("arithmetic", SMALL_ARITH), ("multihop", SMALL_HOP)):
        a, b = build_text(name, options, seed=0), build_text(name, options, seed=1)
        assert not np.array_equal(a.splits["train"], b.splits["train"])


def test_load_errors(tmp_path, text_file):
    folder = tmp_path / "d"
    save_text(build_text("shakespeare-char", {"text_file": str(text_file)}), folder)
    data_file = folder / "data.safetensors"
    raw = bytearray(data_file.read_bytes())
    raw[-1] ^= 1
    data_file.write_bytes(bytes(raw))
    with pytest.raises(PonderInputError) as excinfo:
        load_text(folder)
    one_line_error(excinfo, str(data_file), "SHA-256")
    data_file.unlink()
    with pytest.raises(PonderInputError) as excinfo:
        load_text(folder)
    one_line_error(excinfo, str(data_file), "missing")
    with pytest.raises(PonderInputError) as excinfo:
        load_text(tmp_path / "nowhere")
    one_line_error(excinfo, "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PonderInputError) as excinfo:
        load_text(empty)
    one_line_error(excinfo, "not a text dataset folder")
    (empty / "manifest.json").write_text('{"format": "ponder-dataset-1"}')
    with pytest.raises(PonderInputError) as excinfo:
        load_text(empty)
    one_line_error(excinfo, "puzzle dataset")
    (empty / "manifest.json").write_text("{not json")
    with pytest.raises(PonderInputError) as excinfo:
        load_text(empty)
    one_line_error(excinfo, "corrupt manifest")


def test_unknown_names_and_options(text_file):
    with pytest.raises(PonderInputError) as excinfo:
        build_text("wikitext")
    one_line_error(excinfo, "wikitext", *TEXT_TASKS)
    with pytest.raises(PonderInputError) as excinfo:
        build_text("arithmetic", {"depth": 3})
    one_line_error(excinfo, "'depth'", "train_depths", "digits")
    for bad in ({"digits": "two"}, {"train_depths": "3-1"}, {"digits": 0}, {"train_size": 0}):
        with pytest.raises(PonderInputError) as excinfo:
            build_text("arithmetic", bad)
        one_line_error(excinfo, next(iter(bad)))
    with pytest.raises(PonderInputError) as excinfo:
        build_text("multihop", {**SMALL_HOP, "test_depths": "1-30"})
    one_line_error(excinfo, "test_depths")
    for task in TEXT_TASKS.values():
        assert task.description and isinstance(task.options, dict) and callable(task.build)


# --------------------------------------------------------------------- arithmetic

def test_arithmetic_answers_and_depths():
    data = build_text("arithmetic", {**SMALL_ARITH, "train_depths": "1-2", "test_depths": "1-5", "digits": 2})
    tok = data.tokenizer
    lines = tok.decode(data.splits["train"]).splitlines()
    assert len(lines) == SMALL_ARITH["train_size"]
    train_depths = set()
    for line in lines:
        prompt, answer = line.split("=")
        assert int(answer) == left_to_right(prompt + "=") and 0 <= int(answer) < 1000
        depth = len(re.findall(r"[-+*]", prompt))
        train_depths.add(depth)
        assert all(len(n) <= 2 and n[0] != "0" for n in re.findall(r"\d+", prompt))
    assert train_depths == {1, 2}
    prompts = {line.split("=")[0] + "=" for line in lines}
    for split, (lo, hi) in (("val", (1, 2)), ("test", (1, 5))):
        problems = data.problems[split]
        assert len(problems) == SMALL_ARITH[f"{split}_size"]
        assert {p.depth for p in problems} == set(range(lo, hi + 1))
        for p in problems:
            assert isinstance(p, Problem) and p.answer == str(left_to_right(p.prompt)) == str(evaluate_left_to_right(p.prompt))
            assert len(re.findall(r"[-+*]", p.prompt)) == p.depth
            assert p.prompt not in prompts  # never a training prompt
        assert tok.decode(data.splits[split]) == "".join(p.prompt + p.answer + "\n" for p in problems)
    assert max(p.depth for p in data.problems["test"]) > 2  # deeper than training


# ----------------------------------------------------------------------- multihop

def test_multihop_answers_follow_the_table():
    data = build_text("multihop", SMALL_HOP)
    lines = data.tokenizer.decode(data.splits["train"]).splitlines()
    facts = [line for line in lines if "=" not in line]
    table = dict(line.split(">") for line in facts)
    assert len(table) == SMALL_HOP["entities"] and len(facts) == SMALL_HOP["entities"] * SMALL_HOP["fact_copies"]
    assert sorted(table.values()) == sorted(table)  # a permutation

    def follow(prompt: str) -> tuple[str, int]:
        start, hops = prompt.rstrip("=").split(">", 1)
        k = hops.count(">") + 1
        x = start
        for _ in range(k):
            x = table[x]
        return x, k

    queries = [line for line in lines if "=" in line]
    assert len(queries) == SMALL_HOP["train_size"]
    for line in queries:
        prompt, answer = line.split("=")
        target, k = follow(prompt + "=")
        assert answer == target and 1 <= k <= 3
    for split in ("val", "test"):
        for p in data.problems[split]:
            target, k = follow(p.prompt)
            assert p.answer == target and p.depth == k
    assert {p.depth for p in data.problems["val"]} == {1, 2, 3}
    assert {p.depth for p in data.problems["test"]} == set(range(1, 7))  # held-out trained depths and deeper ones
    # no val or test composition appears in the training stream
    trained = {line.split("=")[0] + "=" for line in queries}
    for p in data.problems["val"] + data.problems["test"]:
        assert p.prompt not in trained
    assert data.info["table"] == table


# ------------------------------------------------------------------------ windows

def test_windows_shapes_shift_range_and_determinism():
    tokens = torch.arange(1000, dtype=torch.int64) * 7 % 1000  # token value tells its position
    x, y = windows(tokens, block=16, batch=8, seed=3, step=11)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    position = x[:, 0] * 143 % 1000  # 7 * 143 = 1001: invert the map
    assert torch.equal(tokens[position], x[:, 0])
    assert torch.equal(y, tokens[position[:, None] + 1 + torch.arange(16)])
    assert int(position.min()) >= 0 and int(position.max()) <= 1000 - 16 - 1
    again = windows(tokens, block=16, batch=8, seed=3, step=11)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert not torch.equal(windows(tokens, 16, 8, seed=3, step=12)[0], x)
    assert not torch.equal(windows(tokens, 16, 8, seed=4, step=11)[0], x)


def test_windows_split_over_ranks_and_uint16():
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 65536, size=500).astype(np.uint16))
    wide = tokens.long()
    whole = windows(wide, block=10, batch=6, seed=1, step=4)
    halves = [windows(wide, block=10, batch=6, seed=1, step=4, rank=r, world=2) for r in range(2)]
    assert halves[0][0].shape == (3, 10)
    assert torch.equal(torch.cat([h[0] for h in halves]), whole[0])
    assert torch.equal(torch.cat([h[1] for h in halves]), whole[1])
    narrow = windows(tokens, block=10, batch=6, seed=1, step=4)  # uint16 streams read without a copy
    assert torch.equal(narrow[0], whole[0]) and torch.equal(narrow[1], whole[1])
    assert int(whole[0].max()) > 32767  # values above the int16 range survive


def test_windows_start_covers_the_whole_range():
    tokens = torch.arange(12)
    x, y = windows(tokens, block=4, batch=400, seed=0, step=0)
    assert set(x[:, 0].tolist()) == set(range(12 - 4))  # every start 0..N - block - 1, none past it
    assert int(y.max()) == 11


def test_windows_errors():
    with pytest.raises(PonderInputError):
        windows(torch.arange(8), block=8, batch=2, seed=0, step=0)
    with pytest.raises(PonderInputError):
        windows(torch.arange(100), block=8, batch=3, seed=0, step=0, rank=0, world=2)
    with pytest.raises(PonderInputError):
        windows(torch.arange(100), block=8, batch=4, seed=0, step=0, rank=2, world=2)


def test_prompts_on_a_problem_per_line_corpus_start_a_line():
    """Sampling and probing a model trained on one problem per line give the prompt after
    a newline, as training did; other corpora take the prompt as it is."""
    from ponder.lm.probe import intermediate_results
    from ponder.lm.text import at_line_start

    assert at_line_start("arithmetic", "37+5*2=") == "\n37+5*2=" == at_line_start("arithmetic", "\n37+5*2=")
    assert at_line_start("multihop", "ab>=") == "\nab>="
    assert at_line_start("shakespeare-char", "ROMEO") == "ROMEO"
    assert intermediate_results("\n37+5*2=") == intermediate_results("37+5*2=") == [42, 84]
    assert intermediate_results("to be or") == []
