"""The nonlinear RNN LM (`rnn-lm`): Newton-in-time against the loop and a written-out
reference (outputs and gradients), training with either solver, generation with the
carried state, option errors, and the benchmark's quick mode."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ponder.config import build_config, parse_overrides
from ponder.errors import PonderInputError
from ponder.lm.models import RNNLM, KVCache, build_lm
from ponder.lm.retrofit import retrofit_from_spec
from ponder.nn.blocks import RNN_CELLS, RNN_SOLVERS, RecurrentMixer, Rotary
from ponder.registry import check_names

ROOT = Path(__file__).resolve().parent.parent
V, CONTEXT, D = 11, 24, 16
PRESET = "rnn-lm-shakespeare-char"


def tiny(cell="diag_gru", solver="newton", dtype=torch.float64, seed=0, **overrides) -> RNNLM:
    torch.manual_seed(seed)
    args = dict(hidden=D, expansion=2.0, layers=2, cell=cell, rnn_solver=solver)
    args.update(overrides)
    return build_lm("rnn-lm", V, CONTEXT, **args).to(dtype)


def grads(model, loss):
    return torch.autograd.grad(loss, list(model.parameters()))


def reference_logits(model: RNNLM, idx):
    """The diagonal-GRU LM written out: per block, the GRU equations in a loop over t
    (torch.nn.GRUCell's layout r, z, n with per-unit recurrent weights), then the MLP."""
    h = model.embed(idx)  # (B, T, D), no positions
    for block in model.blocks.blocks:
        cell = block.mix.cell
        a = block.norm1(h)
        (w_r, w_z, w_n), (b_r, b_z, b_n) = cell.weight_hh.chunk(3), cell.bias_hh.chunk(3)
        u_r, u_z, u_n = (a @ cell.weight_ih.T + cell.bias_ih).chunk(3, dim=-1)  # (B, T, D) each
        s = torch.zeros_like(a[:, 0])
        states = []
        for t in range(a.shape[1]):
            r = torch.sigmoid(u_r[:, t] + w_r * s + b_r)
            z = torch.sigmoid(u_z[:, t] + w_z * s + b_z)
            n = torch.tanh(u_n[:, t] + r * (w_n * s + b_n))
            s = (1 - z) * n + z * s
            states.append(s)
        h = h + block.mix.out(torch.stack(states, dim=1))
        h = h + block.mlp(block.norm2(h))
    return model.head_logits(h)


def test_newton_matches_the_written_out_gru_lm():
    model = tiny()
    idx = torch.randint(0, V, (3, CONTEXT), generator=torch.Generator().manual_seed(1))
    logits, ref = model(idx).logits, reference_logits(model, idx)
    assert torch.allclose(logits, ref, atol=1e-10, rtol=0)
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for (name, _), a, b in zip(model.named_parameters(), grads(model, (logits * w).sum()), grads(model, (ref * w).sum())):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-8), name


