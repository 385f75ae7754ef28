"""Language-model runs end to end: training with validation by test-time recurrence,
exact resume after SIGKILL, the eval / sample / probe verbs, a reasoning corpus scored by
generated answers, and one-line errors for bad input."""

import json
import subprocess

import pytest
import torch

from ponder import api
from test_resume import checkpoint_step, logged, train_then_sigkill

TINY = ["model.hidden=16", "model.heads=2", "model.context=16", "train.batch_size=4", "train.eval_batches=2",
        "train.eval_recurrence=1,2,4", "train.lr_warmup=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text("to be, or not to be, that is the question:\nwhether tis nobler in the mind to suffer\n" * 60)
    return path


def test_recurrent_lm_trains_and_reports_loss_by_recurrence(text_file, tmp_path):
    run = tmp_path / "run"
    result = api.train(TINY + [f"task.text_file={text_file}", "train.steps=8", "train.eval_every=4"], preset="recurrent-lm-shakespeare-char", out=str(run), progress=False)
    assert set(result["loss_by_recurrence"]) == {"1", "2", "4"} and result["loss"] == result["loss_by_recurrence"]["4"]
    assert result["bits_per_character"] > 0 and 1 <= result["best_recurrence"] <= 4
    rows = logged(run)
    train = [r for r in rows if r.get("lr") is not None]
    assert len(train) == 8 and train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in rows if "loss_by_recurrence" in r][:2] == [4, 8]
    assert (run / "curves.png").is_file()


def test_sigkill_then_resume_equals_uninterrupted(text_file, tmp_path, ponder_cmd):
    args = ["--preset", "recurrent-lm-shakespeare-char", *TINY, f"task.text_file={text_file}", "train.steps=30", "train.eval_every=10", "train.checkpoint_every=2"]
    full = tmp_path / "full"
    subprocess.run(ponder_cmd + ["train", "--out", str(full), *args], check=True, capture_output=True)
    killed = tmp_path / "killed"
    train_then_sigkill(ponder_cmd, killed, args, after_step=4)
    if (killed / "results.json").exists():
        pytest.skip("the run finished before it could be killed")
    assert 4 <= checkpoint_step(killed) < 30
    subprocess.run(ponder_cmd + ["train", "--resume", str(killed)], check=True, capture_output=True)
    assert logged(killed) == logged(full)


