"""Sharded checkpoints: exact round trips, atomic saves, verified shards, bf16 moments,
and a GPU-size model within what a short GPU allocation can carry back."""

import copy
import json
import pickle

import pytest
import torch
from safetensors import safe_open

from ponder.errors import PonderInputError
from ponder.train import checkpoint as ckpt
from ponder.train.checkpoint import checkpoint_files, read_checkpoint, restore, save_checkpoint
from ponder.train.ema import EMA
from ponder.train.optim import AdamATan2

SHARD = 32 * 1024  # small enough that the tiny state below needs several shards


def make(opt="adamatan2", seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
    optimizer = AdamATan2(model.parameters(), lr=3e-3, weight_decay=0.1) if opt == "adamatan2" else torch.optim.AdamW(model.parameters(), lr=3e-3)
    return model, EMA(model, 0.9), optimizer


g = torch.Generator().manual_seed(1)
X = torch.randn(256, 16, generator=g)
Y = torch.sin(X @ torch.randn(16, 4, generator=g))


def train(model, ema, optimizer, start, stop):
    """Deterministic steps: batch `s` is the same in every run."""
    for s in range(start, stop):
        rows = slice(s * 32 % 256, s * 32 % 256 + 32)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(X[rows]), Y[rows]).backward()
        optimizer.step()
        ema.update(model)


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


def state_of(model, ema, optimizer):
    return {"model": model.state_dict(), "ema": ema.model.state_dict(), "updates": ema.updates, "optim": optimizer.state_dict()}


def assert_same(a, b):
    assert a["updates"] == b["updates"]
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    sa, sb = a["optim"]["state"], b["optim"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for k in sa[i]:
            assert sa[i][k].dtype == sb[i][k].dtype and torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert a["optim"]["param_groups"] == b["optim"]["param_groups"]


@pytest.mark.parametrize("opt", ["adamatan2", "adamw"])
def test_sharded_round_trip_is_exact(tmp_path, opt):
    trained = make(opt)
    train(*trained, 0, 3)
    path = tmp_path / "checkpoint.safetensors"
    rng = torch.get_rng_state()
    save_checkpoint(path, *trained, {"step": 3}, shard_bytes=SHARD)

    files = checkpoint_files(path)
    assert files[0] == path and len(files) >= 4
    assert sorted(f.name for f in files) == files_in(tmp_path)
    # The limit includes the safetensors header: every file is within it as written.
    assert all(f.stat().st_size <= SHARD for f in files), [f.stat().st_size for f in files]

    tensors, meta = read_checkpoint(path)
    assert meta["step"] == 3 and len(meta["shards"]) == len(files) - 1
    assert meta["split"], "the 64x64 weights (16 KiB) straddle 32 KiB shards, so some are cut"
    for k, v in trained[0].state_dict().items():
        assert torch.equal(tensors[f"model.{k}"], v)

    torch.manual_seed(123)  # restore must bring the RNG back
    fresh = make(opt, seed=7)
    restore(path, *fresh)
    assert_same(state_of(*fresh), state_of(*trained))
    assert torch.equal(torch.get_rng_state(), rng)


def test_small_state_is_one_file(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, *make(), {"step": 0})
    assert files_in(tmp_path) == ["checkpoint.safetensors"] and checkpoint_files(path) == [path]
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["ponder"])
    assert "shards" not in meta and "split" not in meta


def test_tensor_larger_than_a_shard_is_cut(tmp_path):
    model = torch.nn.Linear(128, 256)  # 128 KiB weight, four times the shard size
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, model, None, torch.optim.SGD(model.parameters(), lr=0.1), {"step": 0}, shard_bytes=SHARD)
    assert all(f.stat().st_size <= SHARD for f in checkpoint_files(path))
    tensors, meta = read_checkpoint(path)
    assert meta["split"]["model.weight"]["parts"] >= 4
    assert torch.equal(tensors["model.weight"], model.weight) and not any("#" in k for k in tensors)


