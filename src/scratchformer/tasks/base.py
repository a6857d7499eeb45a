"""What every task hands to the trainer: datasets of examples, a collate function, lengths.

A task is a small typed config (a dataclass) plus a :class:`Task` object built
from it. The task owns its tokenizer and produces one ``torch`` Dataset per
split; a DataLoader with ``collate_fn=task.collate`` turns those into a
:data:`Batch`, a ``dict[str, Tensor]`` with the standard keys below. The
trainer never needs task-specific glue: it reads ``task.kind`` and the keys.

B batch, T (padded) sequence length, S encoder length, D input features.

Standard batch keys
-------------------
=========================  ===========  ===============================================
key                        shape/dtype  meaning
=========================  ===========  ===============================================
``input_ids``              (B, T) long  token ids (lm, classification)
``attention_mask``         (B, T) long  1 for a real token, 0 for padding
``labels``                 (B, T) long  lm: the targets, **same positions as
                                        input_ids** (Hugging Face convention); -100
                                        where no loss is taken. The loss shifts:
                                        ``cross_entropy(logits[:, :-1], labels[:, 1:])``
``labels``                 (B,) long    classification: the class id
``encoder_input_ids``      (B, S) long  seq2seq: the source tokens
``encoder_attention_mask`` (B, S) long  seq2seq: 1 real, 0 padding
``labels``                 (B, T) long  seq2seq: the target ids, **not shifted**; the
                                        model shifts right (prepending
                                        ``task.decoder_start_token_id``) itself; -100
                                        where no loss is taken (collate padding)
``inputs``                 (B, D) float regression: features
``targets``                (B,) float   regression: the values to predict
``position_ids``           (B, T) long  lm, optional: each token's position id when the
                                        task sets them (place-value formats); padded with 0
``lengths``                (B,) long    each example's problem length (see each
                                        task), for accuracy-by-length tables
=========================  ===========  ===============================================

Examples (what ``dataset[i]`` returns) are ``dict[str, np.ndarray | int |
float]`` holding the same keys unbatched and unpadded; :func:`pad_collate`
right-pads every 1-D array to the longest in the batch with
:data:`PAD_VALUES` (the task's pad id for token ids, 0 for masks, -100 for
labels).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from scratchformer.config import Config
from scratchformer.errors import ConfigError, DataError, unknown_name

if TYPE_CHECKING:
    from scratchformer.tokenizers.base import Tokenizer

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value where no loss is taken (``torch.nn.functional.cross_entropy``'s default)."""

TaskKind = Literal["lm", "seq2seq", "classification", "regression"]
TASK_KINDS: tuple[str, ...] = ("lm", "seq2seq", "classification", "regression")

Batch = dict[str, torch.Tensor]
"""A collated batch: standard keys in the module docstring."""

Example = dict[str, Any]
"""One unbatched example: 1-D ``np.ndarray`` token rows and scalar ints/floats."""

TOKEN_ID_KEYS: tuple[str, ...] = ("input_ids", "encoder_input_ids")
"""Keys padded with the tokenizer's pad id."""

PAD_VALUES: dict[str, int] = {
    "attention_mask": 0,
    "encoder_attention_mask": 0,
    "labels": IGNORE_INDEX,
    "position_ids": 0,
}
"""Padding value of each non-token-id key that :func:`pad_collate` may pad."""


