"""Fast decoding of recurrent-depth LMs (`ponder.lm.decoding`) against the slow, exact
references: the per-iteration cache against full recomputation and `model.generate`,
the shared cache against it at r = 1, per-token exit at threshold 0 against full depth,
per-row exit in a batch against each row alone, and the diffusion-forcing sampler at
window 1 against autoregressive decoding."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from ponder.lm.decoding import DepthCache, ExitRule, autoregressive, decode, diffusion_forcing, read_positions
from ponder.lm.models import GPT, RecurrentLM

VOCAB, CONTEXT = 13, 32


def recurrent(mean_r: int = 3, seed: int = 0) -> RecurrentLM:
    torch.manual_seed(seed)
    model = RecurrentLM(VOCAB, CONTEXT, prelude_layers=1, core_layers=2, coda_layers=1, mean_r=mean_r, hidden=32, heads=2)
    return model.eval()


def prompts(batch: int = 2, length: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def last_logits(model, idx, cache_kind, r, rule=ExitRule()):
    """Logits of idx's last position read against a cache of the others: (B, V)."""
    cache = DepthCache(cache_kind)
    read_positions(model, idx[:, :-1], cache, r)
    logits, used, _ = read_positions(model, idx[:, -1:], cache, r, rule)
    return logits[:, -1], used


def test_per_iteration_cache_is_exact():
    model, idx = recurrent(), prompts(length=9)
    logits, used = last_logits(model, idx, "per-iteration", 3)
    torch.testing.assert_close(logits, model(idx, r=3).logits[:, -1], atol=1e-5, rtol=1e-5)
    assert (used == 3).all()
    decoded = autoregressive(model, idx[:, :4], 10)
    assert torch.equal(decoded.tokens, model.generate(idx[:, :4], 10, temperature=0))
    assert decoded.summary()["core_calls_per_token"] == 3 and decoded.summary()["forward_passes_per_token"] == 1


def test_shared_cache_equals_per_iteration_at_r1_only():
    model, idx = recurrent(), prompts(length=9)
    per_iteration, _ = last_logits(model, idx, "per-iteration", 1)
    shared, _ = last_logits(model, idx, "shared", 1)
    torch.testing.assert_close(shared, per_iteration, atol=1e-6, rtol=1e-6)
    assert torch.equal(autoregressive(model, idx, 8, r=1, cache="shared").tokens, model.generate(idx, 8, temperature=0, r=1))
    deeper, _ = last_logits(model, idx, "shared", 3)
    assert not torch.allclose(deeper, last_logits(model, idx, "per-iteration", 3)[0], atol=1e-4)  # an approximation beyond r = 1


def test_shared_cache_memory_does_not_grow_with_r():
    model, idx = recurrent(), prompts()
    sizes = {(kind, r): autoregressive(model, idx, 6, r=r, cache=kind).cache_bytes for kind in ("per-iteration", "shared") for r in (2, 6)}
    assert sizes["shared", 2] == sizes["shared", 6] < sizes["per-iteration", 2] < sizes["per-iteration", 6]
    # per position: (prelude + coda + r x core layers) x keys and values x D floats, for each of B rows
    B, T, D = 2, 5 + 6 - 1, 32
    assert sizes["per-iteration", 6] == B * T * (1 + 1 + 6 * 2) * 2 * D * 4
    assert sizes["shared", 6] == B * T * (1 + 1 + 2) * 2 * D * 4


def test_exit_threshold_zero_is_full_depth_and_a_large_one_stops_at_two():
    model, idx = recurrent(mean_r=5), prompts(length=9)
    full, _ = last_logits(model, idx, "per-iteration", 5)
    for rule in (ExitRule(kl=0.0), ExitRule(latent=0.0), ExitRule()):
        logits, used = last_logits(model, idx, "per-iteration", 5, rule)
        assert torch.equal(logits, full) and (used == 5).all()
    for rule in (ExitRule(kl=1e9), ExitRule(latent=1e9)):
        _, used = last_logits(model, idx, "per-iteration", 5, rule)
        assert (used == 2).all()  # the earliest exit: the first iteration with a predecessor
        decoded = autoregressive(model, idx, 6, r=5, rule=rule)  # later tokens read the stand-in keys of the skipped iterations
        assert decoded.iterations == [2.0] * 5 and decoded.summary()["core_calls_per_token"] == (5 + 5 * 2) / 6


def test_exit_per_row_in_a_batch_equals_each_row_alone():
    model, idx = recurrent(mean_r=8, seed=3), prompts(batch=4, length=6, seed=4)
    rule = ExitRule(latent=0.25)
    batch = autoregressive(model, idx, 8, r=8, rule=rule)
    rows = [autoregressive(model, idx[b : b + 1], 8, r=8, rule=rule) for b in range(4)]
    assert torch.equal(batch.tokens, torch.cat([row.tokens for row in rows]))
    per_row = [sum(row.iterations) for row in rows]
    assert len(set(per_row)) > 1, per_row  # rows stopped at different depths: the masks mattered
    assert sum(batch.iterations) == pytest.approx(sum(per_row) / 4)


