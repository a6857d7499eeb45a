"""Text tasks: language modelling on one file (random blocks) and on lines (padded examples).

``text_lm``: a local UTF-8 file is tokenised once into a memory-mapped token
array cached on disk, keyed by a hash of the file's bytes and the tokenizer.
Training draws random contiguous windows of ``block_size`` tokens from the
first ``1 - val_fraction`` of the tokens; validation tiles the rest.

``text_lines_lm``: every non-blank line is its own example, truncated to
``max_length`` tokens, right-padded by collate with loss-free (-100) labels
(tutorial 004's wikitext set-up). Lines come from a local file (.txt: one
example per line; .json/.jsonl/.parquet: a ``text`` column) or from Hugging
Face ``datasets`` (:func:`load_wikitext`, optional dependency).

N tokens, T window length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from importlib import resources
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from scratchformer.errors import ConfigError, DataError
from scratchformer.tasks.base import Example, PrebuiltSplitsTask, TaskConfig, register_task
from scratchformer.tasks.files import decode_utf8, read_records
from scratchformer.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

_CACHE_ENV = "SCRATCHFORMER_CACHE_DIR"
_ENCODE_CHUNK_CHARS = 1 << 22  # encode long texts in ~4M-character pieces split at newlines


# ---------------------------------------------------------------------- reading text
BUNDLED_PREFIX = "bundled:"
BUNDLED_DATA = {"tinyshakespeare": "tinyshakespeare.txt"}
"""Corpora shipped inside the package (``scratchformer/data/``), named in a config as
``path = "bundled:tinyshakespeare"``. Tiny Shakespeare is public-domain text (about 1.1 MB)."""


def resolve_data_path(path: str | os.PathLike[str]) -> Path:
    """``bundled:NAME`` -> the packaged file; any other path is returned as a Path.

    Raises:
        DataError: an unknown bundled name (listing the known ones).
    """
    text = str(path)
    if not text.startswith(BUNDLED_PREFIX):
        return Path(path)
    name = text[len(BUNDLED_PREFIX) :]
    if name not in BUNDLED_DATA:
        raise DataError(f"{text!r} is not a bundled corpus; bundled ones are "
                        f"{[BUNDLED_PREFIX + n for n in BUNDLED_DATA]}")
    return Path(str(resources.files("scratchformer") / "data" / BUNDLED_DATA[name]))


def read_text_file(path: str | os.PathLike[str]) -> str:
    """The whole file decoded as UTF-8 (``bundled:tinyshakespeare`` names the packaged corpus).

    Raises:
        DataError: the file is missing, is not UTF-8 (naming the byte offset),
            or holds no non-whitespace text.
    """
    path = resolve_data_path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"text file {path} does not exist") from None
    except OSError as err:
        raise DataError(f"cannot read text file {path}: {err}") from err
    text = decode_utf8(raw, path)
    if not text.strip():
        raise DataError(f"{path} is an empty corpus (no non-whitespace text); give a file with text in it")
    return text


# ---------------------------------------------------------------------- tokenizers
def _cache_root(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get(_CACHE_ENV) or Path.home() / ".cache" / "scratchformer")


def _tokenizer_key(tokenizer: Tokenizer) -> str:
    blob = json.dumps(tokenizer.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def resolve_tokenizer(
    spec: str,
    texts: Sequence[str],
    vocab_size: int,
    cache_dir: str | None = None,
    content_hash: str | None = None,
    bos_token: str | None = None,
) -> Tokenizer:
    """Build the tokenizer a text task's config names.

    Args:
        spec: "char" (fit on ``texts``), "bpe" (train byte-level BPE of
            ``vocab_size`` on ``texts``), "gpt2:DIR" (GPT-2's tokenizer from
            the ``vocab.json`` and ``merges.txt`` in the local directory DIR;
            nothing is downloaded), the path of a saved tokenizer JSON,
            or a Hugging Face model directory (its tokenizer files).
        content_hash: a hash of the training text; a trained BPE is cached
            under it (and ``vocab_size``) so it is trained once.
        bos_token: for "bpe", a BOS token to add (classification needs one).

    Raises:
        ConfigError: an unknown spec that is not an existing file.
        DataError: empty ``texts``.
    """
    if spec == "char":
        return CharTokenizer.fit(texts)
    if spec == "bpe":
        specials = ("<|endoftext|>",) if bos_token is None else ("<|endoftext|>", bos_token)
        cached = None
        if content_hash is not None:
            tag = hashlib.sha256(f"{content_hash}|bpe|{vocab_size}|{specials}".encode()).hexdigest()[:24]
            cached = _cache_root(cache_dir) / "tokenizers" / f"bpe-{tag}.json"
            if cached.exists():
                logger.info("loading cached BPE tokenizer %s", cached)
                return load_tokenizer(cached)
        if not any(t.strip() for t in texts):
            raise DataError("cannot train a BPE tokenizer on an empty corpus")
        tokenizer = BPETokenizer.train(texts, vocab_size=vocab_size, special_tokens=specials, bos_token=bos_token)
        if cached is not None:
            tokenizer.save(cached)
        return tokenizer
    if spec.startswith("gpt2:"):
        return BPETokenizer.from_gpt2_files(spec[len("gpt2:") :])
    path = Path(spec)
    if path.is_dir():  # a Hugging Face model directory: its own tokenizer files
        from scratchformer.interop.hf_dir import load_hf_tokenizer

        return load_hf_tokenizer(path)
    if not path.exists():
        raise ConfigError(
            f"tokenizer={spec!r} is not 'char', 'bpe', 'gpt2:<directory with vocab.json and merges.txt>', "
            "an existing tokenizer JSON file or a Hugging Face model directory with tokenizer files"
        )
    return load_tokenizer(path)


def encode_long_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Encode a long text in pieces split just after newlines (for memory, and progress logs)."""
    ids: list[int] = []
    start = 0
    while start < len(text):
        stop = min(len(text), start + _ENCODE_CHUNK_CHARS)
        if stop < len(text):
            newline = text.rfind("\n", start, stop)
            stop = newline + 1 if newline > start else stop
        ids.extend(tokenizer.encode(text[start:stop]))
        start = stop
    return ids


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def cached_token_array(
    text: str, raw_hash: str, tokenizer: Tokenizer, cache_dir: str | None, stem: str = "corpus"
) -> np.ndarray:
    """The token ids of ``text`` as a read-only memmap, computed once per (text, tokenizer).

    The cache file is ``<cache>/tokens/<stem>-<hash>.npy`` (numpy format, no
    pickle), written atomically. Returns a (N,) uint16/uint32 memmap.
    """
    key = hashlib.sha256(f"{raw_hash}|{_tokenizer_key(tokenizer)}".encode()).hexdigest()[:24]
    folder = _cache_root(cache_dir) / "tokens"
    path = folder / f"{stem}-{key}.npy"
    if path.exists():
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:  # a damaged cache file: rebuild it
            logger.warning("token cache %s is unreadable (%s); rebuilding", path, err)
    ids = encode_long_text(tokenizer, text)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=token_dtype(tokenizer.vocab_size), shape=(len(ids),))
        out[:] = np.asarray(ids, dtype=np.int64)
        out.flush()
        del out
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("cached %d tokens of %s at %s", len(ids), stem, path)
    return np.load(path, mmap_mode="r", allow_pickle=False)


