"""Reading torch.save state dicts as data (scratchformer.interop.torch_zip): equal to what was
saved, for every dtype and view; anything that is not plain tensors is refused, never run."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

from scratchformer.errors import CheckpointError
from scratchformer.interop.torch_zip import STORAGE_DTYPES, read_torch_zip


def test_round_trip_of_dtypes_views_and_shared_storage(tmp_path):
    base = torch.randn(6, 5)
    state = {
        "plain": torch.randn(3, 4),
        "transposed": base.t(),  # strides (1, 5)
        "slice": base[1:4, ::2],  # an offset into the same storage
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 7),
        **{f"dtype_{d}": torch.arange(6).to(d) for d in STORAGE_DTYPES.values()},
        "param": torch.nn.Parameter(torch.randn(2)),
    }
    torch.save(state, tmp_path / "w.bin")
    got = read_torch_zip(tmp_path / "w.bin")
    assert set(got) == set(state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v.detach()), k


def test_code_in_the_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": torch.zeros(2), "x": RunsCode()}, tmp_path / "w.bin")
    with pytest.raises(CheckpointError, match="refusing.*system"):
        read_torch_zip(tmp_path / "w.bin")
    assert not marker.exists()


def test_a_truncated_storage_and_a_bare_pickle_are_refused(tmp_path):
    torch.save({"w": torch.randn(100)}, tmp_path / "w.bin")
    with zipfile.ZipFile(tmp_path / "w.bin") as src, zipfile.ZipFile(tmp_path / "cut.bin", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[:40] if "/data/" in item.filename else data)
    with pytest.raises(CheckpointError, match="reaches past its storage"):
        read_torch_zip(tmp_path / "cut.bin")
    torch.save({"w": torch.zeros(1)}, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="not the zip archive"):
        read_torch_zip(tmp_path / "old.bin")
    torch.save([torch.zeros(1)], tmp_path / "list.bin")
    with pytest.raises(CheckpointError, match="single dict|instruction"):
        read_torch_zip(tmp_path / "list.bin")
