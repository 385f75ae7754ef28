"""Checkpoints: `safetensors` shards holding everything needed to resume a run.

Why shards: runs happen on machines lent for minutes that can carry back only a few
files of bounded size, so no checkpoint file may exceed `shard_bytes` (16 MiB by
default), safetensors header included.

Format (`ponder-checkpoint-3`). Tensors: `model.*` (weights), `ema.*` (EMA weights),
`optim.<param index>.<key>` (optimizer state), `rng.torch` (CPU RNG) and
`rng.cuda.<i>` (RNG of CUDA device i, saved when CUDA is initialised). Everything else
(step, data position, config, optimizer hyper-parameters, EMA update count, versions,
the shard list) is JSON under the "ponder" key of the main file's metadata; loading
never unpickles. The main file `<run>/checkpoint.safetensors` holds the metadata and the
first tensors. When the state does not fit in one file, the rest goes to extra shards
`checkpoint.<step>-<token>-<k>.safetensors` (`token` is random per save, so two saves
never share a name), listed in the metadata as `shards: [{file, bytes, sha256}]`.
Tensors are packed in order; one that crosses a shard boundary is cut there into flat
pieces `<name>#0`, `<name>#1`, ... recorded as `split: {name: {shape, parts}}` and put
back together on reading, so every file stays under the limit whatever the tensor sizes.
Format 1 (one file, no shard list) and 2 (no content hash) are still read.

Verification: the metadata's `content_sha256` is a SHA-256 over the metadata itself (all
but the hash, the shard list and the split table, as canonical JSON) and over every
tensor (name, dtype, shape and bytes, in name order, split tensors whole), so a flipped
byte anywhere in the state, a deleted tensor or an edited metadata value is a one-line
error on reading, never a silently different model. Reading also checks that the groups
a resume needs are there (`model.*`, `rng.torch`, `ema.*` when the config keeps an EMA,
`optim.*` after the first step), also for older formats, which carry no hash.

Atomicity: extra shards are written under fresh names and fsynced, then the main file
is written to `checkpoint.safetensors.<token>.tmp`, fsynced and renamed over the old one
(`os.replace`, then the folder is fsynced). Until that rename the old main file and the
shards it lists are untouched, and after it the new main file lists only shards that are
already on disk; so a kill at any moment leaves one complete checkpoint. Shards that no
main file refers to any more (older saves, a killed save) are deleted after a successful
save. Reading checks each extra shard's size and SHA-256 against the main file's list.

`moments_dtype=torch.bfloat16` stores the optimizer's floating state tensors of more
than one element (Adam's moments; never `step`) in bfloat16, which halves their share:
for a model with P float32 parameters the checkpoint goes from about 16P to 12P bytes.
(trm-mlp-sudoku, 4.9M parameters: 74.7 MiB in five files -> 56.0 MiB in four.) The cost:
the moments are rounded once per save (8 significant bits, relative error up to 2^-8),
so a resumed run is close to, no longer bit-identical with, an uninterrupted one; on a
small MLP a resume at step 100 of 200 ends within 2e-4 of its largest weight. Training
keeps its moments in the parameters' dtype; restoring casts them back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save

from ponder.errors import PonderInputError

FORMAT = "ponder-checkpoint-3"
READABLE = ("ponder-checkpoint-1", "ponder-checkpoint-2", FORMAT)
SHARD_BYTES = 16 * 2**20
MIN_PIECE = 4096  # a tensor is not cut into a piece smaller than this; the shard is closed instead
_SUFFIX = ".safetensors"
_LOAD_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError)


def save_checkpoint(
    path: Path,
    model,
    ema,
    optimizer,
    meta: dict[str, Any],
    *,
    shard_bytes: int = SHARD_BYTES,
    moments_dtype: torch.dtype | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the full training state atomically as files of at most `shard_bytes` each.
    `extra`: more named tensors the trainer needs back (e.g. `carry.*`, the refill
    batch), read back by `read_checkpoint`."""
    if moments_dtype is not None and not moments_dtype.is_floating_point:
        raise ValueError(f"moments_dtype must be a floating dtype, got {moments_dtype}")
    path = Path(path)
    tensors, opt_state = _collect(model, ema, optimizer, moments_dtype)
    tensors.update({k: v.detach().cpu().contiguous().clone() for k, v in (extra or {}).items()})
    step = max(0, int(meta.get("step", 0)))
    meta = dict(
        meta,
        format=FORMAT,
        param_groups=opt_state["param_groups"],
        ema_updates=ema.updates if ema else 0,
        moments_dtype=str(moments_dtype).removeprefix("torch.") if moments_dtype is not None else None,
    )
    meta["content_sha256"] = content_hash(tensors, json.loads(json.dumps(meta)))
    stem = path.name.removesuffix(_SUFFIX)
    token = secrets.token_hex(4)

    def names(count: int) -> list[str]:
        return [f"{stem}.{step}-{token}-{k}{_SUFFIX}" for k in range(1, count + 1)]

    def meta_for(shards, split):  # the final metadata's size, with stand-ins as long as any real value
        extra = len(shards) - 1
        return _final_meta(meta, names(extra), [shard_bytes] * extra, ["0" * 64] * extra, split)

    shards, split = _plan(list(tensors.items()), shard_bytes, meta_for)

    folder = path.parent
    tmp = path.with_name(f"{path.name}.{token}.tmp")
    written: list[Path] = []
    replaced = False
    try:
        listed = []
        for name, shard in zip(names(len(shards) - 1), shards[1:]):
            data = _serialize(shard, None, shard_bytes, folder / name)
            _write_synced(folder / name, data, written)
            listed.append((name, len(data), hashlib.sha256(data).hexdigest()))
        if listed:
            _sync_folder(folder)
        final = _final_meta(meta, [n for n, _, _ in listed], [b for _, b, _ in listed], [h for _, _, h in listed], split)
        _write_synced(tmp, _serialize(shards[0], final, shard_bytes, path), [])
        os.replace(tmp, path)
        replaced = True
    finally:
        if not replaced:  # nothing refers to this save's files: leave the folder as it was
            for f in written + [tmp]:
                f.unlink(missing_ok=True)
    _sync_folder(folder)
    _remove_stale(path, {n for n, _, _ in listed})


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (from every shard, split tensors whole again) and metadata, or a one-line
    PonderInputError naming the missing, corrupt or altered file."""
    path = Path(path)
    meta = _read_meta(path)
    try:
        tensors = load_file(str(path))
    except _LOAD_ERRORS as e:
        raise PonderInputError(f"{path}: corrupt checkpoint ({_first_line(e)})") from None
    for entry in _shard_list(path, meta):
        shard = path.parent / entry["file"]
        for k, v in _read_shard(path, shard, entry).items():
            if k in tensors:
                raise PonderInputError(f"{shard}: corrupt checkpoint (tensor '{k}' also stored in another shard)")
            tensors[k] = v
    for name, info in (meta.get("split") or {}).items():
        try:
            parts = [f"{name}#{i}" for i in range(int(info["parts"]))]
            missing = [p for p in parts if p not in tensors]
            if missing:
                raise ValueError(f"piece '{missing[0]}' of split tensor '{name}' is in no shard")
            tensors[name] = torch.cat([tensors.pop(p) for p in parts]).reshape(info["shape"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise PonderInputError(f"{path}: corrupt checkpoint (split tensor '{name}': {_first_line(e)})") from None
    if "content_sha256" in meta or meta.get("format") == FORMAT:
        got = content_hash(tensors, meta)
        if got != meta.get("content_sha256"):
            raise PonderInputError(f"{path}: checkpoint altered or corrupt (content SHA-256 {got[:16]}... differs from the one it was saved with)")
    check_groups(tensors, meta, path)
    return tensors, meta


def content_hash(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """SHA-256 over the metadata (without this hash, the shard list and the split table:
    they describe the files, which their own sizes and hashes check) and every tensor's
    name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    described = {k: v for k, v in meta.items() if k not in ("content_sha256", "shards", "split")}
    digest.update(json.dumps(described, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_groups(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
    """The tensor groups a resume needs: weights and the CPU RNG always, the EMA when the
    config keeps one, the optimizer state once a step has been taken."""
    train = ((meta.get("config") or {}).get("train") or {}) if isinstance(meta.get("config"), dict) else {}
    need = {"model.": "weights", "rng.torch": "the random-number state"}
    if float(train.get("ema", 0) or 0) > 0:
        need["ema."] = "EMA weights (the config keeps an EMA)"
    if int(meta.get("step", 0) or 0) > 0:
        need["optim."] = "optimizer state"
    for prefix, what in need.items():
        if not any(k == prefix or k.startswith(prefix) for k in tensors):
            raise PonderInputError(f"{path}: incomplete checkpoint (no '{prefix}' tensors: {what})")


def checkpoint_files(path: Path) -> list[Path]:
    """The main file and the extra shards it lists: what to copy to move a checkpoint.
    Empty when there is no checkpoint yet; the shards are listed, not verified (a corrupt
    main file is a PonderInputError, as in `read_checkpoint`)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [path] + [path.parent / e["file"] for e in _shard_list(path, _read_meta(path))]


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    """The `prefix` group of a checkpoint's tensors into `module`: every key it expects,
    none other, all finite."""
    weights = _prefixed(tensors, prefix)
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise PonderInputError(f"{path}: non-finite values in '{prefix}{bad}'; the run diverged before this checkpoint")
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0][:160]
        raise PonderInputError(f"{path}: checkpoint weights do not match the model in its config ({first})") from None


def restore(path: Path, model, ema, optimizer, loaded: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Load a full training state in place; returns the metadata. `loaded`: what
    `read_checkpoint(path)` returned, when the caller has read it already."""
    tensors, meta = loaded if loaded is not None else read_checkpoint(path)
    load_weights(model, tensors, "model.", path)
    if ema is not None:
        load_weights(ema.model, tensors, "ema.", path)
        ema.updates = int(meta.get("ema_updates", 0))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for k, v in _prefixed(tensors, "optim.").items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise ValueError(f"non-finite values in 'optim.{k}'")
            idx, key = k.split(".", 1)
            idx = int(idx)
            if _is_moment(key, v) and idx < len(params) and params[idx].is_floating_point():
                v = v.to(params[idx].dtype)  # moments saved in a narrower dtype come back as the parameter's
            state.setdefault(idx, {})[key] = v
        groups = meta["param_groups"]
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise PonderInputError(f"{path}: optimizer or RNG state does not fit this run ({_first_line(e)})") from None
    if torch.cuda.is_available():  # a machine without CUDA ignores saved CUDA RNG states
        for k, v in _prefixed(tensors, "rng.cuda.").items():
            if int(k) < torch.cuda.device_count():
                torch.cuda.set_rng_state(v, int(k))
    return meta


# ------------------------------------------------------------------------------ writing

def _is_moment(key: str, value: torch.Tensor) -> bool:
    return key != "step" and value.is_floating_point() and value.numel() > 1


def _collect(model, ema, optimizer, moments_dtype) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor of the state as an independent contiguous CPU copy (safetensors
    refuses views that share storage)."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v
    if ema is not None:
        for k, v in ema.model.state_dict().items():
            tensors[f"ema.{k}"] = v
    opt_state = optimizer.state_dict()
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            value = torch.as_tensor(value)
            if moments_dtype is not None and _is_moment(key, value):
                value = value.to(moments_dtype)
            tensors[f"optim.{idx}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            tensors[f"rng.cuda.{i}"] = torch.cuda.get_rng_state(i)
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, opt_state


def _final_meta(meta, files, sizes, hashes, split) -> dict[str, Any]:
    out = dict(meta)
    if files:
        out["shards"] = [{"file": f, "bytes": b, "sha256": h} for f, b, h in zip(files, sizes, hashes)]
    if split:
        out["split"] = split
    return out


def _entry_bytes(name: str, ndim: int) -> int:
    """Upper bound on one tensor's entry in a safetensors header:
    `"name":{"dtype":"BF16","shape":[d,..],"data_offsets":[a,b]},` with 20-digit numbers."""
    return len(json.dumps(name)) + 100 + 21 * ndim


def _header_bytes(meta: dict[str, Any] | None) -> int:
    """Upper bound on a header's size apart from its tensor entries: the 8-byte length,
    braces, the escaped metadata string and the padding to 8 bytes."""
    fixed = 8 + 2 + 7 + 64
    return fixed if meta is None else fixed + len('"__metadata__":{"ponder":}') + len(json.dumps(json.dumps(meta)))


def _plan(items, shard_bytes: int, meta_for) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """Pack tensors in order into shards whose files stay within `shard_bytes`; the first
    (main) one also carries the metadata, whose size depends on the packing (the shard list
    and split tensors grow it), so pack again with more room until the estimate holds."""
    reserve = _header_bytes(meta_for([{}], {}))
    for _ in range(64):
        if reserve >= shard_bytes:
            raise ValueError(f"shard_bytes={shard_bytes} is too small: the checkpoint metadata alone needs about {reserve} bytes")
        shards, split = _pack(items, shard_bytes - reserve, shard_bytes - _header_bytes(None))
        need = _header_bytes(meta_for(shards, split))
        if need <= reserve:
            return shards, split
        reserve = need + 256
    raise RuntimeError("checkpoint shard plan did not settle")  # unreachable: the reserve only grows


def _pack(items, first: int, rest: int):
    shards: list[dict[str, torch.Tensor]] = [{}]
    split: dict[str, Any] = {}
    free = first

    def room_for(name: str, ndim: int) -> int:
        return free - _entry_bytes(name, ndim)

    for name, t in items:
        if t.nbytes <= room_for(name, t.ndim):
            shards[-1][name] = t
            free -= t.nbytes + _entry_bytes(name, t.ndim)
            continue
        if t.numel() <= 1:  # cannot be cut: start a new shard
            if t.nbytes > rest - _entry_bytes(name, t.ndim):
                raise ValueError(f"shard_bytes too small: tensor '{name}' ({t.nbytes} bytes) does not fit in a shard")
            shards.append({name: t})
            free = rest - t.nbytes - _entry_bytes(name, t.ndim)
            continue
        flat, size, pos, parts = t.reshape(-1), t.element_size(), 0, 0
        while pos < flat.numel():
            piece = f"{name}#{parts}"
            count = min(max(0, room_for(piece, 1)) // size, flat.numel() - pos)
            if count * size < min(MIN_PIECE, (flat.numel() - pos) * size):
                if not shards[-1]:
                    raise ValueError(f"shard_bytes too small: no room for a piece of tensor '{name}'")
                shards.append({})
                free = rest
                continue
            shards[-1][piece] = flat[pos : pos + count].clone()
            free -= count * size + _entry_bytes(piece, 1)
            pos += count
            parts += 1
        split[name] = {"shape": list(t.shape), "parts": parts}
    return shards, split


def _serialize(tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None, shard_bytes: int, path: Path) -> bytes:
    data = save(tensors, metadata={"ponder": json.dumps(meta)} if meta is not None else None)
    if len(data) > shard_bytes:  # the plan's bounds are conservative; this guards the limit itself
        raise RuntimeError(f"{path}: checkpoint shard of {len(data)} bytes exceeds shard_bytes={shard_bytes}")
    return data


def _write_synced(path: Path, data: bytes, written: list[Path]) -> None:
    written.append(path)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sync_folder(folder: Path) -> None:
    """Make renames and new names in `folder` durable (not possible on every OS)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale(path: Path, keep: set[str]) -> None:
    """Delete this checkpoint's shards of earlier or killed saves and a leftover temp file."""
    pattern = re.compile(re.escape(path.name.removesuffix(_SUFFIX)) + r"\.\d+-[0-9a-f]{8}-\d+" + re.escape(_SUFFIX))
    for f in path.parent.iterdir():
        if (pattern.fullmatch(f.name) and f.name not in keep) or (f.name.startswith(path.name + ".") and f.name.endswith(".tmp")):
            try:
                f.unlink()
            except OSError:
                pass  # another process removed it, or it is not ours to remove


# ------------------------------------------------------------------------------ reading

def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:120]


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PonderInputError(f"{path}: no checkpoint; expected a run folder written by 'ponder train'")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("ponder")
    except _LOAD_ERRORS as e:
        raise PonderInputError(f"{path}: corrupt checkpoint ({_first_line(e)})") from None
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") not in READABLE:
        raise PonderInputError(f"{path}: not a ponder checkpoint (missing or unknown '{FORMAT}' metadata)")
    return meta


def _shard_list(path: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The main file's shard list, checked to be plain file names beside it."""
    entries = meta.get("shards") or []
    for e in entries:
        ok = isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
        if not ok or Path(e["file"]).name != e["file"] or e["file"].startswith("."):
            raise PonderInputError(f"{path}: corrupt checkpoint (bad shard list entry {json.dumps(e)[:80]})")
    return entries


def _read_shard(path: Path, shard: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    want, digest = entry["bytes"], entry["sha256"]
    try:
        data = shard.read_bytes()
    except FileNotFoundError:
        raise PonderInputError(f"{shard}: missing checkpoint shard; expected {want} bytes as listed in {path.name}") from None
    except OSError as e:
        raise PonderInputError(f"{shard}: unreadable checkpoint shard ({_first_line(e)})") from None
    if len(data) != want:
        raise PonderInputError(f"{shard}: checkpoint shard has {len(data)} bytes; expected {want} as listed in {path.name}")
    got = hashlib.sha256(data).hexdigest()
    if got != digest:
        raise PonderInputError(f"{shard}: checkpoint shard altered (SHA-256 {got}; expected {digest} as listed in {path.name})")
    try:
        return load_bytes(data)
    except _LOAD_ERRORS as e:
        raise PonderInputError(f"{shard}: corrupt checkpoint shard ({_first_line(e)})") from None
