"""Golden losses: the first 20 training losses of every CPU preset, pinned, so that a
change of function (a block, an initialisation, the optimizer, the data stream) shows up
even when every other test still passes. Each preset runs with its own model, optimizer
and schedule on a small task (the sizes below) with batch 16 (a language model: 4
windows) and one thread.

After a deliberate change: `python tests/test_golden.py --update` rewrites
golden_losses.json (`--update NAME ...`: only those presets' entries, e.g. a new
preset's); say in the commit why the losses moved."""

import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden_losses.json"
STEPS = 20
PRESETS = [
    "trm-sudoku-cpu", "hrm-sudoku-cpu", "looped-sudoku-cpu", "score-sudoku-cpu", "urm-sudoku-cpu", "depthrec-sudoku-cpu",
    "transformer-sudoku-cpu", "attractor-sudoku-cpu", "trm-bool-depth", "transformer-bool-depth", "trm-cellular",
    "transformer-cellular", "trm-graph-reach", "transformer-graph-reach", "trm-khop", "transformer-khop", "trm-sudoku-hard-cpu",
    "looped-graph-lists", "transformer-graph-lists",
]
LM_PRESETS = [
    "gpt-shakespeare-char", "ilr-shakespeare-char", "recurrent-lm-shakespeare-char", "attractor-lm-shakespeare-char",
    "gpt-arithmetic", "recurrent-lm-arithmetic", "gpt-multihop", "recurrent-lm-multihop", "rnn-lm-shakespeare-char",
]


def first_losses(name: str, out: Path) -> list[float]:
    from ponder import api

    sizes = [] if name.endswith("shakespeare-char") else ["task.train_size=256", "task.val_size=16", "task.test_size=16"]
    run = [f"train.steps={STEPS}", "train.eval_every=1000", "train.checkpoint_every=1000", "train.log_every=1", "train.threads=1",
           "train.budget_minutes=0"]
    if name in LM_PRESETS:
        run += ["train.batch_size=4", "train.eval_batches=1", "train.eval_recurrence=1"]
    else:
        run += ["train.batch_size=16", "train.eval_segments=1"]
    api.train(sizes + run, preset=name, out=str(out), progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["event"] == "train"]


@pytest.mark.parametrize("name", PRESETS + LM_PRESETS)
def test_first_losses_are_pinned(name, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    assert name in golden, f"no golden losses for {name}: run python tests/test_golden.py --update"
    got = first_losses(name, tmp_path / name)
    want = golden[name]
    assert len(got) == len(want) == STEPS
    worst = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(got, want))
    assert worst < 1e-3, f"{name}: losses moved by up to {worst:.2e} (relative); first {got[:3]} vs {want[:3]}"


def test_every_cpu_preset_is_pinned():
    from ponder.config import build_config, preset_names

    from ponder.lm.models import LM_FAMILIES

    configs = {n: build_config(preset=n) for n in preset_names()}
    language = [n for n, c in configs.items() if c.model.family in LM_FAMILIES]
    cpu = [n for n, c in configs.items() if c.train.batching == "shrink" and n not in language]
    assert sorted(cpu) == sorted(PRESETS)
    assert sorted(language) == sorted(LM_PRESETS)


if __name__ == "__main__" and sys.argv[1:2] == ["--update"]:
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    import conftest  # noqa: F401  (the test cache folder)

    names = sys.argv[2:] or PRESETS + LM_PRESETS
    unknown = sorted(set(names) - set(PRESETS + LM_PRESETS))
    if unknown:
        sys.exit(f"not a pinned preset: {', '.join(unknown)} (add it to PRESETS or LM_PRESETS first)")
    golden = json.loads(GOLDEN.read_text()) if sys.argv[2:] else {}
    with tempfile.TemporaryDirectory() as tmp:
        golden.update({n: first_losses(n, Path(tmp) / n) for n in names})
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {GOLDEN} ({', '.join(names)})")