@pytest.mark.parametrize("failure", ["replace", "write"])
def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "checkpoint.safetensors"
    state = make()
    train(*state, 0, 2)
    save_checkpoint(path, *state, {"step": 2}, shard_bytes=SHARD)
    first, first_files = copy.deepcopy(state_of(*state)), files_in(tmp_path)  # state_dict() shares storage
    saved_first = read_checkpoint(path)[0]
    train(*state, 2, 4)

    if failure == "replace":  # killed just before the rename: the new main file never appears
        def boom(*args, **kwargs):
            raise OSError("simulated crash before rename")

        monkeypatch.setattr(ckpt.os, "replace", boom)
    else:  # killed half-way through writing the main file's temporary copy
        real = ckpt._write_synced

        def half(target, data, written):
            if target.name.endswith(".tmp"):
                target.write_bytes(data[: len(data) // 2])
                raise OSError("simulated crash mid-write")
            real(target, data, written)

        monkeypatch.setattr(ckpt, "_write_synced", half)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, *state, {"step": 4}, shard_bytes=SHARD)
    monkeypatch.undo()

    assert files_in(tmp_path) == first_files  # the failed save's shards and temp file are gone
    tensors, meta = read_checkpoint(path)
    assert meta["step"] == 2 and tensors.keys() == saved_first.keys()
    assert all(torch.equal(tensors[k], saved_first[k]) for k in tensors)
    fresh = make(seed=5)
    restore(path, *fresh)
    assert_same(state_of(*fresh), first)

    # What a SIGKILL could leave: a partial temp file and a shard no main file lists.
    (tmp_path / "checkpoint.safetensors.tmp").write_bytes(b"partial")
    (tmp_path / "checkpoint.4-0123abcd-1.safetensors").write_bytes(b"orphan")
    (tmp_path / "checkpoint.best.safetensors").write_bytes(b"not ours")  # not a shard name: kept
    save_checkpoint(path, *state, {"step": 4}, shard_bytes=SHARD)
    assert files_in(tmp_path) == sorted([f.name for f in checkpoint_files(path)] + ["checkpoint.best.safetensors"])
    assert not (set(first_files) - {"checkpoint.safetensors"}) & set(files_in(tmp_path)), "old shards removed"
    assert read_checkpoint(path)[1]["step"] == 4


def test_saves_at_the_same_step_do_not_collide(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    state = make()
    save_checkpoint(path, *state, {"step": 5}, shard_bytes=SHARD)
    before = set(checkpoint_files(path)[1:])
    train(*state, 0, 1)
    save_checkpoint(path, *state, {"step": 5}, shard_bytes=SHARD)
    after = set(checkpoint_files(path)[1:])
    assert before and after and not before & after
    fresh = make(seed=3)
    restore(path, *fresh)
    assert_same(state_of(*fresh), state_of(*state))


@pytest.mark.parametrize("damage", ["missing", "truncated", "altered"])
def test_bad_shard_is_a_one_line_error_naming_it(tmp_path, damage):
    path = tmp_path / "checkpoint.safetensors"
    state = make()
    train(*state, 0, 1)
    save_checkpoint(path, *state, {"step": 1}, shard_bytes=SHARD)
    shard = checkpoint_files(path)[2]
    data = shard.read_bytes()
    if damage == "missing":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(data[:-100])
    else:
        shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(PonderInputError) as e:
        read_checkpoint(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(shard)) and "expected" in message
    expected = {"missing": "missing", "truncated": f"{len(data) - 100} bytes; expected {len(data)}", "altered": "SHA-256"}[damage]
    assert expected in message
    with pytest.raises(PonderInputError, match=str(shard.name)):
        restore(path, *make())


def test_main_file_errors_unchanged(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    with pytest.raises(PonderInputError, match="no checkpoint"):
        read_checkpoint(path)
    assert checkpoint_files(path) == []
    save_checkpoint(path, *make(), {"step": 0}, shard_bytes=SHARD)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PonderInputError, match="corrupt checkpoint"):
        read_checkpoint(path)


def test_bf16_moments_resume_close_and_smaller(tmp_path):
    """Save at step K of N with bf16 moments, resume in fresh objects, finish; compare
    with the uninterrupted run. Measured: max over parameters of max|diff| / max|weight|
    is 1.6e-4 to 2.0e-4 over five seeds (K=100, N=200, lr 3e-3); tolerance 1e-3.
    With float32 moments the same resume is bit-identical."""
    n, k = 200, 100
    reference = make()
    train(*reference, 0, n)
    sizes = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        run = make()
        train(*run, 0, k)
        path = tmp_path / name / "checkpoint.safetensors"
        path.parent.mkdir()
        save_checkpoint(path, *run, {"step": k}, moments_dtype=dtype)
        sizes[name] = path.stat().st_size
        with safe_open(str(path), framework="pt") as f:
            assert f.get_slice("optim.0.exp_avg").get_dtype() == ("BF16" if dtype else "F32")
            assert f.get_slice("optim.0.step").get_dtype() == "F32"
            assert json.loads(f.metadata()["ponder"])["moments_dtype"] == ("bfloat16" if dtype else None)
        resumed = make(seed=9)
        restore(path, *resumed)
        assert all(v.dtype == torch.float32 for s in resumed[2].state.values() for v in s.values())
        train(*resumed, k, n)
        rel = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(resumed[0].parameters(), reference[0].parameters()))
        if dtype is None:
            assert rel == 0.0
        else:
            assert 0.0 < rel < 1e-3, rel
    moments = sum(2 * p.numel() * 4 for p in reference[0].parameters())  # exp_avg + exp_avg_sq in float32
    saved = sizes["fp32"] - sizes["bf16"]
    assert abs(saved - moments / 2) < 0.01 * moments, (saved, moments)


def test_trm_mlp_sudoku_fits_a_gpu_allocation(tmp_path):
    """About 4.9M parameters: weights + EMA + float32 moments come to 74.7 MiB in five
    files; bf16 moments bring it to 56.0 MiB in four files of <= 16 MiB."""
    from ponder.api import model_for_task
    from ponder.config import build_config
    from ponder.train.optim import build_optimizer

    cfg = build_config(preset="trm-mlp-sudoku")
    model = model_for_task(cfg)
    ema = EMA(model, cfg.train.ema)
    optimizer = build_optimizer(model, cfg.train)
    assert isinstance(optimizer, AdamATan2)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    ema.update(model)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, model, ema, optimizer, {"step": 1, "config": cfg.to_dict()}, moments_dtype=torch.bfloat16)
    sizes = [f.stat().st_size for f in checkpoint_files(path)]
    assert sum(sizes) <= 64 * 2**20 and max(sizes) <= 16 * 2**20, sizes
    assert len(sizes) <= 4
    tensors, _ = read_checkpoint(path)
    assert torch.equal(tensors["model.net.blocks.0.mlp.gate_up.weight"], model.net.blocks[0].mlp.gate_up.weight)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.safetensors"
    state = make()
    train(*state, 0, 1)
    save_checkpoint(path, *state, {"step": 1, "note": "é"}, shard_bytes=SHARD, moments_dtype=torch.bfloat16)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint must load without pickle")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    restore(path, *make(seed=2))
    with safe_open(str(path), framework="pt") as f:  # plain safetensors + JSON are enough
        meta = json.loads(f.metadata()["ponder"])
    assert meta["note"] == "é" and meta["param_groups"][0]["lr"] == 3e-3
    for entry in meta["shards"]:
        with safe_open(str(tmp_path / entry["file"]), framework="pt") as f:
            assert list(f.keys())


def test_cuda_rng_saved_when_initialised_and_ignored_without_cuda(tmp_path, monkeypatch):
    state = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda i: state + i)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, *make(), {"step": 0})
    monkeypatch.undo()
    tensors, _ = read_checkpoint(path)
    assert torch.equal(tensors["rng.cuda.1"], state + 1) and "rng.torch" in tensors

    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # fewer devices now: the extra state is skipped
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda t, i: restored.__setitem__(i, t))
    restore(path, *make())
    assert list(restored) == [0] and torch.equal(restored[0], state)
    monkeypatch.undo()
    if not torch.cuda.is_available():
        restore(path, *make())  # a CPU-only machine ignores the CUDA states