@pytest.mark.parametrize("cell", RNN_CELLS)
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_newton_and_sequential_give_the_same_logits_and_gradients(cell, dtype, atol):
    """Odd sizes (batch 3, 23 positions); gradients to every parameter through the adjoint
    scan (Newton) and through ordinary autograd (the loop)."""
    model = tiny(cell, dtype=dtype)
    idx = torch.randint(0, V, (3, CONTEXT - 1), generator=torch.Generator().manual_seed(3))
    w = torch.randn(3, CONTEXT - 1, V, generator=torch.Generator().manual_seed(4), dtype=dtype)
    out = {}
    for solver in RNN_SOLVERS:
        model.rnn_solver = solver
        logits = model(idx).logits
        out[solver] = (logits, grads(model, (logits * w).sum()))
    assert all(m.trace.converged for m in model.mixers())
    (a, ga), (b, gb) = out["newton"], out["sequential"]
    assert torch.allclose(a, b, atol=atol, rtol=0)
    for (name, _), x, y in zip(model.named_parameters(), ga, gb):
        assert torch.allclose(x, y, atol=atol, rtol=atol), name


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_training_with_newton_equals_training_with_the_loop(dtype, rtol):
    """Ten AdamW steps from the same seed on the same batches: the same loss at every
    step, and the same weights at the end, whichever solver computes the recurrence."""
    losses, weights = {}, {}
    for solver in RNN_SOLVERS:
        model = tiny(solver=solver, dtype=dtype)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
        generator = torch.Generator().manual_seed(5)
        losses[solver] = []
        for _ in range(10):
            idx = torch.randint(0, V, (4, CONTEXT + 1), generator=generator)
            loss = F.cross_entropy(model(idx[:, :-1]).logits.flatten(0, 1), idx[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[solver].append(loss.item())
        weights[solver] = torch.cat([p.detach().flatten() for p in model.parameters()])
    for step, (a, b) in enumerate(zip(losses["newton"], losses["sequential"])):
        assert abs(a - b) <= rtol * abs(b), (step, a, b)
    assert losses["newton"][-1] < losses["newton"][0]
    assert torch.allclose(weights["newton"], weights["sequential"], atol=100 * rtol, rtol=0)


def test_ponder_train_with_either_solver_logs_the_same_losses(tmp_path):
    """`ponder train` wiring: model.rnn_solver reaches the model and changes nothing but
    the computation (the log rounds losses to 1e-6)."""
    from ponder import api

    text = tmp_path / "tiny.txt"
    text.write_text("to be or not to be, that is the question\n" * 40)
    shrink = ["model.hidden=16", "model.layers=2", "model.context=16", "train.steps=10", "train.batch_size=4", "train.eval_batches=1",
              "train.eval_every=5", "train.log_every=1", "train.lr_warmup=2", f"task.text_file={text}"]
    logs = {}
    for solver in RNN_SOLVERS:
        out = tmp_path / solver
        api.train([*shrink, f"model.rnn_solver={solver}"], preset=PRESET, out=str(out), progress=False)
        logs[solver] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert json.loads((out / "config.json").read_text())["model"]["rnn_solver"] == solver
    for key in ("train", "val"):
        a, b = ([r["loss"] for r in logs[s] if r["event"] == key] for s in RNN_SOLVERS)
        assert len(a) == len(b) == (10 if key == "train" else 2)
        assert max(abs(x - y) for x, y in zip(a, b)) <= 5e-6, key
    assert api.evaluate(str(tmp_path / "newton"))["loss"] > 0
    sampled = api.sample(str(tmp_path / "newton"), prompt="to be", max_new=20, temperature=0)
    assert sampled["tokens"] == 20


@pytest.mark.parametrize("cell", RNN_CELLS)
def test_generation_carries_one_state_per_layer(cell):
    """Cached generation steps each layer's cell once per token from the stored state:
    greedy tokens equal recomputing the whole prefix, the cache holds one (B, S) state per
    layer and no keys, and its size does not grow with the sequence."""
    model = tiny(cell).eval()
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(6))
    cache = KVCache()
    cached = model.generate(prompt, CONTEXT - 5, temperature=0, cache=cache)
    assert torch.equal(cached, model.generate(prompt, CONTEXT - 5, temperature=0, use_cache=False))
    state = model.mixers()[0].cell.state_size
    assert not cache.entries and len(cache.states) == 2
    assert all(t.shape == (2, state) and n == CONTEXT - 1 for n, t in cache.states.values())
    assert cache.nbytes() == 2 * 2 * state * 8
    longer = model.generate(prompt, CONTEXT + 6, temperature=0)  # past the context: the window slides
    assert torch.equal(longer[:, : CONTEXT], cached[:, : CONTEXT])
    model.rnn_solver = "sequential"
    assert torch.equal(cached, model.generate(prompt, CONTEXT - 5, temperature=0))


def test_no_position_encoding_and_the_recurrence_runs_outside_autocast():
    model = tiny(dtype=torch.float32)
    assert model.embed.positions is None and not any(isinstance(m, Rotary) for m in model.modules())
    assert all(isinstance(m, RecurrentMixer) for m in model.mixers())
    idx = torch.randint(0, V, (2, CONTEXT))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx).logits
    assert torch.isfinite(logits).all() and all(m.trace.converged for m in model.mixers())
    nanogpt = build_config(PRESET, overrides=parse_overrides(["model.block_style=nanogpt"]))  # learned positions: harmless
    from ponder.lm.train import build_language_model

    assert build_language_model(nanogpt.model, V).embed.positions is not None


@pytest.mark.parametrize("call, message", [
    (lambda: tiny(solver="loop"), "rnn_solver: expected one of newton, sequential, got 'loop'"),
    (lambda: tiny(cell="gru"), "cell: expected one of diag_gru, diag_lstm, got 'gru'"),
    (lambda: tiny(newton_iters=0), "newton_iters"),
    (lambda: tiny(newton_tol=0.0), "newton_tol"),
    (lambda: tiny(layers=0), "layers"),
    (lambda: tiny(positions="alibi"), "positions"),
    (lambda: tiny(repeats=[1, 1]), "does not take repeats"),
    (lambda: setattr(tiny(), "rnn_solver", "scan"), "rnn_solver"),
    (lambda: retrofit_from_spec(tiny(), "1,1,0"), "retrofit needs a GPT, got RNNLM"),  # RNN blocks do not fit a recurrent-lm
])
def test_bad_options_raise_one_line(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("key, value", [("model.rnn_solver", "parallel"), ("model.cell", "lstm")])
def test_bad_config_values_name_the_key(key, value):
    with pytest.raises(PonderInputError, match=f"config key '{key}'.*got '{value}'") as error:
        check_names(build_config(PRESET, overrides={key: value}))
    assert "\n" not in str(error.value)


def test_benchmark_quick_end_to_end(tmp_path):
    """benchmarks/rnn_lm.py speed and curves in quick mode, then report: every variant
    timed, the solvers' losses equal, the tables and the plot written."""
    text = tmp_path / "tiny.txt"
    text.write_text("to be or not to be, that is the question\n" * 40)
    script, out = str(ROOT / "benchmarks" / "rnn_lm.py"), tmp_path / "out"
    for args in (["speed", "--quick"], ["curves", "--quick", f"task.text_file={text}"]):
        done = subprocess.run([sys.executable, script, *args, "--out", str(out), "--threads", "1"], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
    speed = json.loads((out / "speed.json").read_text())
    assert {(r["context"], r["variant"]) for r in speed["rows"]} == {(T, v) for T in (16, 32) for v in ("newton", "sequential")}
    assert all(r["tokens_per_s"] > 0 and r["max_loss_diff_vs_newton"] < 1e-4 for r in speed["rows"])
    curves = json.loads((out / "curves.json").read_text())
    assert set(curves["runs"]) == {"newton", "sequential"} and curves["max_train_loss_diff"] < 1e-4
    assert len(curves["runs"]["newton"]["train"]) == 4 and (out / "curves.png").is_file()
    report = subprocess.run([sys.executable, script, "report", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert report.returncode == 0 and report.stdout == (out / "speed.md").read_text() + "\n" + (out / "curves.md").read_text()