# ---------------------------------------------------------------------- datasets
class RandomBlockDataset(Dataset):
    """``num_blocks`` random contiguous windows of ``block_size`` tokens.

    Window ``i`` starts at a fixed offset drawn from a generator seeded by
    (seed, epoch); :meth:`set_epoch` draws new offsets. Each example has
    ``input_ids == labels`` (the loss shifts) and ``lengths`` = block_size.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, num_blocks: int, seed: int) -> None:
        if len(tokens) < block_size:
            raise DataError(f"{len(tokens)} tokens cannot fill one block of block_size={block_size}")
        self.tokens, self.block_size, self.num_blocks, self.seed = tokens, block_size, num_blocks, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the window offsets for ``epoch`` (deterministic in seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        self.offsets = rng.integers(0, len(self.tokens) - self.block_size + 1, size=self.num_blocks)

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> Example:
        start = int(self.offsets[index])
        ids = np.asarray(self.tokens[start : start + self.block_size], dtype=np.int64)  # (T,)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids.copy(), "lengths": len(ids)}


class TiledBlockDataset(Dataset):
    """Deterministic windows covering a token array: every token but the first is a target once.

    Windows of ``block_size`` tokens start every ``block_size - 1`` tokens
    (consecutive windows share one token, because the first position of a
    window has no target); the last window may be shorter.
    """

    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        if len(tokens) < 2:
            raise DataError(f"{len(tokens)} tokens give no next-token target; a split needs at least 2")
        self.tokens, self.block_size = tokens, block_size
        stride = block_size - 1
        self.starts = np.arange(0, len(tokens) - 1, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> Example:
        start = int(self.starts[index])
        ids = np.asarray(self.tokens[start : start + self.block_size], dtype=np.int64)  # (<= T,)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids.copy(), "lengths": len(ids)}


class LinesDataset(Dataset):
    """Ragged examples stored flat: example ``i`` is ``tokens[offsets[i]:offsets[i+1]]``."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        self.tokens, self.offsets = tokens, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} lines")
        ids = self.tokens[self.offsets[index] : self.offsets[index + 1]].astype(np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids.copy(), "lengths": len(ids)}


