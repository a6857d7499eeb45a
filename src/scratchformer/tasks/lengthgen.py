"""Addition for length generalisation: train on short operands, test on long ones.

Operands are Python ints of any length (up to ``max_digits``), so problems of
50 or 60 digits are exact. What varies between methods is the *format*: how
a problem ``a + b`` becomes tokens, and which position id each token gets.
Formats are a registry (:data:`FORMATS`); each one converts both ways, so the
user types ``123+456=`` and reads ``579`` whatever the model writes.

========  ==========================  =======================  ==============================
format    prompt (a=123, b=45)        answer the model writes  position ids
========  ==========================  =======================  ==============================
plain     ``123+45=``                 ``168``                  sequential (the model's own)
reversed  ``123+45=``                 ``861`` (least sig first) sequential
coupled   ``123+045=``                ``8610``                 by place value (coupling)
abacus    ``321+54=``                 ``861``                  by place value (Abacus)
hints     ``c1b2a3+b4a5=``            ``a8b6c1``               sequential; letters mark places
========  ==========================  =======================  ==============================

Place-value ids (coupled, abacus): a digit of significance i (10^i) in an
operand has id i + 1; the token *after which* the answer digit of
significance i is predicted (``=`` for i = 0, else the answer digit i - 1)
has id i + 1 too, so the query that writes a digit carries the same id as
the operand digits it needs. ``+``, BOS and EOS have id 0. The ``place``
positional encoding (nn/positional.py) shifts every non-zero id by a random
offset per training row, so ids of long test problems were trained.

Index hints (hints): each digit is preceded by a letter naming its place
(``HINTS[offset + i]``); in training the offset is drawn per example, so
every letter a test problem uses was seen. The model writes hint and digit
pairs; the conversion back drops the letters.

N examples, T token length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scratchformer.errors import ConfigError, DataError, unknown_name
from scratchformer.tasks.arithmetic import parse_lengths
from scratchformer.tasks.base import (
    IGNORE_INDEX,
    ExampleDataset,
    GenerativeTask,
    PrebuiltSplitsTask,
    Prompt,
    ShownAnswer,
    TaskConfig,
    check_positive_int,
    register_task,
)
from scratchformer.tokenizers.char import CharTokenizer

HINTS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZαβγδεζηθικλμνξοπρστυφχψω"
"""Index-hint letters in place order: 76 places, enough for 60-digit operands at any offset up to 14."""

VOCAB = "0123456789+=" + HINTS
"""Every character a format writes (the char tokenizer's vocabulary, in id order after the specials)."""

BOS, EOS = "<bos>", "<eos>"


@dataclass(frozen=True)
class Encoded:
    """One problem in a format.

    Attributes:
        tokens: BOS, the prompt up to and including ``=``, the answer, EOS.
        position_ids: one id per token (place-value formats), or None.
        prompt_length: tokens up to and including ``=``.
    """

    tokens: tuple[str, ...]
    position_ids: tuple[int, ...] | None
    prompt_length: int

    @property
    def answer(self) -> str:
        """The answer the model is trained to write (without EOS)."""
        return "".join(self.tokens[self.prompt_length : -1])


@dataclass(frozen=True)
class AdditionFormat:
    """How ``a+b`` is written for the model, and how its answer is read back.

    Attributes:
        name: the registry key.
        reverse_operands: write operands least-significant digit first.
        reverse_answer: the model writes the sum least-significant digit first.
        place_ids: give tokens place-value position ids (see the module docstring).
        hints: put an index-hint letter before every digit.
        pad: zero-pad the shorter operand to the longer one's length and the
            sum to one digit more (Cho et al.'s position coupling format), so
            every place has two operand digits and the answer's length is known.
    """

    name: str
    reverse_operands: bool = False
    reverse_answer: bool = False
    place_ids: bool = False
    hints: bool = False
    pad: bool = False

    def written_operands(self, a: str, b: str) -> tuple[str, str]:
        """The operands as this format writes them (zero-padded to equal length when ``pad``)."""
        if not self.pad:
            return a, b
        width = max(len(a), len(b))
        return a.zfill(width), b.zfill(width)

    # ------------------------------------------------------------------ writing
    def _number(self, digits: str, offset: int) -> list[str]:
        """An operand's tokens: digits most significant first unless reversed, hinted if asked."""
        return self._written(digits, self.reverse_operands, offset)

    def _answer(self, total: str, offset: int) -> list[str]:
        return self._written(total, self.reverse_answer, offset)

    def _written(self, digits: str, reverse: bool, offset: int) -> list[str]:
        """``digits`` (most significant first) as tokens: reversed if asked, each after its place's hint."""
        pairs = list(zip(range(len(digits) - 1, -1, -1), digits))  # (significance, digit), MSD first
        if reverse:
            pairs.reverse()
        out: list[str] = []
        for place, d in pairs:
            if self.hints:
                out.append(HINTS[offset + place])
            out.append(d)
        return out

    def encode(self, a: str, b: str, hint_offset: int = 0) -> Encoded:
        """The tokens (and position ids) of ``a+b=`` and its answer. ``a``, ``b``: ordinary decimal strings."""
        if self.hints and hint_offset + max(len(a), len(b)) + 1 > len(HINTS):
            raise DataError(
                f"index hints cover {len(HINTS)} places; {len(a)}- and {len(b)}-digit operands at hint offset "
                f"{hint_offset} need {hint_offset + max(len(a), len(b)) + 1}"
            )
        total = str(int(a) + int(b))
        a, b = self.written_operands(a, b)
        if self.pad:
            total = total.zfill(len(a) + 1)
        prompt = [BOS, *self._number(a, hint_offset), "+", *self._number(b, hint_offset), "="]
        tokens = (*prompt, *self._answer(total, hint_offset), EOS)
        ids = self.place_value_ids(a, b, len(total)) if self.place_ids else None
        return Encoded(tokens=tokens, position_ids=ids, prompt_length=len(prompt))

    def place_value_ids(self, a: str, b: str, answer_digits: int) -> tuple[int, ...]:
        """Position ids of BOS, a, ``+``, b, ``=``, the answer and EOS (see the module docstring)."""
        answer = [self.answer_position_id(k) for k in range(answer_digits)]
        return (*self.prompt_position_ids(a, b), *answer, 0)

    def prompt_position_ids(self, a: str, b: str) -> tuple[int, ...]:
        """Place-value ids of BOS, a, ``+``, b and ``=`` (``=`` predicts place 0, so it has id 1)."""
        a, b = self.written_operands(a, b)
        if not self.reverse_answer:
            raise ConfigError(f"format {self.name!r}: place-value ids need the answer written least significant first")

        def operand(n: int) -> list[int]:
            ids = list(range(n, 0, -1))  # MSD first: significance n-1 .. 0, id = significance + 1
            return ids[::-1] if self.reverse_operands else ids

        return (0, *operand(len(a)), 0, *operand(len(b)), 1)

    @staticmethod
    def answer_position_id(k: int) -> int:
        """Id of the k-th answer token (place k, least significant first): it predicts place k + 1."""
        return k + 2

    # ------------------------------------------------------------------ reading
    def read_prompt(self, text: str) -> tuple[str, str]:
        """The ordinary operands of a prompt in this format (``<bos>`` optional, ``=`` at the end)."""
        body = text.removeprefix(BOS)
        left, plus, right = body.partition("+")
        if not plus or not right.endswith("="):
            raise DataError(f"{text!r} is not an addition prompt in format {self.name!r} (like '12+34=')")
        return self._read_number(left, text), self._read_number(right[:-1], text)

    def _read_number(self, written: str, text: str) -> str:
        digits = "".join(c for c in written if not (self.hints and c in HINTS))
        if not digits.isdigit() or (self.hints and len(digits) * 2 != len(written)):
            raise DataError(f"{text!r} is not an addition prompt in format {self.name!r}")
        digits = digits[::-1] if self.reverse_operands else digits
        return str(int(digits)) if self.pad else digits

    def read_answer(self, written: str) -> str | None:
        """The ordinary decimal sum from the answer the model wrote (EOS and after dropped), or None if malformed."""
        written = written.split(EOS, 1)[0]
        if self.hints:
            if len(written) % 2 or any(c not in HINTS for c in written[0::2]):
                return None
            written = written[1::2]
        if not written.isdigit():
            return None
        digits = written[::-1] if self.reverse_answer else written
        return str(int(digits))


FORMATS: dict[str, AdditionFormat] = {
    f.name: f
    for f in (
        AdditionFormat("plain"),
        AdditionFormat("reversed", reverse_answer=True),
        AdditionFormat("coupled", reverse_answer=True, place_ids=True, pad=True),
        AdditionFormat("abacus", reverse_operands=True, reverse_answer=True, place_ids=True),
        AdditionFormat("hints", reverse_answer=True, hints=True),
    )
}
"""Formats by name; adding one is one line."""


def get_format(name: str) -> AdditionFormat:
    if name not in FORMATS:
        raise unknown_name("addition format", name, FORMATS)
    return FORMATS[name]


def parse_user_problem(text: str) -> tuple[str, str]:
    """``"12+34="`` (ordinary numbers; spaces and a missing ``=`` allowed) -> ("12", "34")."""
    body = text.replace(" ", "").removesuffix("=")
    left, plus, right = body.partition("+")
    if not plus or not left.isdigit() or not right.isdigit():
        raise DataError(f"{text!r} is not an addition like '123+456=' (two ordinary non-negative numbers)")
    return str(int(left)), str(int(right))


def context_length(fmt: AdditionFormat, digits: int) -> int:
    """Tokens of a problem with two ``digits``-digit operands: BOS a + b = answer (digits + 1) EOS."""
    per_digit = 2 if fmt.hints else 1
    return per_digit * (3 * digits + 1) + 4  # also with padding: both operands have ``digits`` digits


# ---------------------------------------------------------------------- sampling
def random_operands(rng: np.random.Generator, lengths: np.ndarray) -> list[str]:
    """One random number per entry of ``lengths`` with exactly that many digits (no leading zero; 1 digit may be 0)."""
    width = int(lengths.max())
    digits = rng.integers(0, 10, size=(len(lengths), width))  # (N, width)
    digits[:, 0] = np.where(lengths > 1, rng.integers(1, 10, size=len(lengths)), digits[:, 0])
    chars = (digits + ord("0")).astype(np.uint8)
    rows = chars.view(f"S{width}").ravel()
    return [r.decode("ascii")[:n] for r, n in zip(rows, lengths.tolist())]


@dataclass
class AdditionLengthgenConfig(TaskConfig):
    """Addition trained on short operands, tested on long ones (the length-generalisation experiment).

    Attributes:
        format: a name in :data:`FORMATS`.
        train_digits: operand lengths in training; each operand's length is
            drawn independently and uniformly from them (``"1..10"``).
        train_examples: distinct training problems.
        val_digits: operand lengths of the validation split (both operands
            that long), just past training: chooses the checkpoint and the
            attention temperature.
        val_examples_per_length, test_examples_per_length: problems per length.
        test_digits: operand lengths of the test split (both operands that long).
        in_dist_examples: held-out problems drawn like the training ones (the
            ``in_dist`` split); 0 leaves the split out.
        max_digits: the longest operand the context must hold (also for
            ``scratchformer generate``); sets the model's max_len.
        hint_offset_max: index hints only: the largest random hint offset in
            training (None: as large as the hint alphabet allows).
        exclude_train_from_eval: no evaluation problem is a training problem.
        max_length: the model's context (None: what two ``max_digits``
            operands need in this format).
    """

    format: str = "coupled"
    train_digits: Any = "1..10"
    train_examples: int = 100_000
    val_digits: Any = 12
    val_examples_per_length: int = 500
    test_digits: Any = (5, 10, 15, 20, 30, 40, 50)
    test_examples_per_length: int = 500
    in_dist_examples: int = 1000
    max_digits: int = 60
    hint_offset_max: int | None = None
    exclude_train_from_eval: bool = True
    max_length: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        get_format(self.format)
        for name in ("train_digits", "val_digits", "test_digits"):
            setattr(self, name, parse_lengths(name, getattr(self, name)))
            if min(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} holds a length < 1; operands have at least one digit")
        check_positive_int("train_examples", self.train_examples)
        check_positive_int("val_examples_per_length", self.val_examples_per_length)
        check_positive_int("test_examples_per_length", self.test_examples_per_length)
        check_positive_int("in_dist_examples", self.in_dist_examples, minimum=0)
        check_positive_int("max_digits", self.max_digits)
        longest = max(self.train_digits + self.val_digits + self.test_digits)
        if longest > self.max_digits:
            raise ConfigError(f"max_digits={self.max_digits} is shorter than the longest operand used ({longest}); raise it")
        needed = context_length(get_format(self.format), self.max_digits)
        if self.max_length is None:
            self.max_length = needed
        if self.max_length < needed:
            raise ConfigError(f"max_length={self.max_length} cannot hold two {self.max_digits}-digit operands in format "
                              f"{self.format!r} ({needed} tokens); raise it or lower max_digits")
        if self.format == "hints":
            room = len(HINTS) - (self.max_digits + 1)
            if room < 0:
                raise ConfigError(f"index hints cover {len(HINTS)} places; use max_digits <= {len(HINTS) - 1}")
            most = len(HINTS) - (max(self.train_digits) + 1)
            if self.hint_offset_max is None:
                self.hint_offset_max = most
            if not 0 <= self.hint_offset_max <= most:
                raise ConfigError(f"hint_offset_max={self.hint_offset_max} must be in 0..{most} for train_digits up to "
                                  f"{max(self.train_digits)}")


SPLITS = ("train", "val", "test", "in_dist")


@register_task("addition_lengthgen")
class AdditionLengthgenTask(PrebuiltSplitsTask, GenerativeTask):
    """GPT addition in one of the :data:`FORMATS`; see :class:`AdditionLengthgenConfig`.

    Batch: ``input_ids``, ``attention_mask``, ``labels`` (the answer tokens and
    EOS; -100 on the prompt), ``position_ids`` (place-value formats only) and
    ``lengths``: the longer operand's digit count.
    """

    kind = "lm"
    config_class = AdditionLengthgenConfig

    def __init__(self, config: AdditionLengthgenConfig) -> None:
        super().__init__(config)
        self.config: AdditionLengthgenConfig = config
        self.tokenizer = CharTokenizer(VOCAB, unknown="error")
        self._problems = self._build_problems()
        self._datasets = {split: self._make_dataset(split, *p) for split, p in self._problems.items()}

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if s in self._problems)

    @property
    def format(self) -> AdditionFormat:
        return get_format(self.config.format)

    # ------------------------------------------------------------------ problems
    def _build_problems(self) -> dict[str, tuple[list[tuple[str, str]], np.ndarray]]:
        """Split -> (problems as (a, b) strings, lengths (N,) = the longer operand's digits)."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        def draw(n: int, choices: Sequence[int], paired: bool, avoid: set) -> tuple[list[tuple[str, str]], np.ndarray]:
            mine: set[tuple[str, str]] = set()
            out: list[tuple[str, str]] = []
            for _ in range(64):
                m = int((n - len(out)) * 1.1) + 16
                la = rng.choice(np.asarray(choices), size=m)
                lb = la if paired else rng.choice(np.asarray(choices), size=m)
                for p in zip(random_operands(rng, la), random_operands(rng, lb)):
                    if p in mine or p in avoid:
                        continue
                    mine.add(p)
                    out.append(p)
                    if len(out) == n:
                        return out, np.array([max(len(a), len(b)) for a, b in out], dtype=np.int64)
            raise DataError(f"addition_lengthgen: could not draw {n} distinct problems of {list(choices)} digits; ask for fewer")

        train = draw(cfg.train_examples, cfg.train_digits, False, set())
        out = {"train": train}
        avoid = set(train[0]) if cfg.exclude_train_from_eval else set()
        val = [draw(cfg.val_examples_per_length, [n], True, avoid) for n in cfg.val_digits]
        test = [draw(cfg.test_examples_per_length, [n], True, avoid) for n in cfg.test_digits]
        for name, parts in (("val", val), ("test", test)):
            out[name] = ([p for ps, _ in parts for p in ps], np.concatenate([lens for _, lens in parts]))
        if cfg.in_dist_examples:
            out["in_dist"] = draw(cfg.in_dist_examples, cfg.train_digits, False, avoid)
        return out

    def _hint_offsets(self, split: str, n: int) -> np.ndarray:
        """(N,) index-hint offsets: random per training example, 0 elsewhere."""
        if split != "train" or not self.format.hints:
            return np.zeros(n, dtype=np.int64)
        rng = np.random.default_rng([self.config.seed, 1])
        return rng.integers(0, self.config.hint_offset_max + 1, size=n)

    def encode(self, a: str, b: str, hint_offset: int = 0) -> tuple[Encoded, list[int]]:
        """A problem in this task's format and its token ids."""
        enc = self.format.encode(a, b, hint_offset)
        return enc, [self.tokenizer.token_to_id(t) for t in enc.tokens]

    def _make_dataset(self, split: str, problems: list[tuple[str, str]], lengths: np.ndarray) -> ExampleDataset:
        encoded = [self.encode(a, b, int(k)) for (a, b), k in zip(problems, self._hint_offsets(split, len(problems)))]
        T = max(len(ids) for _, ids in encoded)
        N = len(encoded)
        input_ids = np.full((N, T), self.tokenizer.pad_token_id, dtype=np.int64)  # (N, T)
        labels = np.full((N, T), IGNORE_INDEX, dtype=np.int64)  # (N, T)
        mask = np.zeros((N, T), dtype=np.int64)
        position_ids = np.zeros((N, T), dtype=np.int64)
        row_lengths = np.zeros(N, dtype=np.int64)
        for i, (enc, ids) in enumerate(encoded):
            t = len(ids)
            input_ids[i, :t] = ids
            labels[i, enc.prompt_length : t] = ids[enc.prompt_length :]
            mask[i, :t] = 1
            if enc.position_ids is not None:
                position_ids[i, :t] = enc.position_ids
            row_lengths[i] = t
        columns = {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "lengths": lengths}
        if self.format.place_ids:
            columns["position_ids"] = position_ids
        return ExampleDataset(columns, row_lengths=row_lengths)

    # ------------------------------------------------------------------ generation
    def operands(self, split: str) -> list[tuple[str, str]]:
        """The ordinary (a, b) of every example of ``split``."""
        self.check_split(split)
        return list(self._problems[split][0])

    def texts(self, split: str) -> list[str]:
        self.check_split(split)
        return ["".join(self.encode(a, b)[0].tokens) for a, b in self._problems[split][0]]

    def prompts(self, split: str) -> list[Prompt]:
        """``<bos>`` + the prompt in this format, the answer the model should write (offset-0 hints)."""
        self.check_split(split)
        problems, lengths = self._problems[split]
        out = []
        for (a, b), n in zip(problems, lengths.tolist()):
            enc, ids = self.encode(a, b)
            out.append(Prompt(text="".join(enc.tokens[: enc.prompt_length]), ids=tuple(ids[: enc.prompt_length]),
                              answer=enc.answer, length=int(n), position_ids=enc.position_ids))
        return out

    def format_prompt(self, text: str) -> str:
        """``"123+45="`` (ordinary numbers) written in this task's format, e.g. ``"321+54="`` for abacus."""
        a, b = parse_user_problem(text)
        enc = self.format.encode(a, b)
        return "".join(enc.tokens[1 : enc.prompt_length])

    def present_answer(self, prompt: str, answer: str) -> ShownAnswer:
        """The model's answer in this format read back as an ordinary number (``?`` if unreadable)."""
        plain = self.format.read_answer(answer)
        shown = "?" if plain is None else plain
        how = {"plain": "", "reversed": "reversed, least-significant digit first"}.get(
            self.format.name, f"in the {self.format.name!r} format")
        return ShownAnswer(text=shown, written=answer, how_written=how, shown_as="read back as an ordinary number")

    def answer_user_problem(self, model: Any, text: str) -> dict[str, str]:
        """``scratchformer generate`` on a run of this task: greedy decoding that gives place-value
        formats their position ids; see :func:`greedy_answer`."""
        return greedy_answer(model, self.config.to_dict(), self.tokenizer, text)

    def check_answer(self, prompt: str | Sequence[int], generated_text: str) -> bool:
        """True iff the text generated after ``prompt`` (this format) reads back as the true sum."""
        text = prompt if isinstance(prompt, str) else self.tokenizer.decode(list(prompt))
        a, b = self.format.read_prompt(text)
        return self.format.read_answer(generated_text.replace("<pad>", "")) == str(int(a) + int(b))


