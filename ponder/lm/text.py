"""Text data for causal language models: tokenizers, corpora built into dataset folders,
deterministic training windows, and two generated reasoning corpora with a depth dial.

A corpus is one token stream per split ("train", "val", and "test" for the reasoning
corpora). Training reads random windows of the train stream (`windows`); the reasoning
corpora also keep their val and test problems whole, so a model's generated answers can
be scored by exact match, per depth.

Corpora (`TEXT_TASKS`, built by `build_text`):

shakespeare-char  $PONDER_DATA/text/tinyshakespeare.txt (option `text_file` overrides
                  it): the first 90% of the characters train, the last 10% val, as
                  nanoGPT's shakespeare_char does. The vocabulary is the sorted distinct
                  characters of the whole file, so val never meets an unknown character.
shakespeare-bpe   The same text and split with a byte-level BPE tokenizer trained on the
                  train part only (option `vocab_size`, default 512).
arithmetic        Chains of operations on whole numbers, one problem per line:
                      37+5*2=84
                  evaluated strictly left to right, with no precedence: ((37+5)*2) = 84.
                  Depth = the number of operations. Operands have 1..`digits` digits (no
                  leading zeros), + - * only. Every running value stays in
                  [0, 10**(digits+1)) and each multiplier is at least 2, so answers need no
                  sign, stay short at any depth, and every operation changes the answer
                  (no step can be skipped). Val and test problems never repeat a training
                  prompt; test depths reach past the trained ones.
multihop          A table of facts f(a) = b over `entities` names (lowercase letters, all
                  the same width, so lines parse without separators) and queries that
                  apply f k times:
                      ab>cd          fact: f(ab) = cd
                      ab>>>=xy       query: f(f(f(ab))) = xy, depth 3
                  f is one random cycle through every entity, so the k + 1 entities of a
                  chain are distinct for every k < entities and no loop shortens a query.
                  The train stream holds every fact `fact_copies` times and `train_size`
                  queries at the trained depths, shuffled line by line. At each trained
                  depth a `holdout` fraction of the start entities never appears in a
                  training query: half of them are the val problems, half join the test
                  problems, which also cover depths outside the trained range.
                  `val_size` and `test_size` are split evenly over the depths and capped
                  at each depth by its pool (at a trained depth, half the held-out start
                  entities): with the defaults, val holds 100 problems (25 per depth) and
                  test 500 (25 per trained depth, 100 per deeper one); the manifest
                  records the counts.

The val and test streams of the reasoning corpora are their problems written as lines.

A text dataset folder ("ponder-text-1") holds two files, written atomically like a
puzzle dataset folder (`ponder.tasks.dataset`):

    data.safetensors  "<split>.tokens"           (N,) uint16 token stream
                      "problems.<split>.prompt"  (P, Lp) int32 token ids, padded with -1
                      "problems.<split>.answer"  (P, La) int32 token ids, padded with -1
                      "problems.<split>.depth"   (P,) int32
    manifest.json     format, name, tokenizer (its `to_dict`), tokens per split, problems
                      per split, corpus_sha256 (of the raw text file, null for generated
                      corpora), spec (name, seed, options, source file), info, and the
                      SHA-256 and size of data.safetensors
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ponder.config import parse_depth_range
from ponder.errors import PonderInputError, plain_file_name, read_json, require_fields
from ponder.tasks.dataset import DATA_FILE, MANIFEST, sha256_file, write_folder
from ponder.tasks.dataset import FORMAT as PUZZLE_FORMAT
from ponder.tasks.grids import seed_int
from ponder.tasks.keyed import example_keys, integers

FORMAT = "ponder-text-1"
PAD = -1  # fills the padded problem arrays
MAX_VOCAB = 2**16  # token streams are uint16
WINDOW_SALT = 0x5743  # the salt of window-start draws (any constant other draws do not use)
SHAKESPEARE_FILE = ("text", "tinyshakespeare.txt")  # under $PONDER_DATA
TRAIN_FRACTION = 0.9


# ------------------------------------------------------------------------ reading text

def read_text_file(path: Path) -> str:
    """The file's text, or a one-line error naming it when it is missing, empty or not
    UTF-8 text (a NUL byte means binary), so a wrong path fails before any training."""
    path = Path(path)
    if not path.is_file():
        raise PonderInputError(f"{path}: no such text file; expected a UTF-8 text file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PonderInputError(f"{path}: cannot read the text file ({e.strerror})") from None
    if not data:
        raise PonderInputError(f"{path}: empty text file; expected UTF-8 text")
    nul = data.find(b"\0")
    if nul >= 0:
        raise PonderInputError(f"{path}: binary file (NUL byte at offset {nul}); expected UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PonderInputError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); expected UTF-8 text") from None


# -------------------------------------------------------------------------- tokenizers

def _id_list(ids) -> list[int]:
    """Token ids from a list, an array or a tensor (on any device) as Python ints."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu()
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


