"""Read a ``torch.save`` state dict (``pytorch_model.bin``) without unpickling it.

A file written by ``torch.save`` (PyTorch >= 1.6) is a zip archive: a pickle
``data.pkl`` that describes the structure (a dict of names to tensors) and
one raw byte file per storage under ``data/``. Python's unpickler, even
torch's restricted one behind ``torch.load(weights_only=True)``, executes the
pickle's instructions. This module never does: ``pickletools.genops`` only
parses the opcodes, and a small interpreter here builds the result from
data, honouring exactly four names, each mapped to a function written below
(never imported from the file's say-so):

- ``collections.OrderedDict`` -> an empty dict,
- ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` -> a tensor
  viewed from a storage's bytes (size, stride, offset),
- ``torch.<Dtype>Storage`` -> that storage's dtype.

Any other global, an unknown opcode, a legacy (non-zip) file or a storage
that does not fit its bytes is refused with a ``CheckpointError``.
"""

from __future__ import annotations

import pickletools
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError

#: ``torch.<Name>Storage`` class names in a pickle -> dtype of the stored elements.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}  # fmt: skip

_REBUILD = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter")}
_MARK = object()


class _Global:
    """A name the pickle refers to, allowed by the lists above (a token, never the real object)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Storage:
    def __init__(self, dtype: torch.dtype, key: str) -> None:
        self.dtype, self.key = dtype, key


def _refuse(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"refusing to load {path}: {why}. scratchformer reads pytorch_model.bin only as plain tensors "
        f"(it never runs the pickle); convert the file to model.safetensors with a tool you trust"
    )


def read_torch_zip(path: str | Path) -> dict[str, Tensor]:
    """The ``{name: tensor}`` dict saved by ``torch.save(state_dict, path)``, read as data.

    Raises:
        CheckpointError: the file is not a torch zip archive, names anything but
            tensors and plain containers, or its storages are truncated.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise _refuse(path, "it is not the zip archive torch.save writes (a legacy or bare pickle)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise _refuse(path, f"it holds {len(pkl)} data.pkl entries, not one")
        root = pkl[0][: -len("data.pkl")]
        byteorder = zf.read(root + "byteorder").decode().strip() if root + "byteorder" in names else "little"
        if byteorder != sys.byteorder:
            raise _refuse(path, f"its tensors are {byteorder}-endian and this machine is {sys.byteorder}-endian")
        storages: dict[str, Tensor] = {}

        def storage_bytes(s: _Storage) -> Tensor:
            if s.key not in storages:
                entry = f"{root}data/{s.key}"
                if entry not in names:
                    raise _refuse(path, f"storage {s.key!r} is missing from the archive")
                raw = bytearray(zf.read(entry))
                storages[s.key] = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            return storages[s.key]

        def rebuild(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> Tensor:
            if not isinstance(storage, _Storage):
                raise _refuse(path, "a tensor is built from something that is not a storage")
            if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
                raise _refuse(path, "a tensor has a malformed size, stride or offset")
            flat = storage_bytes(storage).view(storage.dtype) if storage.dtype != torch.uint8 else storage_bytes(storage)
            extent = offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1 if all(size) else 0
            if extent > flat.numel() or min(stride, default=0) < 0:
                raise _refuse(path, f"a tensor of size {size} reaches past its storage of {flat.numel()} elements")
            return flat.as_strided(size, stride, offset).clone()

        return _interpret(zf.read(pkl[0]), path, rebuild)


#: Instructions that push their argument, push a constant, or push an empty container.
_PUSH_ARG = frozenset({"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BININT", "BININT1", "BININT2",
                       "LONG1", "INT", "BINFLOAT", "SHORT_BINSTRING", "BINSTRING"})
_CONSTANTS = {"NEWTRUE": True, "NEWFALSE": False, "NONE": None}
_EMPTY = {"EMPTY_DICT": dict, "EMPTY_LIST": list, "EMPTY_TUPLE": tuple}


class _Machine:
    """The few pickle instructions a state dict uses, each building plain data (see the module docstring)."""

    def __init__(self, path: Path, rebuild) -> None:
        self.path, self.rebuild = path, rebuild
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}

    def run(self, data: bytes) -> Any:
        for op, arg, _pos in pickletools.genops(data):  # parses; never executes
            if op.name == "STOP":
                break
            self.step(op.name, arg)
        if len(self.stack) != 1:
            raise _refuse(self.path, "it does not hold a single object")
        return self.stack[0]

    def pop_mark(self) -> list[Any]:
        stack = self.stack
        i = len(stack) - 1 - stack[::-1].index(_MARK)
        items = stack[i + 1 :]
        del stack[i:]
        return items

    def step(self, name: str, arg: Any) -> None:
        stack = self.stack
        if name in ("PROTO", "FRAME"):
            return
        if name in _PUSH_ARG:
            stack.append(arg)
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name in _EMPTY:
            stack.append(_EMPTY[name]())
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "TUPLE":
            stack.append(tuple(self.pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            self.memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(self.memo[int(arg)])
        elif name in ("SETITEM", "SETITEMS", "APPEND", "APPENDS"):
            self.fill(name)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            self.global_name(*(arg.split(" ", 1) if name == "GLOBAL" else reversed([stack.pop(), stack.pop()])))
        elif name == "BINPERSID":
            self.storage(stack.pop())
        elif name == "REDUCE":
            args, fn = stack.pop(), stack.pop()
            stack.append(self.call(fn, args))
        elif name == "BUILD":
            stack.pop()  # instance state (an OrderedDict's _metadata): not needed for the tensors
        else:
            raise _refuse(self.path, f"its pickle uses the {name} instruction, which plain tensors never need")

    def fill(self, name: str) -> None:
        stack = self.stack
        if name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            stack[-1][key] = value
        elif name == "SETITEMS":
            items = self.pop_mark()
            stack[-1].update(zip(items[0::2], items[1::2]))
        elif name == "APPEND":
            value = stack.pop()
            stack[-1].append(value)
        else:
            items = self.pop_mark()
            stack[-1].extend(items)

    def global_name(self, module: str, attr: str) -> None:
        allowed = ((module, attr) in _REBUILD or (module, attr) == ("collections", "OrderedDict")
                   or (module == "torch" and attr in STORAGE_DTYPES))
        if not allowed:
            raise _refuse(self.path, f"its pickle names {module}.{attr}, which is not a tensor or a plain container")
        self.stack.append(_Global(module, attr))

    def storage(self, pid: Any) -> None:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], _Global)
                and pid[1].name in STORAGE_DTYPES):
            raise _refuse(self.path, f"it refers to an external object {pid!r} that is not a tensor storage")
        self.stack.append(_Storage(STORAGE_DTYPES[pid[1].name], str(pid[2])))

    def call(self, fn: Any, args: Any) -> Any:
        if not isinstance(fn, _Global) or not isinstance(args, tuple):
            raise _refuse(self.path, "its pickle calls something that is not an allowed name")
        if (fn.module, fn.name) == ("collections", "OrderedDict"):
            return {}
        if (fn.module, fn.name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self.rebuild(*args)
        if (fn.module, fn.name) == ("torch._utils", "_rebuild_parameter"):
            if not args or not isinstance(args[0], Tensor):
                raise _refuse(self.path, "a parameter is built from something that is not a tensor")
            return args[0]
        raise _refuse(self.path, f"its pickle calls {fn.module}.{fn.name}")


def _interpret(data: bytes, path: Path, rebuild) -> dict[str, Tensor]:
    """The state dict described by the pickle ``data`` (tensors made by ``rebuild``)."""
    try:
        state = _Machine(path, rebuild).run(data)
    except (IndexError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise _refuse(path, f"its pickle is malformed ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise _refuse(path, "it does not hold a single dict")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise _refuse(path, "it does not hold a state dict (a mapping from names to tensors)")
    return state


__all__ = ["STORAGE_DTYPES", "read_torch_zip"]