# ---------------------------------------------------------------------- answering a user's problem
def greedy_answer(model: Any, task_config: dict[str, Any], tokenizer: Any, text: str) -> dict[str, str]:
    """Solve ``"123+456="`` (ordinary numbers) with a model trained on ``addition_lengthgen``.

    The problem is written in the run's format (reversed, padded, place ids,
    hints), decoded greedily token by token with the whole sequence each step
    (place-value formats give each new token its id), and the model's answer
    read back as an ordinary number.

    Returns:
        {"prompt": the model's prompt, "raw": what the model wrote,
         "answer": the sum it means (or "?" when unreadable)}.
    Raises:
        ValueError: the problem does not fit the model's context.
    """
    import torch

    fmt = get_format(task_config.get("format", "coupled"))
    a, b = parse_user_problem(text)
    enc = fmt.encode(a, b)
    prompt = list(enc.tokens[: enc.prompt_length])
    ids = [tokenizer.token_to_id(t) for t in prompt]
    place = list(fmt.prompt_position_ids(a, b)) if fmt.place_ids else None
    limit = getattr(getattr(model, "config", None), "max_len", None)
    needed = context_length(fmt, max(len(a), len(b)))
    if limit is not None and needed > limit:
        raise ValueError(f"{len(a)}- and {len(b)}-digit operands need {needed} tokens; this model holds {limit}")
    eos = tokenizer.token_to_id(EOS)
    longest_answer = (2 if fmt.hints else 1) * (max(len(a), len(b)) + 1)
    written: list[int] = []
    with torch.no_grad():
        while len(written) <= longest_answer:
            positions = None
            if place is not None:
                positions = torch.tensor([place + [fmt.answer_position_id(j) for j in range(len(written))]])
            logits = model(torch.tensor([ids + written]), None, positions)  # (1, T, V)
            token = int(logits[0, -1].argmax())
            if token == eos:
                break
            written.append(token)
    raw = tokenizer.decode(written)
    answer = fmt.read_answer(raw)
    return {"prompt": "".join(prompt[1:]), "raw": raw, "answer": "?" if answer is None else answer}
