"""Exceptions raised by scratchformer. Each names the bad value and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ScratchformerError(Exception):
    """Base class for every error scratchformer raises on purpose."""


class ConfigError(ScratchformerError, ValueError):
    """A configuration value is missing, unknown or impossible."""


class DataError(ScratchformerError, ValueError):
    """Input data (a corpus, a file, a task option) cannot be used."""


class CheckpointError(ScratchformerError, ValueError):
    """A checkpoint or run directory is missing, truncated or foreign."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    """A ConfigError for an unknown registry name, listing the valid names."""
    choices = sorted(choices)
    return ConfigError(f"unknown {kind} {name!r}{did_you_mean(name, choices)}; choose one of {choices}")