class CharTokenizer:
    """One token per character: the vocabulary is the sorted distinct characters of the
    text it is made from, so ids do not depend on the order the text shows them in."""

    kind = "char"

    def __init__(self, text: str):
        self.chars = "".join(sorted(set(text)))
        if not self.chars:
            raise PonderInputError("character tokenizer: the text is empty; expected at least one character")
        if len(self.chars) > MAX_VOCAB:
            raise PonderInputError(f"character tokenizer: {len(self.chars)} distinct characters; expected at most {MAX_VOCAB} (ids are uint16)")
        self._ids = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        try:
            return [ids[c] for c in text]
        except KeyError as e:
            char = e.args[0]
            raise PonderInputError(
                f"character {char!r} at position {text.index(char)}: not in the tokenizer's vocabulary of {len(self.chars)} characters"
            ) from None

    def decode(self, ids) -> str:
        ids = _id_list(ids)
        bad = [i for i in ids if not 0 <= i < len(self.chars)]
        if bad:
            raise PonderInputError(f"token id {bad[0]}: outside the vocabulary 0..{len(self.chars) - 1}")
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


def _tokenizers():
    """The `tokenizers` package, which only the BPE corpora need."""
    try:
        import tokenizers
    except ImportError:
        raise PonderInputError("BPE tokenizer: the 'tokenizers' package is not installed; install it with 'pip install tokenizers'") from None
    return tokenizers


class BPETokenizer:
    """Byte-level BPE trained here on the given text (nothing is downloaded): the 256
    bytes first, then merges up to `vocab_size` tokens (fewer when the text runs out of
    pairs). Any text encodes, even characters the training text never showed."""

    kind = "bpe"

    def __init__(self, text: str, vocab_size: int = 512, progress: bool = False):
        tk = _tokenizers()
        if not 256 <= vocab_size <= MAX_VOCAB:
            raise PonderInputError(f"option 'vocab_size': expected 256..{MAX_VOCAB} (the 256 bytes, then merges; ids are uint16), got {vocab_size}")
        tokenizer = tk.Tokenizer(tk.models.BPE())
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)  # no added space: decode(encode(t)) == t
        tokenizer.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size, show_progress=progress, special_tokens=[],
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        )
        tokenizer.train_from_iterator([text], trainer=trainer)
        self._tok = tokenizer

    @classmethod
    def from_json(cls, text: str) -> "BPETokenizer":
        tk = _tokenizers()
        obj = cls.__new__(cls)
        obj._tok = tk.Tokenizer.from_str(text)
        return obj

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids) -> str:
        return self._tok.decode(_id_list(ids))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": json.loads(self._tok.to_str())}