def test_verbs_on_a_run(text_file, tmp_path, ponder_cmd):
    run = tmp_path / "run"
    api.train(TINY + [f"task.text_file={text_file}", "train.steps=4", "train.eval_every=4"], preset="recurrent-lm-shakespeare-char", out=str(run), progress=False)
    evaluated = api.evaluate(str(run), recurrence="1,8")
    assert set(evaluated["loss_by_recurrence"]) == {"1", "4", "8"}  # the model's own depth is always there
    one = api.sample(str(run), prompt="to be", max_new=12, temperature=0.0)
    assert len(one["text"]) == 12 and one == api.sample(str(run), prompt="to be", max_new=12, temperature=0.0)  # greedy: deterministic
    fast = api.sample(str(run), prompt="to be", max_new=8, temperature=0.0, decoder="diffusion", window=4)
    assert len(fast["text"]) == 8 and fast["decoding"]["cache"] == "shared" and fast["decoding"]["iterations_per_token"] == 4
    probed = api.probe(str(run), "to be or", recurrence=3, out=str(tmp_path / "probe.png"))
    assert set(probed["ranks"]) == {"logit lens", "coda lens"} and all(len(v) == 3 for v in probed["ranks"]["coda lens"].values())
    assert (tmp_path / "probe.png").is_file()
    for args, message in [
        (["sample", str(run), "--prompt", "QQ"], "not in the tokenizer's vocabulary"),
        (["eval", str(run), "--recurrence", "0"], "--recurrence"),
        (["sample", str(run), "--prompt", "to be", "--decoder", "diffusion", "--window", "0"], "--window >= 1"),
        (["sample", str(run), "--prompt", "to be", "--exit-kl", "-1"], "--exit-kl >= 0"),
        (["sample", str(run), "--prompt", "to be or not to be, that", "--temperature", "0"], "longer than the model's context of 16"),
        (["sample", str(run), "--prompt", "to be", "--cache", "shared", "--max-new", "20"], "exceed the model's context"),
        (["sample", str(run), "--prompt", "to be", "--decoder", "diffusion", "--cache", "per-iteration"], "shared cache"),
        (["train", "--preset", "gpt-shakespeare-char", "--out", str(tmp_path / "x"), f"task.text_file={tmp_path / 'missing.txt'}"], "missing.txt"),
        (["train", "--preset", "gpt-shakespeare-char", "--out", str(tmp_path / "y"), "task.name=sudoku"], "is a language model but task.name=sudoku"),
    ]:
        done = subprocess.run(ponder_cmd + args, capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_reasoning_corpus_scores_generated_answers_by_depth(tmp_path):
    run = tmp_path / "arith"
    result = api.train(
        ["model.hidden=16", "model.heads=2", "model.context=32", "train.steps=3", "train.batch_size=4", "train.eval_batches=1",
         "task.name=arithmetic", "task.train_size=100", "task.val_size=10", "task.test_size=24", "train.lr_warmup=1"],
        preset="gpt-shakespeare-char", out=str(run), progress=False,
    )
    answers = result["answers"]["default"]
    assert answers["n"] == 24 and set(answers["by_depth"]) == {"1", "2", "3", "4", "5", "6"}
    assert 0 <= answers["accuracy"] <= 1


def test_text_dataset_folder_from_the_cli(tmp_path, ponder_cmd):
    out = tmp_path / "arith"
    done = subprocess.run(ponder_cmd + ["data", "build", "arithmetic", "--out", str(out), "train_size=40", "val_size=4", "test_size=6", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["train"] > 0
    shown = subprocess.run(ponder_cmd + ["data", "show", str(out), "--split", "test", "-n", "2"], capture_output=True, text=True)
    assert shown.returncode == 0 and "(depth" in shown.stdout
    run = tmp_path / "run"
    api.train(["model.hidden=16", "model.heads=2", "model.context=32", "train.steps=2", "train.batch_size=4", "train.eval_batches=1",
               "task.name=arithmetic", f"task.data_dir={out}"], preset="gpt-shakespeare-char", out=str(run), progress=False)
    assert (run / "results.json").is_file()


def test_retrofit_a_gpt_run_starts_from_its_function(text_file, tmp_path):
    """A trained gpt run becomes a recurrent LM (prelude, core, coda from its layers):
    before any further training, at r = 1 it has the source's validation loss exactly;
    then it trains on with a recurrence curriculum, and resumes."""
    source = tmp_path / "gpt"
    base = ["model.heads=2", "model.context=16", "train.batch_size=4", "train.eval_batches=2", f"task.text_file={text_file}"]
    api.train(base + ["model.hidden=16", "model.layers=4", "train.steps=6"], preset="gpt-shakespeare-char", out=str(source), progress=False)
    source_loss = api.evaluate(str(source))["loss"]
    run = tmp_path / "retro"
    result = api.train(base + [f"model.init_from={source}", "model.retrofit_split=1,2,1", "train.steps=1", "train.lr=1e-12",
                               "train.eval_recurrence=1,2", "train.lr_warmup=1", "train.ema=0"],
                       preset="recurrent-lm-shakespeare-char", out=str(run), progress=False)
    assert abs(result["loss_by_recurrence"]["1"] - source_loss) < 1e-4  # one step at lr 1e-12 leaves the function as it was
    config = json.loads((run / "config.json").read_text())["model"]
    assert (config["hidden"], config["prelude_layers"], config["core_layers"], config["coda_layers"]) == (16, 1, 2, 1)
    more = api.train(["train.steps=3", "train.recurrence_warmup=3"][:1], resume=str(run), progress=False)
    assert more["step"] == 3
    with pytest.raises(Exception, match="retrofit split"):
        api.train(base + [f"model.init_from={source}", "model.retrofit_split=1,1,1"], preset="recurrent-lm-shakespeare-char", out=str(tmp_path / "bad"), progress=False)


def test_a_gpt_trains_on_from_a_gpt_run(text_file, tmp_path):
    """`model.init_from` on a gpt starts from the source's weights (the baseline that a
    retrofit is compared with): with no learning it has the source's loss; a split or
    another family is refused."""
    source = tmp_path / "gpt"
    base = ["model.heads=2", "model.context=16", "train.batch_size=4", "train.eval_batches=2", f"task.text_file={text_file}"]
    api.train(base + ["model.hidden=16", "model.layers=3", "train.steps=6"], preset="gpt-shakespeare-char", out=str(source), progress=False)
    source_loss = api.evaluate(str(source))["loss"]
    result = api.train(base + [f"model.init_from={source}", "train.steps=1", "train.lr=1e-12", "train.lr_warmup=1", "train.ema=0"],
                       preset="gpt-shakespeare-char", out=str(tmp_path / "on"), progress=False)
    assert abs(result["loss"] - source_loss) < 1e-4
    assert json.loads((tmp_path / "on" / "config.json").read_text())["model"]["layers"] == 3
    with pytest.raises(Exception, match="only a recurrent-lm is split"):
        api.train(base + [f"model.init_from={source}", "model.retrofit_split=1,1,1"], preset="gpt-shakespeare-char", out=str(tmp_path / "bad"), progress=False)
    with pytest.raises(Exception, match="model.family is .ilr."):
        api.train(base + [f"model.init_from={source}"], preset="ilr-shakespeare-char", out=str(tmp_path / "bad2"), progress=False)


class _ArithmeticOracle(torch.nn.Module):
    """A stand-in model whose greedy continuation of '\\n<chain>=' is the chain's value
    and a newline (of anything else: '?'), to check the scoring around it."""

    context = 64

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def generate(self, idx, max_new, temperature=0.0, r=None):
        from ponder.lm.text import evaluate_left_to_right

        rows = []
        for row in idx.tolist():
            text = self.tokenizer.decode(row)
            answer = f"{evaluate_left_to_right(text[1:])}\n" if text.startswith("\n") and text.endswith("=") else "?"
            new = (self.tokenizer.encode(answer) + self.tokenizer.encode("\n") * max_new)[:max_new]
            rows.append(row + new)
        return torch.tensor(rows)


def test_answer_accuracy_scores_generated_answers_after_a_line_start():
    """Every problem of the arithmetic corpus follows a newline in training, so scoring
    gives the prompt after one; an oracle for that format scores 100% at every depth, a
    model that answers wrongly 0%."""
    from ponder.lm.evaluate import answer_accuracy
    from ponder.lm.text import build_text

    text = build_text("arithmetic", {"train_size": 60, "val_size": 6, "test_size": 12})
    oracle = _ArithmeticOracle(text.tokenizer)
    scored = answer_accuracy(oracle, text.tokenizer, text.problems["test"])
    assert scored["n"] == 12 and scored["accuracy"] == 1.0 and set(scored["by_depth"].values()) == {1.0}
    wrong = [type(p)(p.prompt, p.answer + "0", p.depth) for p in text.problems["test"]]
    assert answer_accuracy(oracle, text.tokenizer, wrong)["accuracy"] == 0.0
