"""A built dataset on disk: what `ponder data build` writes and training reads.

A dataset folder holds two files:

    data.safetensors   every split's arrays, named "<split>.<array>"
    manifest.json      name, vocabulary, sequence length, the build spec (source files,
                       seed, options), per-split counts, task-specific info, and the
                       SHA-256 of data.safetensors

Every split has `inputs` and `labels`, both (N, L) integers, with `IGNORE` labels on
positions that are not scored. Optional arrays: `ids` (N,) puzzle identifiers for a
per-puzzle embedding (0 = no identifier), and any task-specific (N, ...) arrays (ARC
keeps which task, test input and augmentation each row came from).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ponder.errors import PonderInputError, plain_file_name, read_json, require_fields
from ponder.run_folder import temporary_name
from ponder.tasks.grids import IGNORE

DATA_FILE = "data.safetensors"
MANIFEST = "manifest.json"
FORMAT = "ponder-dataset-1"


@dataclass
class ArraySplit:
    inputs: np.ndarray  # (N, L) int
    labels: np.ndarray  # (N, L) int, IGNORE where not scored
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # "ids" and task-specific (N, ...) arrays

    def __post_init__(self) -> None:
        if self.inputs.shape != self.labels.shape or self.inputs.ndim != 2:
            raise ValueError(f"inputs {self.inputs.shape} and labels {self.labels.shape}: expected the same (N, L) shape")
        for key, value in self.extra.items():
            if len(value) != len(self.inputs):
                raise ValueError(f"extra array '{key}' has {len(value)} rows, expected {len(self.inputs)}")

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass
class Dataset:
    name: str  # the builder's name, e.g. "sudoku-extreme-1k"
    vocab: int  # tokens are 0..vocab-1
    seq_len: int  # L
    splits: dict[str, ArraySplit]  # "train", "val", "test", ...
    spec: dict[str, Any]  # how it was built: seed, options, source files
    info: dict[str, Any] = field(default_factory=dict)  # task-specific JSON (e.g. ARC task names per id)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for split_name, split in self.splits.items():
            out[f"{split_name}.inputs"] = split.inputs
            out[f"{split_name}.labels"] = split.labels
            for key, value in split.extra.items():
                out[f"{split_name}.{key}"] = value
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    def manifest(self, sha256: str, nbytes: int) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "vocab": self.vocab,
            "seq_len": self.seq_len,
            "counts": {k: len(v) for k, v in self.splits.items()},
            "spec": self.spec,
            "info": self.info,
            "data_file": DATA_FILE,
            "bytes": nbytes,
            "sha256": sha256,
        }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_dataset(dataset: Dataset, out_dir: Path) -> dict[str, Any]:
    """Write the folder (`write_folder`). Returns the manifest."""
    return write_folder(out_dir, dataset.arrays(), dataset.manifest)


def write_folder(out_dir: Path, arrays: dict[str, np.ndarray], manifest_for: Callable[[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Write a dataset folder (puzzle or text): the arrays as `data.safetensors`, then the
    manifest that `manifest_for(sha256, bytes)` makes of the written file. Both appear
    whole or not at all (temporary names unique to the writer, then renames, manifest
    last), and a failed write leaves no temporary file behind. Returns the manifest."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_tmp, manifest_tmp = temporary_name(out_dir / DATA_FILE), temporary_name(out_dir / MANIFEST)
    try:
        save_file(arrays, str(data_tmp))  # no metadata: the bytes depend only on the arrays
        os.chmod(data_tmp, 0o644)  # safetensors creates it private; a dataset is meant to be shared
        manifest = manifest_for(sha256_file(data_tmp), data_tmp.stat().st_size)
        manifest_tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(data_tmp, out_dir / DATA_FILE)
        os.replace(manifest_tmp, out_dir / MANIFEST)
        return manifest
    finally:
        data_tmp.unlink(missing_ok=True)
        manifest_tmp.unlink(missing_ok=True)


def read_manifest(data_dir: Path) -> dict[str, Any]:
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not path.is_file():
        raise PonderInputError(f"{data_dir}: not a dataset folder (no {MANIFEST}); build one with 'ponder data build NAME --out DIR'")
    hint = "rebuild the folder with 'ponder data build'"
    manifest = read_json(path, f"a corrupt manifest: {hint}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PonderInputError(f"{path}: not a ponder dataset manifest (expected format '{FORMAT}')")
    require_fields(manifest, {"name": str, "vocab": int, "seq_len": int, "counts": dict, "sha256": str, "data_file": str}, path, hint)
    plain_file_name(manifest["data_file"], path, "data_file")
    if manifest["vocab"] < 1 or manifest["seq_len"] < 1 or not all(isinstance(v, int) and v >= 0 for v in manifest["counts"].values()):
        raise PonderInputError(f"{path}: 'vocab' and 'seq_len' must be >= 1 and 'counts' hold integers >= 0; {hint}")
    return manifest


def check_split(path: Path, name: str, inputs: np.ndarray, labels: np.ndarray, manifest: dict[str, Any]) -> None:
    """A split's arrays agree with the manifest: count, sequence length, tokens inside the
    vocabulary (labels may also be IGNORE)."""
    n, seq_len, vocab = manifest["counts"][name], manifest["seq_len"], manifest["vocab"]
    if inputs.ndim != 2 or inputs.shape != labels.shape or inputs.shape != (n, seq_len):
        raise PonderInputError(f"{path}: split '{name}' has shape {tuple(inputs.shape)}; the manifest says ({n}, {seq_len})")
    if inputs.size and (inputs.min() < 0 or inputs.max() >= vocab):
        raise PonderInputError(f"{path}: split '{name}' holds tokens outside the manifest's vocabulary of {vocab}")
    scored = labels[labels != IGNORE]
    if scored.size and (scored.min() < 0 or scored.max() >= vocab):
        raise PonderInputError(f"{path}: split '{name}' has labels outside the manifest's vocabulary of {vocab}")


def load_dataset(data_dir: Path, verify: bool = True) -> Dataset:
    """Read a dataset folder; with `verify`, check the data file against the manifest's
    SHA-256 so a truncated or edited file is caught before training on it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    path = data_dir / manifest["data_file"]
    if not path.is_file():
        raise PonderInputError(f"{path}: missing data file named in {data_dir / MANIFEST}")
    if verify and sha256_file(path) != manifest.get("sha256"):
        raise PonderInputError(f"{path}: SHA-256 does not match {MANIFEST}; the file is corrupt or was changed, rebuild it")
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PonderInputError(f"{path}: corrupt data file ({str(e).splitlines()[0][:120]})") from None
    splits: dict[str, ArraySplit] = {}
    for split_name in manifest["counts"]:
        try:
            inputs, labels = arrays[f"{split_name}.inputs"], arrays[f"{split_name}.labels"]
        except KeyError:
            raise PonderInputError(f"{path}: split '{split_name}' named in the manifest has no inputs/labels") from None
        check_split(path, split_name, inputs, labels, manifest)
        prefix = f"{split_name}."
        extra = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix) and k not in (prefix + "inputs", prefix + "labels")}
        splits[split_name] = ArraySplit(inputs, labels, extra)
    return Dataset(
        name=manifest["name"], vocab=int(manifest["vocab"]), seq_len=int(manifest["seq_len"]),
        splits=splits, spec=manifest.get("spec", {}), info=manifest.get("info", {}),
    )
