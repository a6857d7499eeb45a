"""What a run reports while it trains: ``metrics.jsonl`` (one JSON object per line), TensorBoard
optionally, and whether to draw a progress bar."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..io import append_text, atomic_write_text
from ..errors import ConfigError


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed and fsynced); TensorBoard optionally."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # checked importable before training

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_text(self.path, json.dumps(record, sort_keys=True) + "\n")
        if self.writer is not None:
            prefix = record.get("split", record["event"])
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.writer.add_scalar(f"{prefix}/{k}", v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only complete lines of records at or before ``step`` (resume after a kill)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(record, dict) and record.get("step", 0) <= step and record.get("event") != "final":
            keep.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def check_tensorboard() -> None:
    """ConfigError unless the tensorboard package is importable (``train.log_tensorboard=true`` needs it)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "train.log_tensorboard=true needs the tensorboard package, which is not installed; "
            "install it with `pip install 'scratchformer[tensorboard]'` or drop the flag"
        ) from None


def show_progress(setting: bool | None) -> bool:
    """``train.progress``, or by default: a bar when stderr is a terminal outside CI."""
    if setting is not None:
        return setting
    return sys.stderr.isatty() and not os.environ.get("CI")