# ====================================================================== text_lm
@dataclass
class TextLMConfig(TaskConfig):
    """Language modelling on one UTF-8 text file.

    Attributes:
        path: the text file, or ``bundled:tinyshakespeare`` for the corpus shipped in the package.
        tokenizer: "char" (fitted on the whole file), "bpe" (trained on the
            training part) or a saved tokenizer JSON path.
        vocab_size: BPE vocabulary size.
        block_size: tokens per example (the model's context length). A
            window of T tokens yields T - 1 next-token targets.
        val_fraction: the last this-fraction of the tokens is the validation split.
        train_blocks: random windows per training epoch (default: training
            tokens // block_size).
        cache_dir: where token arrays and trained tokenizers are cached
            (default $SCRATCHFORMER_CACHE_DIR or ~/.cache/scratchformer).
    """

    path: str = ""
    tokenizer: str = "char"
    vocab_size: int = 1024
    block_size: int = 128
    val_fraction: float = 0.1
    train_blocks: int | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path:
            raise ConfigError("text_lm needs path=<a UTF-8 text file>")
        self.path = str(self.path)
        self._at_least("block_size", 2)
        self._at_least("vocab_size", 1)
        if not isinstance(self.val_fraction, (int, float)) or not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction!r} must be in [0, 1)")
        if self.train_blocks is not None:
            self._at_least("train_blocks", 1)


