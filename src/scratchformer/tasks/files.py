"""Reading the files tasks are built from: UTF-8 text with a clear error for anything else, and
records (rows of a CSV, JSON or JSON Lines file). Shared by the text and classification tasks."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scratchformer.errors import ConfigError, DataError


def decode_utf8(raw: bytes, path: str | os.PathLike[str]) -> str:
    """Decode ``raw`` as UTF-8; DataError naming ``path`` and the first bad byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.start + 4]
        raise DataError(
            f"{path} is not UTF-8: byte offset {err.start} holds {bad!r} ({err.reason}); "
            f"re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def read_records(path: str | os.PathLike[str], required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a .csv (header row) or .jsonl/.json (one object per line, or one JSON list) file.

    Raises:
        DataError: missing file, not UTF-8 (byte offset), bad JSON (line
            number), a row missing a ``required`` column, or no rows.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist") from None
    text = decode_utf8(raw, path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        records = list(reader)
        columns = reader.fieldnames or []
    elif suffix in (".jsonl", ".json"):
        records = _parse_json_records(text, path)
        columns = sorted({k for r in records for k in r})
    else:
        raise ConfigError(f"cannot read {path}: use a .csv, .jsonl or .json file")
    if not records:
        raise DataError(f"{path} has no data rows (an empty dataset)")
    for name in required:
        if name not in columns:
            raise DataError(f"{path} has no column {name!r}; its columns are {list(columns)}")
    return records


def _parse_json_records(text: str, path: Path) -> list[dict[str, Any]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not valid JSON: {err}") from None
        records = data
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {lineno} is not valid JSON: {err.msg}") from None
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{path} record {i} is a {type(rec).__name__}, not a JSON object")
    return records
