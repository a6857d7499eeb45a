"""Checkpoints and run directories: safetensors for tensors, JSON for everything else, no pickle.

A run directory::

    config.json            the effective RunConfig (model config filled in from the task)
    tokenizer.json         the task's tokenizer
    metrics.jsonl          one JSON object per log/eval step
    model.safetensors      the latest weights (the final ones once training ends)
    best.safetensors       weights at the best evaluation (best.json: step, metric, value)
    results.json           final metrics of every evaluation split
    checkpoints/step_00000500/
        model.safetensors      weights
        optimizer.safetensors  optimizer tensors (exp_avg, ...), flattened by name
        state.safetensors      RNG states (torch, CUDA, the data sampler's generator)
        state.json             step, optimizer structure, Python/NumPy RNG, data position, best metric
        manifest.json          written last: format tag, step, size and SHA-256 of each file

A checkpoint is written into a temporary directory and renamed into place,
so a process killed at any moment leaves every earlier checkpoint complete;
loading checks the manifest (sizes and hashes), so a truncated or foreign
file is a :class:`CheckpointError`, never a silent half-load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ..io import WriteError, atomic_write_bytes, load_json, save_json, write_error
from ..errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT = "scratchformer-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FORMAT = "scratchformer-weights"
CHECKPOINT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


# ---------------------------------------------------------------------- safetensors files
def tensors_to_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise tensors with safetensors; tensors sharing storage (tied weights) are copied."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        t = t.detach().cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        out[name] = t.clone().contiguous() if key in seen or not t.is_contiguous() else t
        seen.add(key)
    return _sorted_header(st_save(out, metadata=dict(metadata or {})))


def _sorted_header(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys in sorted order.

    The writer emits the metadata table in a hash-map order that changes from
    one process to the next, so two identical runs would write different bytes;
    sorting fixes the order. The header keeps its length (a JSON re-dump
    without spaces is never longer; it is padded with spaces to the old
    length, which keeps the tensor data where the offsets say it is).
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # cannot happen for the writer's compact JSON; keep its bytes rather than break the file
        return data
    return data[:8] + text.ljust(n, b" ") + data[8 + n :]


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Atomically write a safetensors file."""
    atomic_write_bytes(path, tensors_to_bytes(tensors, metadata))


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file (tensors, metadata); CheckpointError if missing, truncated or not safetensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        loaded = st_load(data)
        tensors = {k: loaded[k] for k in sorted(loaded)}  # a fixed order on every rank (the reader's is not)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors file (truncated, corrupted or another format): {e}"
        ) from None
    return tensors, metadata


def save_state_dict(path: str | os.PathLike, state: dict[str, torch.Tensor], arch: str) -> None:
    """Write a model state dict to a safetensors file tagged with the format and architecture."""
    save_tensors(path, state, {"format": WEIGHTS_FORMAT, "arch": arch})


def save_model_weights(path: str | os.PathLike, model: nn.Module, arch: str) -> None:
    """Write ``model.state_dict()`` as :func:`save_state_dict` does."""
    save_state_dict(path, model.state_dict(), arch)


def load_model_weights(model: nn.Module, path: str | os.PathLike, arch: str | None = None) -> None:
    """Load weights written by :func:`save_model_weights` into ``model`` (strict).

    Raises:
        CheckpointError: unreadable/truncated file, another format or
            architecture, missing or unexpected tensor names, or a shape that
            does not match the model, or a tensor holding NaN/inf (named).
    """
    tensors, metadata = read_tensors(path)
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a scratchformer weights file (metadata format={metadata.get('format')!r}, "
            f"expected {WEIGHTS_FORMAT!r}); convert foreign weights with scratchformer.interop"
        )
    if arch is not None and metadata.get("arch") != arch:
        raise CheckpointError(f"{str(path)!r} holds {metadata.get('arch')!r} weights, but the model is {arch!r}")
    check_state_matches(model.state_dict(), tensors, str(path))
    check_finite(tensors, str(path))
    model.load_state_dict(tensors, strict=True)


def check_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """CheckpointError naming the first floating-point tensor that holds NaN or inf."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = "NaN" if bool(torch.isnan(t).any()) else "inf"
            raise CheckpointError(
                f"{where}: tensor {name!r} holds {bad} values; these weights are broken (a diverged run?); "
                "load an earlier checkpoint or best.safetensors"
            )


def check_state_matches(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], where: str) -> None:
    """CheckpointError naming missing/unexpected names and mismatched shapes/dtypes."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where} does not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for name, t in expected.items():
        if tuple(got[name].shape) != tuple(t.shape):
            raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(got[name].shape)}, the model needs {tuple(t.shape)}")