def test_diffusion_forcing_window_one_is_autoregressive_decoding():
    model, idx = recurrent(mean_r=4), prompts(batch=1, length=6)
    for rule in (ExitRule(), ExitRule(latent=0.2), ExitRule(kl=0.05)):
        ar = autoregressive(model, idx, 12, cache="shared", rule=rule)
        df = diffusion_forcing(model, idx, 12, window=1, rule=rule)
        assert torch.equal(df.tokens, ar.tokens) and df.iterations == ar.iterations
        assert df.core_calls == ar.core_calls
    exact = model.generate(idx, 12, temperature=0, r=1)
    assert torch.equal(diffusion_forcing(model, idx, 12, r=1, window=4).tokens, exact)  # r = 1: the shared cache is exact


def test_diffusion_forcing_advances_a_window_per_pass():
    model, idx = recurrent(mean_r=4), prompts(batch=1, length=6)
    new = 24
    df = diffusion_forcing(model, idx, new, window=4)
    assert df.tokens.shape == (1, 6 + new) and torch.equal(df.tokens[:, :6], idx)
    assert df.iterations == [4.0] * (new - 1)  # every committed token had its r iterations
    # the prompt's pass, r - 1 passes to fill the window, then a token per pass
    assert df.forward_passes == 1 + (4 - 1) + (new - 1)
    assert df.core_calls == 4 + (4 - 1) + (new - 1) < autoregressive(model, idx, new).core_calls / 3
    two = diffusion_forcing(model, idx, new, window=2)
    assert df.forward_passes < two.forward_passes < autoregressive(model, idx, new, cache="shared").core_calls


def test_sampling_with_temperature_is_reproducible():
    model, idx = recurrent(), prompts(batch=1)
    runs = [decode(model, idx, 10, method="diffusion", cache="shared", window=3, temperature=1.0, top_k=5,
                   generator=torch.Generator().manual_seed(7)).tokens for _ in range(2)]
    assert torch.equal(*runs)


@pytest.mark.parametrize("call, message", [
    (lambda m, idx: diffusion_forcing(m, idx, 4, window=0), "window must be >= 1"),
    (lambda m, idx: autoregressive(m, idx, 4, rule=ExitRule(kl=-0.1)), "exit thresholds"),
    (lambda m, idx: autoregressive(m, torch.zeros(1, CONTEXT + 1, dtype=torch.long), 1), "context"),
    (lambda m, idx: autoregressive(m, idx, CONTEXT), "context"),
    (lambda m, idx: decode(m, idx, 4, method="diffusion", cache="per-iteration"), "shared cache"),
    (lambda m, idx: diffusion_forcing(m, torch.zeros(2, 3, dtype=torch.long), 4), "one sequence at a time"),
    (lambda m, idx: autoregressive(GPT(VOCAB, CONTEXT, layers=1, hidden=16, heads=2), idx, 4), "recurrent-lm"),
])
def test_bad_options_raise_one_line(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call(recurrent(), prompts(batch=1))
    assert "\n" not in str(error.value)


def test_sampling_benchmark_end_to_end(tmp_path):
    """benchmarks/sampling.py on a two-step run: every row, the exact ones agreeing with plain decoding."""
    from ponder import api

    text = tmp_path / "tiny.txt"
    text.write_text("to be, or not to be, that is the question:\nwhether tis nobler in the mind to suffer\n" * 40)
    run, out = tmp_path / "run", tmp_path / "out"
    api.train(["model.hidden=16", "model.heads=2", "model.context=16", "train.batch_size=4", "train.eval_batches=1",
               "train.eval_recurrence=2", "train.steps=2", "train.lr_warmup=1", f"task.text_file={text}"],
              preset="recurrent-lm-shakespeare-char", out=str(run), progress=False)
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sampling.py"), str(run), "--out", str(out), "--recurrence", "3",
         "--prompts", "2", "--prompt-length", "4", "--new", "6", "--windows", "2", "0", "--exit-kl", "0.1", "--exit-latent", "0.1",
         "--threads", "1"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["method"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert list(rows) == ["plain (model.generate)", "autoregressive, per-iteration cache", "autoregressive, shared cache",
                          "exit KL < 0.1", "exit latent < 0.1", "diffusion, window 2", "diffusion, window 3", "diffusion, window 3, KL < 0.1"]
    exact = rows["autoregressive, per-iteration cache"]
    assert exact["agreement"] == 1 and exact["cache_bytes"] == rows["plain (model.generate)"]["cache_bytes"]
    assert rows["diffusion, window 3"]["core_calls_per_token"] < exact["core_calls_per_token"] == 3
    assert (out / "table.md").is_file() and (out / "speed_vs_quality.png").is_file()
