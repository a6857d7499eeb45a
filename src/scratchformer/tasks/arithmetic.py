"""Arithmetic tasks: difference-sign classification, the seq2seq adder, the GPT adder.

Every generator is vectorised with numpy and seeded by ``config.seed``. A
*problem* is kept as a small int64 row (e.g. ``[a, b]``); the same problem is
never drawn twice within a split, and with ``exclude_train_from_eval=True``
(the default) never appears in both the training split and an evaluation
split. Formats are documented in docs/tasks.md and on each config.

N examples, L problem length, T token length, W answer width, k base.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from scratchformer.errors import ConfigError, DataError
from scratchformer.tasks.base import (
    IGNORE_INDEX,
    ExampleDataset,
    GenerativeTask,
    PrebuiltSplitsTask,
    Prompt,
    ShownAnswer,
    TaskConfig,
    check_split_fractions,
    register_task,
)
from scratchformer.tokenizers.arithmetic import ArithmeticTokenizer
from scratchformer.tokenizers.char import CharTokenizer

logger = logging.getLogger(__name__)

ShortfallPolicy = Literal["take_all", "error"]
"""When a length has fewer distinct problems than requested: use them all, or raise."""

ENUMERATE_LIMIT = 2_000_000
"""Problem spaces up to this size are enumerated (exact, uniform) when most of it is wanted."""

_MAX_DRAW_ROUNDS = 64
_INT64_MAX = np.iinfo(np.int64).max
_DIGITS = "0123456789"

_TYPED_PROMPT = re.compile(r"^(<BOS>)?(\d+)([+\-*])(\d+)=$")
"""A prompt as a person types it for the GPT format: ``12+5=``, optionally after ``<BOS>``."""


# ---------------------------------------------------------------------- option parsing
def parse_lengths(name: str, value: Any) -> tuple[int, ...]:
    """Accept ``5``, ``[3, 4, 7]``, ``range(3, 11)`` or ``"3..10"`` (inclusive); return a sorted tuple.

    Raises:
        ConfigError: anything else, or an empty selection.
    """
    if isinstance(value, str):
        lo, sep, hi = value.partition("..")
        try:
            lengths = tuple(range(int(lo), int(hi) + 1)) if sep else (int(value),)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a length list; write e.g. '3..10' or [3, 4, 5]") from None
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        lengths = (int(value),)
    elif isinstance(value, (list, tuple, range)):
        lengths = tuple(value)
    else:
        raise ConfigError(f"{name}={value!r} is not a length list; write e.g. '3..10' or [3, 4, 5]")
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
            raise ConfigError(f"{name} holds {length!r}, not an int")
    if not lengths:
        raise ConfigError(f"{name}={value!r} selects no lengths")
    return tuple(sorted({int(x) for x in lengths}))


def _check_base(base: Any) -> None:
    if isinstance(base, bool) or not isinstance(base, int) or not 2 <= base <= 10:
        raise ConfigError(
            f"base={base!r} is not usable: the arithmetic vocabulary holds the digits 0-9, so base must be 2..10"
        )


def _check_policy(value: str) -> None:
    if value not in ("take_all", "error"):
        raise ConfigError(f"if_too_few={value!r} must be 'take_all' or 'error'")


def _check_per_length_config(config: Any, problem: str, operator: str) -> None:
    """Normalise and check the fields shared by the per-length configs (in place).

    ``config`` has ``train_lengths``, ``test_lengths`` (parsed here into sorted
    tuples), ``base``, ``if_too_few`` and ``{train,test}_examples_per_length``.
    ``problem`` names the shortest expression in errors (e.g. "an addition
    'a+b'"), ``operator`` its operator symbol.

    Raises:
        ConfigError: a bad field, a length <= 2 (no room for a digit, the
            operator and a digit), or a length too long for int64 arithmetic.
    """
    config.train_lengths = parse_lengths("train_lengths", config.train_lengths)
    config.test_lengths = parse_lengths("test_lengths", config.test_lengths)
    _check_base(config.base)
    _check_policy(config.if_too_few)
    config._at_least("train_examples_per_length", 1)
    config._at_least("test_examples_per_length", 1)
    for name in ("train_lengths", "test_lengths"):
        for length in getattr(config, name):
            if length <= 2:
                raise ConfigError(
                    f"{name} holds {length}: {problem} needs a length > 2 "
                    f"(one digit, the {operator!r}, one digit); use lengths >= 3"
                )
            if config.base ** (length - 2) > _INT64_MAX // 2:
                longest_ok = max(n for n in range(3, 200) if config.base ** (n - 2) <= _INT64_MAX // 2)
                raise ConfigError(
                    f"{name} holds {length}, too long for base {config.base} in int64 arithmetic; "
                    f"use lengths <= {longest_ok}"
                )


# ---------------------------------------------------------------------- numpy helpers
def row_keys(problems: np.ndarray) -> np.ndarray:
    """(N,) fixed-width byte-string keys, one per row of a 2-D array (equal rows <-> equal keys)."""
    problems = np.ascontiguousarray(problems)
    width = problems.shape[1] * problems.itemsize
    return problems.view(f"S{width}").ravel()


def _unique_in_order(keys: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct key, in draw order."""
    _, first = np.unique(keys, return_index=True)
    first.sort()
    return first


def digits_lsf(x: np.ndarray, width: int, base: int) -> np.ndarray:
    """(N, width) digits of non-negative int64s ``x``, least significant first.

    Positions whose place value does not fit in int64 hold 0 (no int64 can reach them).
    """
    usable = 0
    while usable < width and base**usable <= _INT64_MAX:
        usable += 1
    powers = base ** np.arange(usable, dtype=np.int64)  # (usable,)
    out = np.zeros((len(x), width), dtype=np.int64)  # (N, width)
    out[:, :usable] = (x[:, None] // powers) % base
    return out


def num_digits(x: np.ndarray, base: int, max_width: int) -> np.ndarray:
    """(N,) digit count of each int in ``x`` (0 counts as one digit)."""
    powers = base ** np.arange(1, max_width + 1, dtype=object)
    counts = np.ones(len(x), dtype=np.int64)
    for p in powers:
        if p > _INT64_MAX:
            break
        counts += x >= int(p)
    return counts


def to_base(value: int, base: int) -> str:
    """``value`` (a non-negative Python int) written in ``base`` (2..10)."""
    if value == 0:
        return "0"
    out = []
    while value:
        value, d = divmod(value, base)
        out.append(_DIGITS[d])
    return "".join(reversed(out))


def _ascii_lut(tokenizer: Any) -> np.ndarray:
    """(128,) int64: ASCII code of each one-character token -> its id (-1 elsewhere, and for
    symbols the tokenizer lacks: a character tokenizer fitted on differences knows no ``+``)."""
    lut = np.full(128, -1, dtype=np.int64)
    for ch in "0123456789+-*=#":
        try:
            lut[ord(ch)] = tokenizer.token_to_id(ch)
        except DataError:
            pass
    return lut


def _chars_to_strings(chars: np.ndarray) -> list[str]:
    """(N, W) uint8 ASCII rows -> N Python strings."""
    chars = np.ascontiguousarray(chars, dtype=np.uint8)
    return [s.decode("ascii") for s in chars.view(f"S{chars.shape[1]}").ravel()]


def sample_unique(
    draw: Callable[[np.random.Generator, int], np.ndarray],
    enumerate_all: Callable[[], np.ndarray] | None,
    available: int,
    n: int,
    rng: np.random.Generator,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Draw ``n`` distinct problem rows, none of whose keys is in ``exclude``.

    Args:
        draw: ``draw(rng, m)`` returns (m, C) int64 candidate problems (may repeat).
        enumerate_all: returns every problem of the space, or None if too big.
        available: how many distinct problems the space holds.
        n: how many to return; the caller has checked ``n`` is achievable.
        exclude: keys (from :func:`row_keys`) that must not be returned.

    Returns:
        (n, C) int64 distinct problems in random order.
    """
    n_excluded = 0 if exclude is None else len(exclude)
    enumerable = enumerate_all is not None and available <= ENUMERATE_LIMIT
    if enumerable and n >= (available - n_excluded) // 2:
        return _enumerate_unique(enumerate_all, n, rng, exclude)

    chosen: list[np.ndarray] = []
    seen = np.empty(0, dtype=f"S{8}") if exclude is None else exclude
    got = 0
    for _ in range(_MAX_DRAW_ROUNDS):
        need = n - got
        if need <= 0:
            break
        cand = draw(rng, int(need * 1.25) + 16)  # (m, C)
        keys = row_keys(cand)
        first = _unique_in_order(keys)
        cand, keys = cand[first], keys[first]
        if len(seen):
            fresh = ~np.isin(keys, seen)
            cand, keys = cand[fresh], keys[fresh]
        cand, keys = cand[:need], keys[:need]
        chosen.append(cand)
        seen = np.concatenate([seen.astype(keys.dtype), keys]) if len(seen) else keys
        got += len(cand)
    if got < n:
        if not enumerable:
            raise DataError(f"could not draw {n} distinct problems from a space of {available}; ask for fewer")
        chosen.append(_enumerate_unique(enumerate_all, n - got, rng, seen))  # seen holds every key so far
    return np.concatenate(chosen)[:n]


def _enumerate_unique(
    enumerate_all: Callable[[], np.ndarray], n: int, rng: np.random.Generator, exclude: np.ndarray | None
) -> np.ndarray:
    every = enumerate_all()  # (available, C)
    if exclude is not None and len(exclude):
        every = every[~np.isin(row_keys(every), exclude)]
    return every[rng.permutation(len(every))[:n]]


def _resolve_count(
    wanted: int, available: int, policy: ShortfallPolicy, what: str, excluded: int = 0
) -> int:
    """``min(wanted, available - excluded)``, or a DataError saying how many exist under policy 'error'."""
    free = available - excluded
    if wanted <= free:
        return wanted
    if policy == "error":
        extra = ""
        if excluded:
            extra = f" ({available} exist, {excluded} of them are training examples excluded from evaluation)"
        raise DataError(
            f"{what}: {wanted} distinct examples requested but only {free} are available{extra}; "
            f"ask for at most {free}, or set if_too_few='take_all'"
        )
    logger.info("%s: only %d distinct examples available (%d requested); taking all", what, free, wanted)
    return free


class _PerLengthTask(PrebuiltSplitsTask):
    """Shared split building for tasks with separate train and test length lists."""

    split_names_: tuple[str, ...] = ("train", "test")

    @property
    def split_names(self) -> tuple[str, ...]:
        return self.split_names_

    # subclass hooks -------------------------------------------------------
    def _available(self, length: int) -> int:
        raise NotImplementedError

    def _draw(self, length: int) -> Callable[[np.random.Generator, int], np.ndarray]:
        raise NotImplementedError

    def _enumerate(self, length: int) -> Callable[[], np.ndarray] | None:
        raise NotImplementedError

    def _build_problems(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Split name -> (problems (N, C) int64, lengths (N,)), shuffled."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        train_keys: dict[int, np.ndarray] = {}
        plans = [
            ("train", cfg.train_lengths, cfg.train_examples_per_length),
            ("test", cfg.test_lengths, cfg.test_examples_per_length),
        ]
        for split, lengths, per_length in plans:
            parts, part_lengths = [], []
            for length in lengths:
                exclude = train_keys.get(length) if split != "train" and cfg.exclude_train_from_eval else None
                available = self._available(length)
                n = _resolve_count(
                    per_length,
                    available,
                    cfg.if_too_few,
                    f"{self.name} {split} length {length}",
                    excluded=0 if exclude is None else len(exclude),
                )
                if n == 0:
                    logger.warning(
                        "%s %s length %d: no examples left after excluding training", self.name, split, length
                    )
                    continue
                problems = sample_unique(self._draw(length), self._enumerate(length), available, n, rng, exclude)
                if split == "train":
                    train_keys[length] = np.unique(row_keys(problems))
                parts.append(problems)
                part_lengths.append(np.full(len(problems), length, dtype=np.int64))
            if not parts:
                raise DataError(
                    f"{self.name}: the {split} split is empty (lengths {list(lengths)}, "
                    f"every problem is a training problem); use other {split}_lengths or exclude_train_from_eval=False"
                )
            problems = np.concatenate(parts)
            lengths_arr = np.concatenate(part_lengths)
            order = rng.permutation(len(problems))
            out[split] = (problems[order], lengths_arr[order])
        return out


# ====================================================================== 1. difference sign
@dataclass
class DifferenceSignConfig(TaskConfig):
    """Difference-sign classification (tutorial 000, Part II-III).

    An example is ``a-b`` with both numbers written in base ``base`` with their
    digits reversed (least significant first), ``L`` characters in all
    including the ``-``. The label is 1 iff a > b. Each operand has exactly
    as many digits as allotted (no leading zero, never 0); the split of the
    ``L - 1`` digit slots between a and b is uniform, as in the tutorial.

    Attributes:
        train_lengths / test_lengths: problem lengths L (> 2) per split;
            accepts ``"3..10"``.
        train_examples_per_length / test_examples_per_length: distinct
            examples wanted per length (the tutorial's dataset_size).
        base: digits are 0..base-1 (2..10).
        max_length: token length every example is padded to; default the
            longest length + 1, so the final position is always the class token.
        exclude_train_from_eval: the test split never holds a training example.
        if_too_few: a length with fewer distinct problems than requested:
            'take_all' (the tutorial's de-duplication) or 'error'.
        tokenizer: "arithmetic" (the fixed arithmetic vocabulary) or "char"
            (the tutorial's: a character tokenizer fitted on the first
            ``corpus_size`` training expressions; pad id 0 doubles as the
            class token).
        corpus_size: expressions the "char" tokenizer is fitted on.
    """

    train_lengths: Any = "3..10"
    test_lengths: Any = "11..15"
    train_examples_per_length: int = 2500
    test_examples_per_length: int = 1000
    base: int = 10
    max_length: int | None = None
    exclude_train_from_eval: bool = True
    if_too_few: ShortfallPolicy = "take_all"
    tokenizer: Literal["arithmetic", "char"] = "arithmetic"
    corpus_size: int = 5000

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("corpus_size")
        _check_per_length_config(self, "a difference 'a-b'", "-")
        longest = max(self.train_lengths + self.test_lengths)
        if self.max_length is None:
            self.max_length = longest + 1
        elif self.max_length < longest + 1:
            raise ConfigError(
                f"max_length={self.max_length} leaves no room for the class token after a length-{longest} "
                f"expression; use max_length >= {longest + 1}"
            )


def _operand_count(digits: int, base: int) -> int:
    """How many numbers have exactly ``digits`` digits (0 excluded)."""
    return (base - 1) * base ** (digits - 1)


def _operand_low(digits: np.ndarray, base: int) -> np.ndarray:
    """Smallest number with exactly ``digits`` digits (1 for one digit: 0 is never an operand)."""
    return np.where(digits == 1, 1, base ** (digits - 1))


@register_task("difference_sign")
class DifferenceSignTask(_PerLengthTask):
    """Difference-sign classification; see :class:`DifferenceSignConfig`.

    Example (token level): ``input_ids`` is the expression's characters, then
    ``<pad>`` up to ``max_length``. The last position is the class token (the
    tutorial reuses the pad id for it), which a classifier reads:
    ``classifier_position == "last"``. ``attention_mask`` is 1 on the
    expression and on that final class position, 0 on the padding between.
    ``labels`` is 1 iff a > b; ``lengths`` is L.

    Problems are ``[n, a, b]`` with n the digit count of a.
    """

    kind = "classification"
    config_class = DifferenceSignConfig
    classifier_position = "last"
    num_classes = 2
    label_names = ("a<=b", "a>b")

    def __init__(self, config: DifferenceSignConfig) -> None:
        super().__init__(config)
        self.config: DifferenceSignConfig = config
        self._problems = self._build_problems()
        self.tokenizer = ArithmeticTokenizer() if config.tokenizer == "arithmetic" else CharTokenizer.fit(self.corpus())
        self._datasets = {split: self._make_dataset(*p) for split, p in self._problems.items()}

    def corpus(self) -> list[str]:
        """The first ``corpus_size`` training expressions: what the "char" tokenizer is fitted on."""
        return self.texts("train")[: self.config.corpus_size]

    def _available(self, length: int) -> int:
        k = self.config.base
        return sum(_operand_count(n, k) * _operand_count(length - 1 - n, k) for n in range(1, length - 1))

    def _draw(self, length: int) -> Callable[[np.random.Generator, int], np.ndarray]:
        k = self.config.base

        def draw(rng: np.random.Generator, m: int) -> np.ndarray:
            n = rng.integers(1, length - 1, size=m)  # digits of a, uniform as in the tutorial
            n_b = length - 1 - n
            a = rng.integers(_operand_low(n, k), k**n)
            b = rng.integers(_operand_low(n_b, k), k**n_b)
            return np.stack([n, a, b], axis=1)

        return draw

    def _enumerate(self, length: int) -> Callable[[], np.ndarray] | None:
        k = self.config.base

        def every() -> np.ndarray:
            rows = []
            for n in range(1, length - 1):
                n_b = length - 1 - n
                a = np.arange(int(_operand_low(np.array(n), k)), k**n, dtype=np.int64)
                b = np.arange(int(_operand_low(np.array(n_b), k)), k**n_b, dtype=np.int64)
                aa, bb = np.meshgrid(a, b, indexing="ij")
                rows.append(np.stack([np.full(aa.size, n), aa.ravel(), bb.ravel()], axis=1))
            return np.concatenate(rows)

        return every

    def _chars(self, problems: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(N, max L) uint8 ASCII of ``a-b`` (reversed digits), zero bytes after each expression."""
        k = self.config.base
        n, a, b = problems[:, 0], problems[:, 1], problems[:, 2]
        width = int(lengths.max())
        col = np.arange(width)[None, :]  # (1, W)
        da = digits_lsf(a, width, k)  # (N, W) reversed digits of a
        db = digits_lsf(b, width, k)
        b_index = np.clip(col - n[:, None] - 1, 0, width - 1)
        digit = np.where(col < n[:, None], da, np.take_along_axis(db, b_index, axis=1))
        chars = (digit + ord("0")).astype(np.uint8)
        chars[col == n[:, None]] = ord("-")
        chars[col >= lengths[:, None]] = 0
        return chars

    def _make_dataset(self, problems: np.ndarray, lengths: np.ndarray) -> ExampleDataset:
        tok = self.tokenizer
        chars = self._chars(problems, lengths)
        ids = _ascii_lut(tok)[chars]  # (N, W); -1 on the zero bytes
        real = chars != 0
        T = self.config.max_length
        input_ids = np.full((len(problems), T), tok.pad_token_id, dtype=np.int64)  # (N, T)
        input_ids[:, : ids.shape[1]] = np.where(real, ids, tok.pad_token_id)
        mask = np.zeros((len(problems), T), dtype=np.int64)  # (N, T)
        mask[:, : ids.shape[1]] = real
        mask[:, -1] = 1  # the class token
        labels = (problems[:, 1] > problems[:, 2]).astype(np.int64)
        return ExampleDataset(
            {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "lengths": lengths}
        )

    def texts(self, split: str) -> list[str]:
        """The expressions ``a-b`` (reversed digits, no padding) of ``split``."""
        self.check_split(split)
        problems, lengths = self._problems[split]
        return [s.rstrip("\x00") for s in _chars_to_strings(self._chars(problems, lengths))]

    def labels(self, split: str) -> np.ndarray:
        """(N,) class labels of ``split``."""
        self.check_split(split)
        return np.asarray(self._datasets[split].columns["labels"])


# ====================================================================== 2. seq2seq adder
@dataclass
class AdditionSeq2SeqConfig(TaskConfig):
    """The encoder-decoder adder (tutorial 000, Part IV).

    Source: ``rev(a)+rev(b)`` (each number's digits reversed, no leading
    zeros, a, b >= 1) then ``0``s up to exactly ``L`` characters. The ``L - 1``
    digit slots are split uniformly between a and b and each number is drawn
    uniformly below ``base**slots`` (so it may use fewer digits than its
    slots; the zero padding then makes up the length), as in the tutorial.
    Target: ``a + b`` written normally (NOT reversed), then ``#``, then ``0``s
    up to ``L + 1`` characters.

    Two format options go beyond the tutorial (both off by default):
    ``reverse_answer`` writes the sum least significant digit first, so each
    answer digit depends only on the digits of the same place value and the
    carry from the previous one; ``zero_padding=False`` ends the source after
    ``b`` and the target after ``#`` (collate padding, masked and loss-free,
    fills the rest), so where a number ends is visible in the input.

    Attributes: as :class:`DifferenceSignConfig`. The tutorial evaluates
    lengths 3..20; the default test lengths start at 5 because the default
    training set already holds every problem of lengths 3 and 4 (81 and 1 701
    of them), so with ``exclude_train_from_eval`` nothing is left to test there.
    """

    train_lengths: Any = "3..10"
    test_lengths: Any = "5..20"
    train_examples_per_length: int = 10_000
    test_examples_per_length: int = 512
    base: int = 10
    exclude_train_from_eval: bool = True
    if_too_few: ShortfallPolicy = "take_all"
    reverse_answer: bool = False
    zero_padding: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_per_length_config(self, "an addition 'a+b'", "+")
        for name in ("reverse_answer", "zero_padding"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")


@register_task("addition_seq2seq")
class AdditionSeq2SeqTask(_PerLengthTask, GenerativeTask):
    """Seq2seq addition; see :class:`AdditionSeq2SeqConfig`.

    Batch: ``encoder_input_ids`` (B, L) the source, ``encoder_attention_mask``
    (all 1 within an example: the zero padding is part of the format),
    ``labels`` (B, L + 1) the target ids, not shifted — the model shifts right
    itself, starting from ``decoder_start_token_id`` (``<BOS>``). Loss is on
    every target position, the zeros after ``#`` included, as in the
    tutorial; only collate padding (mixed lengths in one batch) is -100.
    ``lengths`` is L.

    Problems are ``[a, b]``.
    """

    kind = "seq2seq"
    config_class = AdditionSeq2SeqConfig

    def __init__(self, config: AdditionSeq2SeqConfig) -> None:
        super().__init__(config)
        self.config: AdditionSeq2SeqConfig = config
        self.tokenizer = ArithmeticTokenizer()
        self._problems = self._build_problems()
        self._datasets = {split: self._make_dataset(*p) for split, p in self._problems.items()}

    @property
    def decoder_start_token_id(self) -> int:
        """The id the model prepends when shifting ``labels`` right."""
        return self.tokenizer.bos_token_id

    def target_length(self, length: int) -> int:
        """Target length for source length ``length``."""
        return length + 1

    def _available(self, length: int) -> int:
        # distinct sources <-> pairs (a, b) with digits(a) + digits(b) <= L - 1
        k = self.config.base
        return sum(
            _operand_count(da, k) * _operand_count(db, k)
            for da in range(1, length - 1)
            for db in range(1, length - da)
        )

    def _draw(self, length: int) -> Callable[[np.random.Generator, int], np.ndarray]:
        k = self.config.base

        def draw(rng: np.random.Generator, m: int) -> np.ndarray:
            n = rng.integers(1, length - 1, size=m)
            a = rng.integers(1, k**n)
            b = rng.integers(1, k ** (length - 1 - n))
            return np.stack([a, b], axis=1)

        return draw

    def _enumerate(self, length: int) -> Callable[[], np.ndarray] | None:
        k = self.config.base

        def every() -> np.ndarray:
            rows = []
            for da in range(1, length - 1):
                a = np.arange(int(_operand_low(np.array(da), k)), k**da, dtype=np.int64)
                for db in range(1, length - da):
                    b = np.arange(int(_operand_low(np.array(db), k)), k**db, dtype=np.int64)
                    aa, bb = np.meshgrid(a, b, indexing="ij")
                    rows.append(np.stack([aa.ravel(), bb.ravel()], axis=1))
            return np.concatenate(rows)

        return every

    def _chars(self, problems: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source (N, max L) and target (N, max L + 1) uint8 ASCII, zero bytes past each row's length."""
        k = self.config.base
        a, b = problems[:, 0], problems[:, 1]
        s = a + b
        width = int(lengths.max())
        na = num_digits(a, k, width)[:, None]  # (N, 1)
        nb = num_digits(b, k, width)[:, None]
        ns = num_digits(s, k, width + 1)[:, None]
        col = np.arange(width)[None, :]  # (1, W)
        da, db = digits_lsf(a, width, k), digits_lsf(b, width, k)  # (N, W) reversed digits
        b_digit = np.take_along_axis(db, np.clip(col - na - 1, 0, width - 1), axis=1)
        src = np.where(col < na, da, np.where((col > na) & (col <= na + nb), b_digit, 0))
        src = (src + ord("0")).astype(np.uint8)
        src[col == na] = ord("+")
        src[col >= lengths[:, None]] = 0

        tcol = np.arange(width + 1)[None, :]  # (1, W + 1)
        ds = digits_lsf(s, width + 1, k)
        if self.config.reverse_answer:
            s_digit = ds  # least significant first
        else:
            s_digit = np.take_along_axis(ds, np.clip(ns - 1 - tcol, 0, width), axis=1)  # most significant first
        tgt = (np.where(tcol < ns, s_digit, 0) + ord("0")).astype(np.uint8)
        tgt[tcol == ns] = ord("#")
        tgt[tcol >= lengths[:, None] + 1] = 0
        if not self.config.zero_padding:
            src[col > na + nb] = 0
            tgt[tcol > ns] = 0
        return src, tgt

    def _make_dataset(self, problems: np.ndarray, lengths: np.ndarray) -> ExampleDataset:
        src, tgt = self._chars(problems, lengths)
        lut = _ascii_lut(self.tokenizer)
        pad = self.tokenizer.pad_token_id
        enc = np.where(src != 0, lut[src], pad)  # (N, S)
        labels = np.where(tgt != 0, lut[tgt], IGNORE_INDEX)  # (N, S + 1)
        return ExampleDataset(
            {
                "encoder_input_ids": enc,
                "encoder_attention_mask": (src != 0).astype(np.int64),
                "labels": labels,
                "lengths": lengths,
            },
            row_lengths=lengths,
            extra_row_lengths={"labels": lengths + 1},
        )

    def texts(self, split: str) -> list[str]:
        """Each example as ``source->target`` text, e.g. ``'21+3000->15#00000'`` (12 + 3 = 15, L = 7)."""
        self.check_split(split)
        src, tgt = self._chars(*self._problems[split])
        pairs = zip(_chars_to_strings(src), _chars_to_strings(tgt))
        return [f"{s.rstrip(chr(0))}->{t.rstrip(chr(0))}" for s, t in pairs]

    def prompts(self, split: str) -> list[Prompt]:
        """Source text and ids; ``answer`` is the whole target (sum, ``#``, zero padding)."""
        self.check_split(split)
        problems, lengths = self._problems[split]
        src, tgt = self._chars(problems, lengths)
        ds = self._datasets[split]
        out = []
        for i, (s, t) in enumerate(zip(_chars_to_strings(src), _chars_to_strings(tgt))):
            s, t = s.rstrip("\x00"), t.rstrip("\x00")
            ids = tuple(int(x) for x in ds.columns["encoder_input_ids"][i, : len(s)])
            out.append(Prompt(text=s, ids=ids, answer=t, length=int(lengths[i])))
        return out

    def check_answer(self, prompt: str | Sequence[int], generated_text: str) -> bool:
        """True iff ``generated_text`` starts with the sum of the source's numbers, then ``#``.

        The sum is read least significant digit first under ``reverse_answer``.
        The digits after ``#`` are padding and not checked. ``prompt`` is the
        source text or its token ids. Raises DataError on a malformed prompt.
        """
        text = prompt if isinstance(prompt, str) else self.tokenizer.decode(list(prompt), skip_special_tokens=True)
        k = self.config.base
        left, plus, right = text.partition("+")
        if not plus or not left or not right or not (left + right).isdigit():
            raise DataError(f"{text!r} is not a seq2seq addition source like '21+3000'")
        try:
            total = int(left[::-1], k) + int(right[::-1], k)
        except ValueError:
            raise DataError(f"{text!r} has a digit outside base {k}") from None
        generated = generated_text.replace("<BOS>", "", 1) if generated_text.startswith("<BOS>") else generated_text
        answer, hash_sign, _ = generated.partition("#")
        expected = to_base(total, k)
        return bool(hash_sign) and answer == (expected[::-1] if self.config.reverse_answer else expected)


# ====================================================================== 3. GPT adder
Operator = Literal["+", "-", "*"]


@dataclass
class AdditionGPTConfig(TaskConfig):
    """The decoder-only arithmetic format (tutorial 002): ``<BOS>a+b=c<EOS>``.

    a and b are written with exactly ``d`` digits (zero-padded in front), where
    ``d`` is the example's operand width; c is written with a fixed width:

    ========  =============  ==================================================
    operator  answer width   answer
    ========  =============  ==================================================
    ``+``     d + 1          a + b, zero-padded
    ``-``     d + 1          a sign slot (``0`` if a >= b, ``-`` if a < b), then
                             abs(a - b) zero-padded to d digits
    ``*``     2 d            a * b, zero-padded
    ========  =============  ==================================================

    ``reverse_operands`` writes a and b least-significant digit first;
    ``reverse_answer`` reverses the answer's digits (the sign slot of ``-``
    stays first). Widths d range over ``min_digits..max_digits``; a problem
    of width d > min_digits has at least one operand with d digits, so every
    problem has exactly one width (its length, reported in ``lengths``).

    Attributes:
        max_digits: largest operand width (the tutorial's num_digits).
        min_digits: smallest width; default ``max_digits``.
        operator: ``+``, ``-`` or ``*``.
        num_examples: distinct problems in all splits together, spread evenly
            over widths (a width with fewer problems gives all it has and the
            rest go to the others).
        split_fractions: (train, val, test) fractions, the tutorial's
            (0.7, 0.2, 0.1); a split with fraction 0 is left out.
        exclude_train_from_eval: True: the splits are a partition of one set
            of distinct problems (no problem in two splits). False: each split
            is drawn independently, so eval may contain training problems.
        base: 2..10.
    """

    max_digits: int = 2
    min_digits: int | None = None
    operator: Operator = "+"
    num_examples: int = 10_000
    split_fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)
    reverse_answer: bool = False
    reverse_operands: bool = False
    exclude_train_from_eval: bool = True
    base: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_base(self.base)
        self._at_least("max_digits", 1)
        if self.min_digits is None:
            self.min_digits = self.max_digits
        self._at_least("min_digits", 1)
        if self.min_digits > self.max_digits:
            raise ConfigError(f"min_digits={self.min_digits} > max_digits={self.max_digits}; swap them")
        if self.operator not in ("+", "-", "*"):
            raise ConfigError(f"operator={self.operator!r} must be one of '+', '-', '*'")
        largest = self.base ** (2 * self.max_digits if self.operator == "*" else self.max_digits + 1)
        if largest > _INT64_MAX:
            exponent = (lambda d: 2 * d) if self.operator == "*" else (lambda d: d + 1)
            limit = max(d for d in range(1, 64) if self.base ** exponent(d) <= _INT64_MAX)
            raise ConfigError(
                f"max_digits={self.max_digits} is too many digits for {self.operator!r} in base {self.base} "
                f"(int64 arithmetic); use max_digits <= {limit}"
            )
        self._at_least("num_examples", 1)
        self.split_fractions = check_split_fractions(self.split_fractions)


GPT_SPLITS: tuple[str, ...] = ("train", "val", "test")


@register_task("addition_gpt")
class AdditionGPTTask(PrebuiltSplitsTask, GenerativeTask):
    """Decoder-only arithmetic; see :class:`AdditionGPTConfig`.

    Batch: ``input_ids`` (B, T) ``<BOS> a op b = c <EOS>``, ``attention_mask``,
    ``labels`` (B, T) = input_ids with -100 on every position up to and
    including ``=`` (Hugging Face convention: the loss shifts, so the answer
    digits and ``<EOS>`` are the only targets). ``lengths`` is the operand
    width d. Problems are ``[a, b]``.
    """

    kind = "lm"
    config_class = AdditionGPTConfig

    def __init__(self, config: AdditionGPTConfig) -> None:
        super().__init__(config)
        self.config: AdditionGPTConfig = config
        self.tokenizer = ArithmeticTokenizer()
        self._op_id = self.tokenizer.token_to_id(config.operator)
        self._problems = self._build_problems()
        self._datasets = {split: self._make_dataset(*p) for split, p in self._problems.items()}

    # -------------------------------------------------------------- problem space
    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(s for s, f in zip(GPT_SPLITS, self.config.split_fractions) if f > 0)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(range(self.config.min_digits, self.config.max_digits + 1))

    def answer_width(self, width: int) -> int:
        """Characters in the answer of a width-``width`` problem."""
        return 2 * width if self.config.operator == "*" else width + 1

    def sequence_length(self, width: int) -> int:
        """Tokens in a whole example: BOS, a, op, b, =, answer, EOS."""
        return 2 * width + self.answer_width(width) + 4

    def available(self, width: int) -> int:
        """Distinct problems of operand width ``width``."""
        k = self.config.base
        total = k ** (2 * width)
        return total if width == self.config.min_digits else total - k ** (2 * width - 2)

    def _draw(self, width: int) -> Callable[[np.random.Generator, int], np.ndarray]:
        k, low = self.config.base, width > self.config.min_digits

        def draw(rng: np.random.Generator, m: int) -> np.ndarray:
            ab = rng.integers(0, k**width, size=(m, 2))
            if low:  # at least one operand uses all `width` digits
                ab = ab[ab.max(axis=1) >= k ** (width - 1)]
            return ab

        return draw

    def _enumerate(self, width: int) -> Callable[[], np.ndarray]:
        k, low = self.config.base, width > self.config.min_digits

        def every() -> np.ndarray:
            a, b = np.meshgrid(np.arange(k**width), np.arange(k**width), indexing="ij")
            ab = np.stack([a.ravel(), b.ravel()], axis=1).astype(np.int64)
            return ab[ab.max(axis=1) >= k ** (width - 1)] if low else ab

        return every

    def _allocate(self, total: int) -> dict[int, int]:
        """Spread ``total`` over widths evenly, capped by each width's problem count."""
        available = {w: self.available(w) for w in self.widths}
        if total > sum(available.values()):
            detail = ", ".join(f"width {w}: {n}" for w, n in available.items())
            raise DataError(
                f"addition_gpt: num_examples={total} distinct problems requested but only "
                f"{sum(available.values())} exist ({detail}); lower num_examples or raise max_digits"
            )
        counts = dict.fromkeys(self.widths, 0)
        left, open_widths = total, sorted(self.widths, key=lambda w: available[w])
        while left and open_widths:
            share = left // len(open_widths)
            w = open_widths[0]
            if available[w] <= share:
                counts[w] = available[w]
                left -= available[w]
                open_widths.pop(0)
                continue
            for i, w in enumerate(sorted(open_widths)):
                counts[w] = share + (1 if i < left - share * len(open_widths) else 0)
            left = 0
        return counts

    def _build_problems(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        names = [s for s, f in zip(GPT_SPLITS, cfg.split_fractions) if f > 0]
        fractions = [f for f in cfg.split_fractions if f > 0]
        parts: dict[str, list[tuple[np.ndarray, int]]] = {s: [] for s in names}
        for width, n in self._allocate(cfg.num_examples).items():
            if n == 0:
                continue
            sizes = _split_sizes(n, fractions)
            if cfg.exclude_train_from_eval:
                problems = sample_unique(self._draw(width), self._enumerate(width), self.available(width), n, rng)
                for name, chunk in zip(names, np.split(problems, np.cumsum(sizes)[:-1])):
                    parts[name].append((chunk, width))
            else:  # independent draws: evaluation may repeat training problems
                for name, size in zip(names, sizes):
                    if size:
                        chunk = sample_unique(
                            self._draw(width), self._enumerate(width), self.available(width), size, rng
                        )
                        parts[name].append((chunk, width))
        out = {}
        for name in names:
            if not parts[name] or sum(len(c) for c, _ in parts[name]) == 0:
                raise DataError(
                    f"addition_gpt: the {name} split is empty (num_examples={cfg.num_examples}, "
                    f"split_fractions={cfg.split_fractions}); raise num_examples or that split's fraction"
                )
            problems = np.concatenate([c for c, _ in parts[name]])
            lengths = np.concatenate([np.full(len(c), w, dtype=np.int64) for c, w in parts[name]])
            order = rng.permutation(len(problems))
            out[name] = (problems[order], lengths[order])
        return out

    # -------------------------------------------------------------- formatting
    def _answer_digits(self, a: np.ndarray, b: np.ndarray, width: int) -> np.ndarray:
        """(N, answer width) answer symbols as ASCII codes (digits, or '-' in the sign slot)."""
        k, op = self.config.base, self.config.operator
        W = self.answer_width(width)
        if op == "-":
            diff = a - b
            mag = digits_lsf(np.abs(diff), width, k)[:, ::-1]  # (N, d) most significant first
            if self.config.reverse_answer:
                mag = mag[:, ::-1]
            sign = np.where(diff < 0, ord("-"), ord("0"))[:, None]
            return np.concatenate([sign, mag + ord("0")], axis=1)
        value = a + b if op == "+" else a * b
        dig = digits_lsf(value, W, k)  # least significant first
        if not self.config.reverse_answer:
            dig = dig[:, ::-1]
        return dig + ord("0")

    def _rows(self, problems: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (N, T) and ASCII of the core ``a op b = c`` (N, T - 2) for one width."""
        k = self.config.base
        a, b = problems[:, 0], problems[:, 1]
        da, db = digits_lsf(a, width, k), digits_lsf(b, width, k)  # least significant first
        if not self.config.reverse_operands:
            da, db = da[:, ::-1], db[:, ::-1]
        n = len(problems)
        core = np.concatenate(
            [
                da + ord("0"),
                np.full((n, 1), ord(self.config.operator)),
                db + ord("0"),
                np.full((n, 1), ord("=")),
                self._answer_digits(a, b, width),
            ],
            axis=1,
        ).astype(np.uint8)  # (N, T - 2)
        tok = self.tokenizer
        ids = np.concatenate(
            [np.full((n, 1), tok.bos_token_id), _ascii_lut(tok)[core], np.full((n, 1), tok.eos_token_id)], axis=1
        )  # (N, T)
        return ids, core

    def _make_dataset(self, problems: np.ndarray, lengths: np.ndarray) -> ExampleDataset:
        T = self.sequence_length(int(lengths.max()))
        pad = self.tokenizer.pad_token_id
        input_ids = np.full((len(problems), T), pad, dtype=np.int64)  # (N, T)
        labels = np.full((len(problems), T), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((len(problems), T), dtype=np.int64)
        for width in np.unique(lengths):
            rows = lengths == width
            ids, _ = self._rows(problems[rows], int(width))
            t = ids.shape[1]
            eq = 2 * int(width) + 2  # position of '=' (BOS, d digits, op, d digits)
            input_ids[rows, :t] = ids
            mask[rows, :t] = 1
            lab = ids.copy()
            lab[:, : eq + 1] = IGNORE_INDEX
            labels[rows, :t] = lab
        seq_lengths = np.array([self.sequence_length(int(w)) for w in lengths], dtype=np.int64)
        return ExampleDataset(
            {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "lengths": lengths},
            row_lengths=seq_lengths,
        )

    def _core_strings(self, split: str) -> tuple[list[str], np.ndarray]:
        self.check_split(split)
        problems, lengths = self._problems[split]
        out: list[str] = [""] * len(problems)
        for width in np.unique(lengths):
            rows = np.flatnonzero(lengths == width)
            _, core = self._rows(problems[rows], int(width))
            for i, s in zip(rows, _chars_to_strings(core)):
                out[i] = s
        return out, lengths

    def texts(self, split: str) -> list[str]:
        """Each example as text, e.g. ``'<BOS>15+57=072<EOS>'``."""
        core, _ = self._core_strings(split)
        return [f"<BOS>{s}<EOS>" for s in core]

    def prompts(self, split: str) -> list[Prompt]:
        """``<BOS>a op b=`` with its ids, and the exact answer string (no EOS)."""
        core, lengths = self._core_strings(split)
        bos = self.tokenizer.bos_token_id
        lut = _ascii_lut(self.tokenizer)
        out = []
        for s, width in zip(core, lengths):
            question, _, answer = s.partition("=")
            ids = (bos, *(int(lut[ord(c)]) for c in question + "="))
            out.append(Prompt(text=f"<BOS>{question}=", ids=ids, answer=answer, length=int(width)))
        return out

    def expected_answer(self, a: int, b: int, width: int) -> str:
        """The answer string for one problem (Python ints; the verifier's own formatting)."""
        k, op = self.config.base, self.config.operator
        if op == "-":
            mag = to_base(abs(a - b), k).zfill(width)
            return ("-" if a < b else "0") + (mag[::-1] if self.config.reverse_answer else mag)
        value = to_base(a + b if op == "+" else a * b, k).zfill(self.answer_width(width))
        return value[::-1] if self.config.reverse_answer else value

    # -------------------------------------------------------------- for people
    def format_prompt(self, text: str) -> str:
        """A typed ``a op b=`` in this task's format: both operands zero-padded to one width (the
        longer operand's, and at least ``min_digits``: ``12+5=`` -> ``012+005=`` when every problem
        has 3 digits), their digits reversed under ``reverse_operands``. Other text is left as is."""
        m = _TYPED_PROMPT.match(text.strip())
        if not m:
            return text
        bos, a, op, b = m.group(1) or "", m.group(2), m.group(3), m.group(4)
        width = max(len(a), len(b), int(self.config.min_digits or 0))  # fixed-width runs pad to min_digits
        if self.config.reverse_operands:
            return f"{bos}{a[::-1].ljust(width, '0')}{op}{b[::-1].ljust(width, '0')}="
        return f"{bos}{a.zfill(width)}{op}{b.zfill(width)}="

    def present_answer(self, prompt: str, answer: str) -> ShownAnswer:
        """Under ``reverse_answer``, the answer to an arithmetic prompt un-reversed (leading zeros dropped)."""
        if not self.config.reverse_answer or not _TYPED_PROMPT.match(prompt):
            return super().present_answer(prompt, answer)
        return ShownAnswer(
            text=unreverse_answer(answer, self.config.operator),
            written=answer,
            how_written="reversed, least-significant digit first",
            shown_as="un-reversed",
        )

    def check_answer(self, prompt: str | Sequence[int], generated_text: str) -> bool:
        """True iff the text generated after ``prompt`` is exactly the answer (up to ``<EOS>``).

        ``prompt`` is ``"<BOS>a+b="`` (BOS optional) or its token ids. The
        answer is recomputed from the prompt's operands. Generation may stop
        at ``<EOS>`` or run on; anything after the first ``<EOS>`` is ignored,
        ``<pad>`` tokens are dropped. Raises DataError on a malformed prompt.
        """
        text = prompt if isinstance(prompt, str) else self.tokenizer.decode(list(prompt))
        cfg = self.config
        body = text.removeprefix("<BOS>")
        left, op, right = body.partition(cfg.operator)
        well_formed = op and right.endswith("=") and left.isdigit() and right[:-1].isdigit()
        if not well_formed or len(left) != len(right) - 1:
            raise DataError(f"{text!r} is not a prompt like '<BOS>12{cfg.operator}34='")
        if cfg.reverse_operands:
            left, right = left[::-1], right[:-1][::-1] + "="
        try:
            a, b = int(left, cfg.base), int(right[:-1], cfg.base)
        except ValueError:
            raise DataError(f"{text!r} has a digit outside base {cfg.base}") from None
        answer = generated_text.split("<EOS>", 1)[0].replace("<pad>", "")
        return answer == self.expected_answer(a, b, len(left))


def unreverse_answer(text: str, operator: str) -> str:
    """A reversed answer written most-significant digit first, leading zeros dropped
    (for ``-`` the first character is the sign slot and stays first)."""
    if operator == "-" and text:
        sign, digits = text[0], text[1:][::-1].lstrip("0") or "0"
        return f"-{digits}" if sign == "-" else digits
    return text[::-1].lstrip("0") or "0"


def _split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Integer sizes summing to ``n``: round each but the last, which takes the rest."""
    sizes = [round(n * f) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    if sizes[-1] < 0:
        sizes[-2] += sizes[-1]
        sizes[-1] = 0
    return sizes
