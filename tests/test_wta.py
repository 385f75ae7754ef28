"""Winner-take-all latent starts in training, and the "first to halt" selection."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from ponder import api
from ponder.errors import PonderInputError
from ponder.tasks.keyed import example_keys, normal
from ponder.train.loop import start_noise
from ponder.train.losses import winners


def test_winners_match_a_loop_over_groups():
    torch.manual_seed(0)
    for _ in range(20):
        b = int(torch.randint(1, 30, ()))
        group = torch.randint(0, 6, (b,))
        loss = torch.randint(0, 4, (b,)).float()  # many ties
        expected = torch.zeros(b, dtype=torch.bool)
        for g in group.unique():
            rows = (group == g).nonzero().flatten()
            expected[rows[loss[rows].argmin()]] = True  # argmin: the first lowest
        assert torch.equal(winners(loss, group), expected)


def test_start_noise_keeps_start_one_and_is_a_function_of_the_keys():
    keys = example_keys(0, torch.arange(4).repeat_interleave(3))
    state = (torch.zeros(12, 5, 2), torch.ones(12, 5, 2))
    noisy = start_noise(state, keys, starts=3, scale=0.5)
    plain = torch.arange(12) % 3 == 0
    for before, after in zip(state, noisy):
        assert torch.equal(after[plain], before[plain]) and (after[~plain] != before[~plain]).all()
    assert all(torch.equal(a, b) for a, b in zip(noisy, start_noise(state, keys, starts=3, scale=0.5)))
    assert not torch.equal(noisy[0][1], noisy[0][2]) and not torch.equal(noisy[0][1], noisy[0][4])
    z = normal(torch.arange(2000), 64)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01 and torch.isfinite(z).all()


def losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["event"] == "train"]


def test_identical_starts_train_exactly_as_one(tmp_path):
    """With no noise every start is the plain start: the winner is the first, the
    halting loss is the same mean, so the run is the plain run, loss for loss (weights
    to float64 rounding: the halting loss sums three times the rows)."""
    api.train(TINY + ["train.dtype=float64"], out=str(tmp_path / "plain"), progress=False)
    api.train(TINY + ["train.dtype=float64", "train.wta_starts=3", "train.wta_noise=0"], out=str(tmp_path / "wta"), progress=False)
    assert losses(tmp_path / "plain") == pytest.approx(losses(tmp_path / "wta"), rel=1e-12, abs=1e-12)
    plain, wta = (load_file(tmp_path / name / "checkpoint.safetensors") for name in ("plain", "wta"))
    weights = [k for k in plain if k.startswith("model.")]
    assert weights and all(torch.allclose(plain[k], wta[k], rtol=1e-7, atol=1e-9) for k in weights)
    noisy = api.train(TINY + ["train.wta_starts=3"], out=str(tmp_path / "noisy"), progress=False)
    assert losses(tmp_path / "noisy") != losses(tmp_path / "plain") and 0 <= noisy["exact_accuracy"] <= 1


@pytest.mark.parametrize("setting, message", [
    (["train.wta_starts=0"], "train.wta_starts"),
    (["train.wta_noise=-1"], "train.wta_noise"),
    (["train.wta_starts=2", "train.batching=refill"], "train.batching=shrink"),
    (["train.loss_target=nearest"], "one right answer per example"),
    (["train.loss_target=any"], "train.loss_target"),
])
def test_bad_settings_are_named(tmp_path, setting, message):
    with pytest.raises(PonderInputError, match=message):
        api.train(TINY + setting, out=str(tmp_path / "bad"), progress=False)
    assert not (tmp_path / "bad" / "checkpoint.safetensors").exists()