# ---------------------------------------------------------------------- nested state <-> JSON + tensors
def encode_tree(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """A JSON-ready copy of a nested state, with every tensor moved into ``tensors`` under a path name.

    Tuples, non-string dict keys and tensors are tagged so :func:`decode_tree` restores them exactly.
    """
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu()
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        return {"__dict__": [[encode_tree(k, tensors, f"{prefix}.k"), encode_tree(v, tensors, f"{prefix}.{k}")]
                             for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_tree(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a checkpoint (at {prefix!r})")


def decode_tree(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_tree`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            name = obj["__tensor__"]
            if name not in tensors:
                raise CheckpointError(f"checkpoint structure names tensor {name!r}, which is not in its tensor file")
            return tensors[name]
        if "__dict__" in obj:
            return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(decode_tree(v, tensors) for v in obj["__tuple__"])
        raise CheckpointError(f"unexpected object in checkpoint structure: keys {sorted(obj)}")
    if isinstance(obj, list):
        return [decode_tree(v, tensors) for v in obj]
    return obj


# ---------------------------------------------------------------------- training checkpoints
@dataclass
class Checkpoint:
    """A loaded training checkpoint.

    Attributes:
        path: the step directory.
        step: optimizer updates done.
        model: the model's state dict.
        optimizer: the optimizer's state dict.
        state: everything else (see :func:`save_checkpoint`), tensors restored.
    """

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]


def step_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model_state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any],
    state: Mapping[str, Any],
    arch: str,
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step_{step:08d}/`` atomically and keep only the newest ``keep`` checkpoints.

    ``state`` is a nested dict of JSON values and tensors (RNG states, data
    position, ...); tensors go to ``state.safetensors``, the rest to
    ``state.json``. Returns the step directory.

    Raises:
        WriteError: a file or directory could not be written (full disk, ...);
            earlier checkpoints are untouched.
    """
    try:
        return _save_checkpoint(run_dir, step, model_state, optimizer_state, state, arch, keep)
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        raise write_error(step_dir(run_dir, step), e) from None


def _save_checkpoint(run_dir, step, model_state, optimizer_state, state, arch, keep) -> Path:
    final = step_dir(run_dir, step)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_structure = encode_tree(dict(optimizer_state), opt_tensors, "optimizer")
    state_tensors: dict[str, torch.Tensor] = {}
    state_structure = encode_tree(dict(state), state_tensors, "state")
    save_tensors(tmp / "model.safetensors", model_state, {"format": WEIGHTS_FORMAT, "arch": arch})
    save_tensors(tmp / "optimizer.safetensors", opt_tensors, {"format": FORMAT})
    save_tensors(tmp / "state.safetensors", state_tensors, {"format": FORMAT})
    save_json(tmp / "state.json", {"step": step, "optimizer": opt_structure, "state": state_structure})
    files = ["model.safetensors", "optimizer.safetensors", "state.safetensors", "state.json"]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": step,
        "arch": arch,
        "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in files},
    }
    save_json(tmp / "manifest.json", manifest)
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step (a resumed run): move the old one aside first
        old = parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(parent)
    for stale in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete half-written checkpoint directories (``.tmp-*``, ``.old-*``) a killed process left behind."""
    parent = Path(run_dir) / CHECKPOINT_DIR
    stale = [p for p in parent.glob(".*") if p.is_dir() and p.name.startswith((".tmp-", ".old-"))] if parent.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Step directories of a run, oldest first (complete or not)."""
    parent = Path(run_dir) / CHECKPOINT_DIR
    if not parent.is_dir():
        return []
    dirs = [p for p in parent.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(dirs, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def read_manifest(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The manifest of a step directory, checked (and with ``verify`` each file's size and hash).

    Raises:
        CheckpointError: no manifest (an incomplete write), another format, or a
            file that is missing, truncated or changed.
    """
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise CheckpointError(f"{str(path)!r} has no manifest.json: not a complete scratchformer checkpoint")
    manifest = load_json(mpath)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{str(mpath)!r} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(mpath)!r} has format_version {manifest.get('format_version')!r}; this scratchformer reads {FORMAT_VERSION}"
        )
    if verify:
        for name, info in manifest.get("files", {}).items():
            f = path / name
            if not f.is_file():
                raise CheckpointError(f"checkpoint {str(path)!r} is missing {name}")
            if f.stat().st_size != info["bytes"]:
                raise CheckpointError(
                    f"checkpoint file {str(f)!r} has {f.stat().st_size} bytes, the manifest says {info['bytes']}: truncated"
                )
            if _sha256(f) != info["sha256"]:
                raise CheckpointError(f"checkpoint file {str(f)!r} does not match its SHA-256 in the manifest: corrupted")
    return manifest


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete, verified step directory, or None. Incomplete ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            read_manifest(path)
            return path
        except CheckpointError as e:
            logger.warning("skipping checkpoint %s: %s", path, e)
    return None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify one step directory (no pickle anywhere)."""
    path = Path(path)
    manifest = read_manifest(path)
    model, meta = read_tensors(path / "model.safetensors")
    if meta.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{str(path / 'model.safetensors')!r} is not a scratchformer weights file")
    check_finite(model, str(path / "model.safetensors"))
    opt_tensors, _ = read_tensors(path / "optimizer.safetensors")
    state_tensors, _ = read_tensors(path / "state.safetensors")
    data = load_json(path / "state.json")
    if data.get("step") != manifest["step"]:
        raise CheckpointError(f"{str(path)!r}: state.json step {data.get('step')} != manifest step {manifest['step']}")
    return Checkpoint(
        path=path,
        step=int(data["step"]),
        model=model,
        optimizer=decode_tree(data["optimizer"], opt_tensors),
        state=decode_tree(data["state"], state_tensors),
    )