@register_task("text_lm")
class TextLMTask(PrebuiltSplitsTask):
    """Random-window language modelling on one file; see :class:`TextLMConfig`.

    Attributes:
        tokens: (N,) memmap of the whole file's token ids.
        split_point: index of the first validation token.
    """

    kind = "lm"
    config_class = TextLMConfig

    def __init__(self, config: TextLMConfig) -> None:
        super().__init__(config)
        self.config: TextLMConfig = config
        text = read_text_file(config.path)
        raw_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
        # BPE learns from the training part only; the char vocabulary covers the whole file
        # (a character seen only in validation would otherwise be <unk>).
        train_chars = text[: int(len(text) * (1 - config.val_fraction))] if config.tokenizer == "bpe" else text
        self.tokenizer = resolve_tokenizer(
            config.tokenizer, [train_chars], config.vocab_size, config.cache_dir, content_hash=raw_hash
        )
        self.tokens = cached_token_array(
            text, raw_hash, self.tokenizer, config.cache_dir, stem=resolve_data_path(config.path).stem
        )
        n = len(self.tokens)
        self.split_point = n - int(round(n * config.val_fraction))
        bs = config.block_size
        if self.split_point < bs:
            raise DataError(
                f"{config.path} gives {self.split_point} training tokens, fewer than block_size={bs}; "
                f"lower block_size or val_fraction, or use a longer file"
            )
        if config.val_fraction > 0 and n - self.split_point < 2:
            raise DataError(
                f"val_fraction={config.val_fraction} leaves {n - self.split_point} validation tokens of {n}; "
                f"raise val_fraction (or set it to 0 for no validation split)"
            )
        num_blocks = config.train_blocks or max(1, self.split_point // bs)
        self._datasets: dict[str, Dataset] = {
            "train": RandomBlockDataset(self.tokens[: self.split_point], bs, num_blocks, config.seed)
        }
        if config.val_fraction > 0:
            self._datasets["val"] = TiledBlockDataset(self.tokens[self.split_point :], bs)


# ====================================================================== text_lines_lm
def load_wikitext(
    name: str = "wikitext-103-raw-v1",
    split: str = "train",
    data_files: str | os.PathLike[str] | dict[str, Any] | None = None,
    cache_dir: str | None = None,
) -> list[str]:
    """The ``text`` column of a wikitext split via Hugging Face ``datasets``.

    Args:
        name: the wikitext configuration (e.g. "wikitext-2-raw-v1").
        split: "train", "validation" or "test".
        data_files: local files in the same format instead of the hub (a path
            or a {split: path} dict); the loader is chosen by extension:
            .txt -> "text", .json/.jsonl -> "json", .parquet -> "parquet".
        cache_dir: the ``datasets`` cache directory.

    Raises:
        ConfigError: ``datasets`` is not installed, or an unknown file type.
        DataError: the data has no ``text`` column.
    """
    try:
        import datasets
    except ImportError:
        raise ConfigError("load_wikitext needs Hugging Face datasets: pip install 'scratchformer[hf]'") from None
    if data_files is None:
        try:
            ds = datasets.load_dataset("wikitext", name, split=split, cache_dir=cache_dir)
        except Exception as err:  # offline, a proxy, a renamed dataset: datasets raises many types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(
                f"could not load wikitext {name!r} ({split}) through Hugging Face datasets: {first}. It needs the "
                "internet the first time (then its cache); offline, train on a local file instead "
                "(task.path=FILE.txt, or task.path=bundled:tinyshakespeare)"
            ) from None
    else:
        first = data_files if not isinstance(data_files, dict) else next(iter(data_files.values()))
        first = first[0] if isinstance(first, (list, tuple)) else first
        builder = _builder_for(Path(first))
        files = {"train": str(data_files)} if not isinstance(data_files, dict) else data_files
        if split not in files:
            raise ConfigError(f"split={split!r} is not in data_files (it has {sorted(files)})")
        ds = datasets.load_dataset(builder, data_files=files, split=split, cache_dir=cache_dir)
    if "text" not in ds.column_names:
        raise DataError(f"the loaded data has columns {ds.column_names}, no 'text' column")
    return list(ds["text"])


def _builder_for(path: Path) -> str:
    suffix = path.suffix.lower()
    builders = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
    if suffix not in builders:
        raise ConfigError(f"cannot tell the format of {path}: use a .txt, .json, .jsonl or .parquet file")
    return builders[suffix]


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """Examples of a local lines file: .txt lines, or the ``text`` field of .json/.jsonl/.parquet.

    Raises:
        DataError: not UTF-8 (with the byte offset), a missing ``text``
            field, or an unknown file type.
    """
    path = resolve_data_path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return load_wikitext(split="train", data_files=str(path))
    if suffix in (".json", ".jsonl"):
        return [str(r) for r in (rec.get("text") for rec in read_records(path, required=("text",))) if r is not None]
    return read_text_file(path).splitlines()