def tokenizer_from_dict(d: dict) -> CharTokenizer | BPETokenizer:
    """The tokenizer a `to_dict` describes."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "char" and isinstance(d.get("chars"), str):
        return CharTokenizer(d["chars"])
    if kind == "bpe" and isinstance(d.get("tokenizer"), dict):
        try:
            return BPETokenizer.from_json(json.dumps(d["tokenizer"]))
        except Exception as e:  # the tokenizers package raises its own exception type
            raise PonderInputError(f"tokenizer: corrupt BPE tokenizer ({str(e).splitlines()[0][:120]})") from None
    raise PonderInputError("tokenizer: expected a dict with kind 'char' (and chars) or 'bpe' (and tokenizer)")


def _stream(tokenizer, text: str) -> np.ndarray:
    """(N,) uint16 tokens of a text."""
    return np.asarray(tokenizer.encode(text), dtype=np.uint16)


# ------------------------------------------------------------------------- datasets

@dataclass
class Problem:
    prompt: str  # e.g. "12+7="
    answer: str  # e.g. "19": what a model must generate after the prompt (then a newline)
    depth: int


@dataclass
class TextDataset:
    name: str  # the corpus, a TEXT_TASKS key
    tokenizer: CharTokenizer | BPETokenizer
    splits: dict[str, np.ndarray]  # "train", "val" (and "test"): (N,) uint16 token streams
    problems: dict[str, list[Problem]] = field(default_factory=dict)  # "val", "test" of reasoning corpora; empty for plain text
    spec: dict[str, Any] = field(default_factory=dict)  # how it was built: name, seed, options, corpus file
    info: dict[str, Any] = field(default_factory=dict)  # corpus-specific JSON


@dataclass(frozen=True)
class TextTask:
    name: str
    description: str
    options: dict[str, Any]  # option keys and their defaults (an option's type is its default's)
    build: Callable[[dict[str, Any], int, bool], TextDataset]  # (resolved options, seed, progress)
    vocab_hint: int = 0  # the vocabulary size with default options, known without building (for `ponder presets`)
    problem_lines: bool = False  # the text is one problem per line: a prompt starts after a newline


def at_line_start(task_name: str, prompt: str) -> str:
    """A prompt for a model trained on `task_name`: on a corpus of one problem per line,
    after a newline (as every problem follows one in training; without it the model
    cannot tell where the first number starts), else as it is."""
    task = TEXT_TASKS.get(task_name)
    if task is not None and task.problem_lines and not prompt.startswith("\n"):
        return "\n" + prompt
    return prompt


def _resolve(task: TextTask, options: dict[str, Any]) -> dict[str, Any]:
    """The options with defaults filled in and values coerced to the defaults' types
    (strings from a command line work); an unknown key is an error."""
    out = dict(task.options)
    for key, value in options.items():
        if key not in task.options:
            raise PonderInputError(f"option '{key}': not read by text corpus '{task.name}' (it reads {', '.join(task.options)})")
        kind = type(task.options[key])
        try:
            if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out[key] = kind(value)
        except (TypeError, ValueError):
            raise PonderInputError(f"option '{key}': expected {kind.__name__}, got {value!r}") from None
    return out


def _depth_range(options: dict[str, Any], key: str) -> tuple[int, int]:
    try:
        return parse_depth_range(str(options[key]))
    except ValueError:
        raise PonderInputError(f"option '{key}': expected a depth range like '1-3' or '4' (depths from 1), got {options[key]!r}") from None


def _positive(options: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if options[key] < 1:
            raise PonderInputError(f"option '{key}': expected at least 1, got {options[key]}")


def _depth_schedule(rng: np.random.Generator, size: int, lo: int, hi: int) -> list[int]:
    """`size` depths, as even a share of each depth in lo..hi as the size allows, in a
    random order: per-depth scores then rest on similar counts."""
    depths = lo + np.arange(size) % (hi - lo + 1)
    return rng.permutation(depths).tolist()


def _quotas(size: int, depths: list[int]) -> dict[int, int]:
    """`size` split as evenly as possible over `depths`."""
    return {d: size // len(depths) + (i < size % len(depths)) for i, d in enumerate(depths)}


def _lines(problems: list[Problem]) -> str:
    return "".join(p.prompt + p.answer + "\n" for p in problems)


# ------------------------------------------------------------------------ Shakespeare

def _shakespeare_text(options: dict[str, Any]) -> tuple[str, Path]:
    from ponder.tasks.builders import raw_path

    path = Path(options["text_file"]) if options["text_file"] else raw_path(*SHAKESPEARE_FILE)
    text = read_text_file(path)
    if len(text) < 2:
        raise PonderInputError(f"{path}: {len(text)} character is too short to split into train and val")
    return text, path


def _split_text(text: str) -> tuple[str, str]:
    """The first 90% of the characters and the rest (nanoGPT's cut, int(0.9 n))."""
    cut = int(len(text) * TRAIN_FRACTION)
    return text[:cut], text[cut:]


def _corpus_spec(path: Path) -> dict[str, Any]:
    return {"corpus": {"file": str(path), "sha256": sha256_file(path)}}


def _build_shakespeare_char(options: dict[str, Any], seed: int, progress: bool) -> TextDataset:
    text, path = _shakespeare_text(options)
    train, val = _split_text(text)
    tokenizer = CharTokenizer(text)
    splits = {"train": _stream(tokenizer, train), "val": _stream(tokenizer, val)}
    info = {"characters": {"train": len(train), "val": len(val)}}
    return TextDataset("shakespeare-char", tokenizer, splits, {}, _corpus_spec(path), info)


def _build_shakespeare_bpe(options: dict[str, Any], seed: int, progress: bool) -> TextDataset:
    text, path = _shakespeare_text(options)
    train, val = _split_text(text)
    tokenizer = BPETokenizer(train, vocab_size=options["vocab_size"], progress=progress)
    splits = {"train": _stream(tokenizer, train), "val": _stream(tokenizer, val)}
    info = {"characters": {"train": len(train), "val": len(val)}}
    return TextDataset("shakespeare-bpe", tokenizer, splits, {}, _corpus_spec(path), info)


# ------------------------------------------------------------------------- arithmetic

ARITHMETIC_ALPHABET = "0123456789+-*=\n"
MAX_DIGITS = 9
FRESH_TRIES = 1000  # draws allowed per val/test problem to find one not in training


def evaluate_left_to_right(prompt: str) -> int:
    """The value of an arithmetic prompt such as "37+5*2=", strictly left to right."""
    body = prompt.removesuffix("=")
    value, op, number = None, "+", ""
    for char in body + "+":
        if char.isdigit():
            number += char
            continue
        if char not in "+-*" or not number:
            raise PonderInputError(f"arithmetic prompt {prompt!r}: expected numbers joined by + - * and a final '='")
        operand = int(number)
        value = operand if value is None else value + operand if op == "+" else value - operand if op == "-" else value * operand
        op, number = char, ""
    return value


def _arithmetic_problem(rng: np.random.Generator, depth: int, digits: int) -> Problem:
    """A chain of `depth` operations whose running value stays in [0, 10**(digits+1)):
    each step picks an operator among those that have an operand keeping it there (a
    multiplier from 2 up, so every step changes the value), then the operand."""
    top, limit = 10**digits, 10 ** (digits + 1)  # operands 1..top-1; values 0..limit-1
    value = int(rng.integers(1, top))
    parts = [str(value)]
    for _ in range(depth):
        steps = []  # (operator, lowest operand, highest operand)
        if value + 1 < limit:
            steps.append(("+", 1, min(top - 1, limit - 1 - value)))
        if value >= 1:
            steps.append(("-", 1, min(top - 1, value)))
        if value >= 1 and 2 * value < limit:
            steps.append(("*", 2, min(top - 1, (limit - 1) // value)))
        op, lo, hi = steps[int(rng.integers(len(steps)))]
        operand = int(rng.integers(lo, hi + 1))
        value = value + operand if op == "+" else value - operand if op == "-" else value * operand
        parts.append(op + str(operand))
    return Problem("".join(parts) + "=", str(value), depth)


def _fresh_problems(make: Callable[[int], Problem], depths: list[int], seen: set[str], key: str) -> list[Problem]:
    """One problem per depth whose prompt is not in `seen` (the training prompts)."""
    out = []
    for depth in depths:
        for _ in range(FRESH_TRIES):
            problem = make(depth)
            if problem.prompt not in seen:
                out.append(problem)
                break
        else:
            raise PonderInputError(
                f"option '{key}': no depth-{depth} problem outside the training set in {FRESH_TRIES} draws; "
                "the space is too small (raise digits or lower train_size)"
            )
    return out


def _build_arithmetic(options: dict[str, Any], seed: int, progress: bool) -> TextDataset:
    digits = options["digits"]
    if not 1 <= digits <= MAX_DIGITS:
        raise PonderInputError(f"option 'digits': expected 1..{MAX_DIGITS}, got {digits}")
    _positive(options, "train_size", "val_size", "test_size")
    train_lo, train_hi = _depth_range(options, "train_depths")
    test_lo, test_hi = _depth_range(options, "test_depths")

    def rng(split: str) -> np.random.Generator:
        return np.random.default_rng(seed_int("ponder-text-arithmetic", seed, split))

    train_rng, val_rng, test_rng = rng("train"), rng("val"), rng("test")
    train = [_arithmetic_problem(train_rng, d, digits) for d in _depth_schedule(train_rng, options["train_size"], train_lo, train_hi)]
    seen = {p.prompt for p in train}
    val_depths = _depth_schedule(val_rng, options["val_size"], train_lo, train_hi)
    val = _fresh_problems(lambda d: _arithmetic_problem(val_rng, d, digits), val_depths, seen, "val_size")
    test_depths = _depth_schedule(test_rng, options["test_size"], test_lo, test_hi)
    test = _fresh_problems(lambda d: _arithmetic_problem(test_rng, d, digits), test_depths, seen, "test_size")

    tokenizer = CharTokenizer(ARITHMETIC_ALPHABET)
    splits = {name: _stream(tokenizer, _lines(problems)) for name, problems in (("train", train), ("val", val), ("test", test))}
    info = {
        "format": "prompt answer newline, e.g. '37+5*2=84': + - * evaluated strictly left to right, depth = number of operations",
        "value_limit": 10 ** (digits + 1),
        "problems": {"train": len(train), "val": len(val), "test": len(test)},
    }
    return TextDataset("arithmetic", tokenizer, splits, {"val": val, "test": test}, {}, info)


# --------------------------------------------------------------------------- multihop

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MULTIHOP_ALPHABET = "\n=>" + LETTERS
MAX_ENTITIES = 26**3


def _entity_names(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct random names of the fewest letters that give n of them."""
    width = 1
    while 26**width < n:
        width += 1
    codes = rng.choice(26**width, size=n, replace=False)
    return ["".join(LETTERS[int(c) // 26**j % 26] for j in reversed(range(width))) for c in codes]


def _build_multihop(options: dict[str, Any], seed: int, progress: bool) -> TextDataset:
    n = options["entities"]
    if not 4 <= n <= MAX_ENTITIES:
        raise PonderInputError(f"option 'entities': expected 4..{MAX_ENTITIES}, got {n}")
    _positive(options, "train_size", "val_size", "test_size", "fact_copies")
    train_lo, train_hi = _depth_range(options, "train_depths")
    test_lo, test_hi = _depth_range(options, "test_depths")
    for key, hi in (("train_depths", train_hi), ("test_depths", test_hi)):
        if hi >= n:
            raise PonderInputError(f"option '{key}': depths must stay below entities ({n}) so a chain never returns to its start, got {options[key]!r}")
    held = round(options["holdout"] * n)  # start entities held out of training at each trained depth
    if not 2 <= held <= n - 1:
        raise PonderInputError(f"option 'holdout': expected a fraction that holds out 2..{n - 1} of the {n} entities per depth, got {options['holdout']}")

    rng = np.random.default_rng(seed_int("ponder-text-multihop", seed))
    names = _entity_names(rng, n)
    cycle = rng.permutation(n)
    successor = np.empty(n, dtype=np.int64)  # (n,) f as entity indices
    successor[cycle] = np.roll(cycle, -1)

    def query(x: int, k: int) -> Problem:
        y = x
        for _ in range(k):
            y = int(successor[y])
        return Problem(names[x] + ">" * k + "=", names[y], k)

    train_pool: dict[int, list[int]] = {}  # depth -> start entities of training queries
    val_pool: dict[int, list[int]] = {}
    test_pool: dict[int, list[int]] = {}
    for k in range(1, max(train_hi, test_hi) + 1):
        starts = rng.permutation(n).tolist()
        if train_lo <= k <= train_hi:
            train_pool[k], val_pool[k], test_pool[k] = starts[held:], starts[:held:2], starts[1:held:2]
        else:
            test_pool[k] = starts

    facts = [f"{names[a]}>{names[int(successor[a])]}" for a in range(n)]
    queries = []
    for k in _depth_schedule(rng, options["train_size"], train_lo, train_hi):
        pool = train_pool[k]
        queries.append(query(pool[int(rng.integers(len(pool)))], k))
    lines = facts * options["fact_copies"] + [p.prompt + p.answer for p in queries]
    train_text = "".join(lines[i] + "\n" for i in rng.permutation(len(lines)))

    def sample(pools: dict[int, list[int]], size: int, depths: list[int]) -> list[Problem]:
        out = []
        for k, quota in _quotas(size, depths).items():
            pool = pools.get(k, [])
            out += [query(x, k) for x in rng.permutation(pool)[:quota].tolist()]
        return out

    val = sample(val_pool, options["val_size"], list(range(train_lo, train_hi + 1)))
    test = sample(test_pool, options["test_size"], list(range(test_lo, test_hi + 1)))
    trained = {p.prompt for p in queries}
    if any(p.prompt in trained for p in val + test):  # the pools are disjoint by construction
        raise AssertionError("multihop: a held-out query reached the training stream")

    tokenizer = CharTokenizer(MULTIHOP_ALPHABET)
    splits = {"train": _stream(tokenizer, train_text), "val": _stream(tokenizer, _lines(val)), "test": _stream(tokenizer, _lines(test))}
    info = {
        "format": "fact 'a>b' (f(a) = b); query 'a' + '>' * k + '=' then f^k(a); depth = k",
        "table": {names[a]: names[int(successor[a])] for a in range(n)},
        "problems": {"train": len(queries), "val": len(val), "test": len(test)},
        "facts": n * options["fact_copies"],
    }
    return TextDataset("multihop", tokenizer, splits, {"val": val, "test": test}, {}, info)


# --------------------------------------------------------------------------- registry

TEXT_TASKS: dict[str, TextTask] = {
    "shakespeare-char": TextTask(
        "shakespeare-char", "Tiny Shakespeare by character (65 characters), first 90% train, last 10% val",
        {"text_file": ""}, _build_shakespeare_char, vocab_hint=65,
    ),
    "shakespeare-bpe": TextTask(
        "shakespeare-bpe", "Tiny Shakespeare with a byte-level BPE tokenizer trained on the train part, same split",
        {"text_file": "", "vocab_size": 512}, _build_shakespeare_bpe, vocab_hint=512,
    ),
    "arithmetic": TextTask(
        "arithmetic", "Left-to-right chains of + - * (depth = operations); trains on shallow chains, tests deeper (generated)",
        {"train_depths": "1-3", "test_depths": "1-6", "digits": 2, "train_size": 20000, "val_size": 500, "test_size": 1200},
        _build_arithmetic, vocab_hint=len(ARITHMETIC_ALPHABET), problem_lines=True,
    ),
    "multihop": TextTask(
        "multihop", "A table of facts and queries composing k of them; held-out compositions and deeper k at test (generated)",
        {"entities": 200, "train_depths": "1-4", "test_depths": "1-8", "holdout": 0.25, "fact_copies": 50,
         "train_size": 20000, "val_size": 200, "test_size": 800},
        _build_multihop, vocab_hint=len(MULTIHOP_ALPHABET), problem_lines=True,
    ),
}


def build_text(name: str, options: dict | None = None, seed: int = 0, progress: bool = False) -> TextDataset:
    """Build a corpus; the same name, options and seed give the same bytes."""
    if name not in TEXT_TASKS:
        raise PonderInputError(f"text corpus {name!r}: expected one of {', '.join(TEXT_TASKS)}")
    task = TEXT_TASKS[name]
    resolved = _resolve(task, options or {})
    dataset = task.build(resolved, int(seed), progress)
    dataset.spec = {"name": name, "seed": int(seed), "options": resolved, **dataset.spec}
    return dataset


# ------------------------------------------------------------------------ the folder

def _padded(rows: list[list[int]]) -> np.ndarray:
    """(P, L) int32, each row padded with PAD to the longest."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), PAD, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _arrays(dataset: TextDataset) -> dict[str, np.ndarray]:
    tokenizer = dataset.tokenizer
    out = {}
    for split, tokens in dataset.splits.items():
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or (tokens.size and int(tokens.max()) >= tokenizer.vocab_size):
            raise ValueError(f"split '{split}': expected a 1-D stream of token ids below {tokenizer.vocab_size}")
        out[f"{split}.tokens"] = np.ascontiguousarray(tokens, dtype=np.uint16)
    for split, problems in dataset.problems.items():
        if not problems:
            continue
        out[f"problems.{split}.prompt"] = _padded([tokenizer.encode(p.prompt) for p in problems])
        out[f"problems.{split}.answer"] = _padded([tokenizer.encode(p.answer) for p in problems])
        out[f"problems.{split}.depth"] = np.array([p.depth for p in problems], dtype=np.int32)
    return out


def save_text(dataset: TextDataset, out_dir: Path) -> dict:
    """Write the folder (`ponder.tasks.dataset.write_folder`). Returns the manifest."""
    def manifest(sha256: str, nbytes: int) -> dict:
        return {
            "format": FORMAT,
            "name": dataset.name,
            "tokenizer": dataset.tokenizer.to_dict(),
            "vocab_size": dataset.tokenizer.vocab_size,
            "tokens": {k: int(len(v)) for k, v in dataset.splits.items()},
            "problems": {k: len(v) for k, v in dataset.problems.items()},
            "corpus_sha256": dataset.spec.get("corpus", {}).get("sha256"),
            "spec": dataset.spec,
            "info": dataset.info,
            "data_file": DATA_FILE,
            "bytes": nbytes,
            "sha256": sha256,
        }

    return write_folder(out_dir, _arrays(dataset), manifest)


def _read_text_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise PonderInputError(f"{folder}: no such folder; expected a text dataset folder written by save_text")
    if not path.is_file():
        raise PonderInputError(f"{folder}: not a text dataset folder (no {MANIFEST}); expected a folder written by save_text")
    manifest = read_json(path, "a corrupt manifest: rebuild the folder with 'ponder data build'")
    form = manifest.get("format") if isinstance(manifest, dict) else None
    if form == PUZZLE_FORMAT:
        raise PonderInputError(f"{path}: a puzzle dataset (format '{PUZZLE_FORMAT}'), not a text dataset (format '{FORMAT}')")
    if form != FORMAT:
        raise PonderInputError(f"{path}: not a ponder text dataset manifest (expected format '{FORMAT}')")
    hint = "rebuild the folder with 'ponder data build'"
    require_fields(manifest, {"tokenizer": dict, "tokens": dict, "problems": dict, "sha256": str, "data_file": str}, path, hint)
    plain_file_name(manifest["data_file"], path, "data_file")
    for key in ("tokens", "problems"):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in manifest[key].values()):
            raise PonderInputError(f"{path}: field '{key}' must map split names to counts >= 0; {hint}")
    return manifest


def load_text(folder: Path) -> TextDataset:
    """Read a text dataset folder, checking the data file against the manifest's
    SHA-256 so a truncated or edited file is caught before training on it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    manifest = _read_text_manifest(folder)
    where = folder / MANIFEST
    path = folder / manifest["data_file"]
    if not path.is_file():
        raise PonderInputError(f"{path}: missing data file named in {where}")
    if sha256_file(path) != manifest.get("sha256"):
        raise PonderInputError(f"{path}: SHA-256 does not match {MANIFEST}; the file is corrupt or was changed, rebuild it")
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PonderInputError(f"{path}: corrupt data file ({str(e).splitlines()[0][:120]})") from None
    try:
        tokenizer = tokenizer_from_dict(manifest["tokenizer"])
    except (KeyError, PonderInputError) as e:
        raise PonderInputError(f"{where}: bad 'tokenizer' entry ({e})") from None
    try:
        splits = {split: arrays[f"{split}.tokens"] for split in manifest["tokens"]}
        problems = {}
        for split, count in manifest["problems"].items():
            problems[split] = []
            if count:
                prompts, answers, depths = (arrays[f"problems.{split}.{k}"] for k in ("prompt", "answer", "depth"))
                problems[split] = [
                    Problem(tokenizer.decode(p[p != PAD]), tokenizer.decode(a[a != PAD]), int(d))
                    for p, a, d in zip(prompts, answers, depths)
                ]
    except (KeyError, AttributeError, TypeError) as e:
        raise PonderInputError(f"{where}: manifest and data file disagree (missing {e})") from None
    for split, tokens in splits.items():
        if tokens.ndim != 1 or len(tokens) != manifest["tokens"][split]:
            raise PonderInputError(f"{path}: split '{split}' holds {tokens.size} tokens, the manifest says {manifest['tokens'][split]}")
        if tokens.size and int(tokens.max()) >= tokenizer.vocab_size:
            raise PonderInputError(f"{path}: split '{split}' holds tokens outside the tokenizer's vocabulary of {tokenizer.vocab_size}")
    return TextDataset(
        name=manifest.get("name", ""), tokenizer=tokenizer, splits=splits, problems=problems,
        spec=manifest.get("spec", {}), info=manifest.get("info", {}),
    )


# --------------------------------------------------------------------------- windows

def windows(tokens: torch.Tensor, block: int, batch: int, seed: int, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows of training batch `step`: x and y, (batch // world, block) int64
    on the tokens' device, y = x shifted one token ahead.

    Row i of the global batch starts at a window start uniform in [0, N - block - 1]
    drawn from the key of (seed, step * batch + i) alone, with tensor ops on the device
    (no generator state, no host sync). So a resumed run sees the same windows, and rank
    r of `world` gets exactly rows r*b..(r+1)*b-1 of the batch one process would see.
    """
    if tokens.ndim != 1:
        raise ValueError(f"windows: expected a (N,) token stream, got shape {tuple(tokens.shape)}")
    n = tokens.shape[0]
    if n <= block:
        raise PonderInputError(f"windows: a stream of {n} tokens is too short for block {block}; expected at least block + 1 tokens")
    if world < 1 or batch % world or not 0 <= rank < world:
        raise PonderInputError(f"windows: batch {batch} over world {world} at rank {rank}; expected the batch divisible by the world and 0 <= rank < world")
    if n - block > 2**31:
        raise PonderInputError(f"windows: a stream of {n} tokens has more than 2**31 window starts; expected a shorter stream")
    local = batch // world
    device = tokens.device
    rows = rank * local + torch.arange(local, device=device)  # (b,) rows of the global batch
    keys = example_keys(seed, step * batch + rows)  # (b,)
    starts = integers(keys, n - block, WINDOW_SALT)  # (b,) in [0, n - block - 1]
    index = starts[:, None] + torch.arange(block + 1, device=device)  # (b, block + 1)
    if tokens.dtype == torch.uint16:  # read as int16 (indexable everywhere), then undo the sign
        chunk = tokens.view(torch.int16)[index].long() & 0xFFFF
    else:
        chunk = tokens[index].long()
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
