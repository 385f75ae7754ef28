"""Every shipped preset loads with strict keys and builds a model that runs."""

import pytest
import torch

from ponder import api
from ponder.config import DEFAULT_PRESET, build_config, preset_names
from ponder.models import build_model
from ponder.tasks.sudoku import SIZE, VOCAB, peer_mask


@pytest.mark.parametrize("name", preset_names())
def test_preset_builds_and_runs_a_segment(name):
    cfg = build_config(preset=name)
    model = build_model(cfg.model, VOCAB, SIZE, peer_mask())
    out = model(torch.randint(0, VOCAB, (1, SIZE)))
    assert out.logits.shape == (1, SIZE, VOCAB) and out.halt_logits.shape == (1,)


def test_default_is_shipped_and_listed():
    assert DEFAULT_PRESET in preset_names()
    listed = {row["name"]: row for row in api.presets()}
    assert set(listed) == set(preset_names())
    assert all(row["params"] > 0 and row["description"] for row in listed.values())