@dataclass
class TextLinesLMConfig(TaskConfig):
    """Each non-blank line one example, right-padded, padding loss-free (tutorial 004).

    Attributes:
        path: a local .txt (one example per line) or .json/.jsonl/.parquet
            file with a ``text`` column; the last ``val_fraction`` of the lines
            is validation.
        wikitext: instead of ``path``, a wikitext configuration name loaded
            with :func:`load_wikitext` (its train/validation/test splits).
        tokenizer, vocab_size, cache_dir: as in :class:`TextLMConfig`.
        max_length: lines are truncated to this many tokens (the tutorial's seq_len).
        add_eos: append the EOS token to every line (so a model learns to stop).
        max_lines: use only the first this-many lines of each split (None: all).
    """

    path: str | None = None
    wikitext: str | None = None
    tokenizer: str = "char"
    vocab_size: int = 1024
    max_length: int = 128
    add_eos: bool = True
    val_fraction: float = 0.1
    max_lines: int | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.path is None) == (self.wikitext is None):
            raise ConfigError("text_lines_lm needs exactly one of path=<file> or wikitext=<config name>")
        self._at_least("max_length", 2)
        self._at_least("vocab_size", 1)
        if self.max_lines is not None:
            self._at_least("max_lines", 1)
        if not isinstance(self.val_fraction, (int, float)) or not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction!r} must be in [0, 1)")


@register_task("text_lines_lm")
class TextLinesLMTask(PrebuiltSplitsTask):
    """Line-per-example language modelling; see :class:`TextLinesLMConfig`.

    Examples hold ``input_ids`` (one line, up to ``max_length`` tokens),
    ``attention_mask``, ``labels == input_ids`` and ``lengths`` (tokens in the
    line); collate pads with the pad id and -100 labels, so padding is never a
    target.
    """

    kind = "lm"
    config_class = TextLinesLMConfig

    def __init__(self, config: TextLinesLMConfig, lines: dict[str, Sequence[str]] | None = None) -> None:
        super().__init__(config)
        self.config: TextLinesLMConfig = config
        raw = self._load_splits() if lines is None else dict(lines)
        self._lines = {
            split: [line.rstrip("\n") for line in texts if line.strip()][: config.max_lines]
            for split, texts in raw.items()
        }
        for split, texts in self._lines.items():
            if not texts:
                raise DataError(f"text_lines_lm: the {split} split has no non-blank lines; check the data source")
        content_hash = hashlib.sha256("\n".join(self._lines["train"]).encode("utf-8")).hexdigest()
        self.tokenizer = resolve_tokenizer(
            config.tokenizer, self._lines["train"], config.vocab_size, config.cache_dir, content_hash=content_hash
        )
        if config.add_eos and self.tokenizer.eos_token_id is None:
            raise ConfigError(f"add_eos=True but {self.tokenizer!r} has no EOS token; set add_eos=False")
        self._datasets = {split: self._encode(texts) for split, texts in self._lines.items()}

    def _load_splits(self) -> dict[str, list[str]]:
        cfg = self.config
        if cfg.wikitext is not None:
            return {
                "train": load_wikitext(cfg.wikitext, "train", cache_dir=cfg.cache_dir),
                "val": load_wikitext(cfg.wikitext, "validation", cache_dir=cfg.cache_dir),
                "test": load_wikitext(cfg.wikitext, "test", cache_dir=cfg.cache_dir),
            }
        lines = [line for line in read_lines(cfg.path) if line.strip()]
        if not lines:
            raise DataError(f"{cfg.path} is an empty corpus (no non-blank lines)")
        n_val = int(round(len(lines) * cfg.val_fraction))
        if cfg.val_fraction > 0 and n_val == 0:
            raise DataError(
                f"val_fraction={cfg.val_fraction} of {len(lines)} lines leaves an empty validation split; "
                f"raise val_fraction or use more lines"
            )
        split = {"train": lines[: len(lines) - n_val]}
        if n_val:
            split["val"] = lines[len(lines) - n_val :]
        return split

    def _encode(self, texts: Iterable[str]) -> LinesDataset:
        eos = self.tokenizer.eos_token_id if self.config.add_eos else None
        rows = []
        for line in texts:
            ids = self.tokenizer.encode(line)
            if eos is not None:
                ids.append(eos)
            rows.append(ids[: self.config.max_length])
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in rows])
        dtype = token_dtype(self.tokenizer.vocab_size)
        flat = np.fromiter((i for r in rows for i in r), dtype=dtype, count=int(offsets[-1]))
        return LinesDataset(flat, offsets)

    def texts(self, split: str) -> list[str]:
        """The lines of ``split`` (before tokenisation and truncation)."""
        self.check_split(split)
        return list(self._lines[split])