# ---------------------------------------------------------------------- configs
@dataclass
class TaskConfig(Config):
    """Base of every task config: a seed. Subclasses add typed fields and check them.

    Fields are parsed by their declared types (see :class:`scratchformer.config.Config`);
    ``__post_init__`` of a subclass calls ``super().__post_init__()`` first, then
    raises ConfigError naming the field and the fix.
    """

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"{type(self).__name__}.seed={self.seed} must be an integer in [0, 2**63)")


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    """ConfigError unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an int >= {minimum}")


def check_fractions(name: str, fractions: Sequence[float], count: int) -> None:
    """ConfigError unless ``fractions`` has ``count`` non-negative numbers summing to 1."""
    if len(fractions) != count or any(not isinstance(f, (int, float)) or f < 0 for f in fractions):
        raise ConfigError(f"{name}={tuple(fractions)!r} must be {count} non-negative numbers")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"{name}={tuple(fractions)!r} sums to {sum(fractions):g}; the fractions must sum to 1")


def check_split_fractions(fractions: Sequence[float], name: str = "split_fractions") -> tuple[float, float, float]:
    """``fractions`` as a (train, val, test) tuple of floats, checked.

    Raises:
        ConfigError: not three non-negative numbers summing to 1 (see
            :func:`check_fractions`), or nothing for the train split.
    """
    checked = tuple(float(f) for f in fractions)
    check_fractions(name, checked, 3)
    if checked[0] == 0:
        raise ConfigError(f"{name} gives the train split nothing; its first entry must be > 0")
    return checked  # type: ignore[return-value]


# ---------------------------------------------------------------------- datasets
class ExampleDataset(Dataset):
    """A split stored as aligned numpy arrays; ``ds[i]`` is one :data:`Example`.

    Args:
        columns: name -> array with first dimension N. 2-D token arrays are
            stored right-padded; ``row_lengths`` says how many leading entries
            of row ``i`` are real.
        row_lengths: (N,) number of real entries of each 2-D column's row (all
            2-D columns share it), or None when rows are not padded.
        extra_row_lengths: per-column overrides of ``row_lengths`` (e.g. the
            seq2seq encoder input and target have different lengths).
    """

    def __init__(
        self,
        columns: Mapping[str, np.ndarray],
        row_lengths: np.ndarray | None = None,
        extra_row_lengths: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        sizes = {name: len(col) for name, col in columns.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"ExampleDataset columns have different lengths: {sizes}")
        self.columns = dict(columns)
        self.row_lengths = row_lengths
        self.extra_row_lengths = dict(extra_row_lengths or {})
        self._n = next(iter(sizes.values()), 0)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> Example:
        if not -self._n <= index < self._n:
            raise IndexError(f"index {index} out of range for a dataset of {self._n} examples")
        example: Example = {}
        for name, col in self.columns.items():
            value = col[index]
            if col.ndim == 2:
                lengths = self.extra_row_lengths.get(name, self.row_lengths)
                if lengths is not None:
                    value = value[: int(lengths[index])]
                example[name] = value
            else:
                example[name] = value.item()
        return example


def pad_collate(examples: Sequence[Example], pad_token_id: int | None) -> Batch:
    """Stack examples into a :data:`Batch`, right-padding 1-D arrays to the longest.

    Token-id keys (:data:`TOKEN_ID_KEYS`) are padded with ``pad_token_id``,
    the keys in :data:`PAD_VALUES` with their value. Integer data becomes
    ``torch.long``, floating data ``torch.float32``.

    Raises:
        DataError: an empty list, examples with different keys, or padding
            needed for a key with no padding value.
    """
    if not examples:
        raise DataError("cannot collate an empty list of examples")
    keys = list(examples[0])
    batch: Batch = {}
    for key in keys:
        values = []
        for i, ex in enumerate(examples):
            if key not in ex:
                raise DataError(f"example {i} has no {key!r} (keys {sorted(ex)}); examples in a batch must agree")
            values.append(ex[key])
        first = values[0]
        if isinstance(first, np.ndarray) and first.ndim >= 1:
            longest = max(len(v) for v in values)
            if any(len(v) != longest for v in values):
                pad = pad_token_id if key in TOKEN_ID_KEYS else PAD_VALUES.get(key)
                if pad is None:
                    raise DataError(f"examples differ in length for {key!r} but it has no padding value")
                stacked = np.full((len(values), longest, *first.shape[1:]), pad, dtype=first.dtype)
                for b, v in enumerate(values):
                    stacked[b, : len(v)] = v
            else:
                stacked = np.stack(values)
        else:
            stacked = np.asarray(values)
        tensor = torch.from_numpy(np.ascontiguousarray(stacked))
        batch[key] = tensor.float() if tensor.is_floating_point() else tensor.long()
    return batch


# ---------------------------------------------------------------------- the Task interface
@dataclass(frozen=True)
class ShownAnswer:
    """A generated answer as a person should read it (what :meth:`Task.present_answer` returns).

    Attributes:
        text: the answer in ordinary writing (e.g. most-significant digit first).
        written: the answer as the model wrote it.
        how_written: how the model's writing differs from ordinary writing,
            e.g. ``"reversed, least-significant digit first"``; ``""`` when it does not.
        shown_as: what was done to ``written`` to give ``text``, e.g. ``"un-reversed"``.
    """

    text: str
    written: str
    how_written: str = ""
    shown_as: str = ""

    @property
    def changed(self) -> bool:
        """Whether ``text`` is a rewriting of what the model wrote."""
        return bool(self.how_written)


@dataclass(frozen=True)
class Prompt:
    """A generation problem for exact-match evaluation.

    Attributes:
        text: the prompt as text (GPT: ``"<BOS>12+34="``; seq2seq: the source).
        ids: the prompt's token ids (GPT: up to and including ``=``).
        answer: the exact expected continuation (without EOS).
        length: the problem length, as in the batch's ``lengths``.
        position_ids: for tasks that place tokens by id (place-value formats): the
            ids of the prompt's tokens, then of the answer's and EOS; None: in order.
    """

    text: str
    ids: tuple[int, ...]
    answer: str
    length: int
    position_ids: tuple[int, ...] | None = None


class Task(abc.ABC):
    """A named data source: splits of examples, a collate function, a tokenizer.

    Subclasses set the class attributes ``name``, ``kind`` and
    ``config_class``, build their splits in ``__init__`` (deterministically
    from ``config.seed``) and implement :meth:`dataset` and
    :meth:`split_names` (or derive from :class:`PrebuiltSplitsTask`, which
    implements both over a dict of built splits). :meth:`collate` and
    :meth:`dataloader` are shared.
    """

    name: ClassVar[str]
    kind: ClassVar[TaskKind]
    config_class: ClassVar[type[TaskConfig]]

    def __init__(self, config: TaskConfig) -> None:
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.tokenizer: Tokenizer | None = None

    # -------------------------------------------------------------- splits
    @property
    @abc.abstractmethod
    def split_names(self) -> tuple[str, ...]:
        """The splits this task has, training split first."""

    @abc.abstractmethod
    def dataset(self, split: str) -> Dataset:
        """The torch Dataset of ``split``; ConfigError with did-you-mean for an unknown split."""

    @property
    def splits(self) -> dict[str, Dataset]:
        """Every split's dataset by name."""
        return {name: self.dataset(name) for name in self.split_names}

    def check_split(self, split: str) -> None:
        """ConfigError unless ``split`` is one of :attr:`split_names`."""
        if split not in self.split_names:
            raise unknown_name(f"split of task {self.name!r}", split, self.split_names)

    def example_lengths(self, split: str) -> np.ndarray:
        """(N,) problem length of each example of ``split`` (what ``lengths`` holds in a batch)."""
        ds = self.dataset(split)
        if isinstance(ds, ExampleDataset) and "lengths" in ds.columns:
            return np.asarray(ds.columns["lengths"], dtype=np.int64)
        return np.asarray([ds[i]["lengths"] for i in range(len(ds))], dtype=np.int64)

    def texts(self, split: str) -> list[str]:
        """Each example of ``split`` as one string, for contamination checks."""
        raise NotImplementedError(f"task {self.name!r} does not expose example texts")

    # -------------------------------------------------------------- batching
    @property
    def pad_token_id(self) -> int | None:
        """The id collate pads token rows with (the tokenizer's pad id)."""
        return None if self.tokenizer is None else self.tokenizer.pad_token_id

    def collate(self, examples: Sequence[Example]) -> Batch:
        """Stack a list of examples into a :data:`Batch` (see the module docstring)."""
        return pad_collate(examples, self.pad_token_id)

    def dataloader(
        self,
        split: str,
        batch_size: int,
        shuffle: bool | None = None,
        seed: int | None = None,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> DataLoader:
        """A DataLoader over ``split`` with this task's collate.

        Args:
            shuffle: default True for the first (training) split, else False.
            seed: seeds the shuffling generator (default: the task's seed).
        """
        check_positive_int("batch_size", batch_size)
        if shuffle is None:
            shuffle = split == self.split_names[0]
        generator = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            collate_fn=self.collate,
            generator=generator,
            **kwargs,
        )

    # -------------------------------------------------------------- prompts and answers, for people
    def format_prompt(self, text: str) -> str:
        """``text``, typed by a person, written the way this task writes its prompts.

        ``generate`` and the experiments call it before encoding a prompt, so
        a user types ordinary text (e.g. ``12+5=``) whatever the task's format
        (zero-padded, reversed, hinted operands). The default leaves it as is.
        """
        return text

    def present_answer(self, prompt: str, answer: str) -> ShownAnswer:
        """The model's ``answer`` to ``prompt`` (a formatted prompt) as a person should read it.

        The default shows the answer as written; a task whose answers are
        written in a training format (e.g. reversed digits) turns them back.
        """
        return ShownAnswer(text=answer, written=answer)

    @classmethod
    def for_prompts(cls, config: TaskConfig, tokenizer: Tokenizer | None) -> Task:
        """This task without its splits: enough for :meth:`format_prompt` and :meth:`present_answer`.

        What ``generate`` needs from a saved run, whose training data may be
        gone or slow to rebuild; the tokenizer is the run's. The splits are
        not built, so :meth:`dataset` raises on it.
        """
        task = cls.__new__(cls)
        Task.__init__(task, config)
        task.tokenizer = tokenizer
        return task

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: name, kind, config, split sizes, vocabulary size."""
        return {
            "name": self.name,
            "kind": self.kind,
            "config": self.config.to_dict(),
            "split_sizes": {s: len(self.dataset(s)) for s in self.split_names},
            "vocab_size": None if self.tokenizer is None else self.tokenizer.vocab_size,
        }


class PrebuiltSplitsTask(Task):
    """A Task that builds every split up front into ``self._datasets`` (split name -> Dataset).

    :attr:`split_names` are the keys of ``_datasets`` in insertion order (so
    build the training split first; a subclass may override it, e.g. to fix
    the order); :meth:`dataset` checks the name and looks the split up.
    """

    _datasets: dict[str, Dataset]

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(getattr(self, "_datasets", None) or ())

    def dataset(self, split: str) -> Dataset:
        if getattr(self, "_datasets", None) is None:
            raise DataError(f"task {self.name!r} was made without its splits (Task.for_prompts); build it with build_task")
        self.check_split(split)
        return self._datasets[split]


class GenerativeTask(Task):
    """A task whose answers can be generated and checked exactly (arithmetic).

    Adds :meth:`prompts` (problems for generation-based exact match) and
    :meth:`check_answer` (a verifier that recomputes the answer from the prompt
    itself, so best-of-n and exact match never trust stored labels).
    """

    @abc.abstractmethod
    def prompts(self, split: str) -> list[Prompt]:
        """Every example of ``split`` as a :class:`Prompt`."""

    @abc.abstractmethod
    def check_answer(self, prompt: str | Sequence[int], generated_text: str) -> bool:
        """True iff ``generated_text`` (what followed the prompt) is exactly the right answer."""


# ---------------------------------------------------------------------- registry
TASKS: dict[str, type[Task]] = {}
"""Task classes by name; filled by :func:`register_task` when ``scratchformer.tasks`` is imported."""


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator adding a Task subclass to :data:`TASKS` under ``name``."""

    def add(cls: type[Task]) -> type[Task]:
        if name in TASKS and TASKS[name] is not cls:
            raise ConfigError(f"task name {name!r} is already registered to {TASKS[name].__name__}")
        if cls.kind not in TASK_KINDS:
            raise ConfigError(f"task {name!r} has kind {cls.kind!r}, not one of {list(TASK_KINDS)}")
        cls.name = name
        TASKS[name] = cls
        return cls

    return add


def task_for_prompts(options: Mapping[str, Any], tokenizer: Tokenizer | None) -> Task:
    """The task a run's saved ``task`` options name (``name`` plus config fields), without its splits.

    See :meth:`Task.for_prompts`. Raises ConfigError for an unknown task or option.
    """
    options = dict(options)
    name = options.pop("name", None)
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    cls = TASKS[name]
    return cls.for_prompts(cls.config_class.from_dict(options, where="task"), tokenizer)


def build_task(name: str, config: TaskConfig | None = None, **options: Any) -> Task:
    """Build the task registered as ``name`` from a config or from keyword options.

    Args:
        name: a key of :data:`TASKS`.
        config: a ready config (then ``options`` must be empty).
        **options: fields of the task's config dataclass.

    Raises:
        ConfigError: unknown task name or option (with a did-you-mean), or an
            invalid option value.
    """
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    cls = TASKS[name]
    if config is not None and options:
        raise ConfigError(f"pass either config or options to build_task({name!r}), not both")
    if config is None:
        config = cls.config_class.from_dict(options, where="task")
    return cls(config)
