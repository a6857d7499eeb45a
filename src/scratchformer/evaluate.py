"""Evaluation, all of it: split metrics, metric sums, accuracy by problem length, best of n.

The trainer evaluates through this module, and so do ``scratchformer eval``
(:mod:`scratchformer.eval_report`) and the experiments.

Teacher-forced split metrics (one forward pass per batch, the training loss):

- :func:`evaluate_split` — loss and the task kind's metrics on a split;
  :func:`split_sums` gives the additive sums behind them (one shard of the
  split per process; the trainer adds them up across processes) and
  :func:`finish_metrics` turns sums into metrics;
- :func:`batch_metric_sums` — one batch's sums, from a loss's output;
  :func:`teacher_forced_exact_match` — greedy decoding's exact match from
  one teacher-forced pass;
- :data:`HIGHER_IS_BETTER`, :func:`default_best_metric` — what "best" means.

Metrics on tensors (no model needed):

- :func:`token_accuracy` — argmax == label over the positions that carry a
  label (label != -100, and != ``pad_token_id`` when given);
- :func:`token_accuracy_all_positions` — tutorial 000's ``accuracy_fn``: the
  mean of argmax == label over *every* position of the target, format
  padding included;
- :func:`exact_match`, :func:`classification_accuracy`, :func:`perplexity`.

Autoregressive evaluation (the model generates, a verifier checks):

- :func:`evaluate_by_length` — greedy (or beam) decoding of every problem of
  a split, grouped by problem length: exact match (by the task's verifier)
  and token accuracy of the generated answer, with each length marked
  in-distribution (a training length) or not;
- :func:`teacher_forced_by_length` — the same table with the true target
  as the decoder's input (tutorial 000's "non autoregressive" evaluation);
- :func:`top_at_n_accuracy` — the fraction of problems for which any of n
  samples is right.

The core functions take ``(model, task)`` (the tokenizer is the task's unless
given), so they do not depend on the trainer.

Legend: B batch, T length, V vocabulary, K classes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, DataError
from .generate import best_of_n, generate
from .losses import LossOutput, loss_for
from .tasks.base import IGNORE_INDEX, GenerativeTask, Task

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- tensor metrics
def _predictions(logits_or_ids: Tensor, labels: Tensor) -> Tensor:
    """argmax over the last dim when given logits (one more dim than labels), else the ids themselves."""
    if logits_or_ids.dim() == labels.dim() + 1:
        return logits_or_ids.argmax(dim=-1)
    if logits_or_ids.shape != labels.shape:
        raise DataError(
            f"predictions {tuple(logits_or_ids.shape)} do not match labels {tuple(labels.shape)}; pass logits "
            "(..., V) or ids of the labels' shape"
        )
    return logits_or_ids


def _shifted(logits: Tensor, labels: Tensor, shift: bool) -> tuple[Tensor, Tensor]:
    """GPT's Hugging Face convention: logits[:, t] predicts labels[:, t + 1]."""
    if not shift:
        return logits, labels
    return logits[:, :-1], labels[:, 1:]


def _labelled(labels: Tensor, ignore_index: int, pad_token_id: int | None) -> Tensor:
    """(B, T) bool: the positions that carry a label (not ``ignore_index``, not ``pad_token_id`` when given)."""
    keep = labels != ignore_index
    if pad_token_id is not None:
        keep &= labels != pad_token_id
    return keep


def token_accuracy(
    logits: Tensor,
    labels: Tensor,
    *,
    shift: bool = False,
    ignore_index: int = IGNORE_INDEX,
    pad_token_id: int | None = None,
) -> float:
    """Fraction of labelled positions where the prediction equals the label.

    Args:
        logits: (B, T, V) logits, or (B, T) predicted ids.
        labels: (B, T) targets; positions equal to ``ignore_index`` (and to
            ``pad_token_id`` when given) are not counted.
        shift: True for GPT batches with Hugging Face labels (aligned with
            the inputs): compare logits[:, :-1] with labels[:, 1:].
    Returns:
        a float in [0, 1]; NaN when no position is labelled.
    """
    logits, labels = _shifted(logits, labels, shift)
    pred = _predictions(logits, labels)
    keep = _labelled(labels, ignore_index, pad_token_id)
    n = int(keep.sum())
    return float(((pred == labels) & keep).sum()) / n if n else math.nan


def token_accuracy_all_positions(logits: Tensor, labels: Tensor, *, shift: bool = False) -> float:
    """Tutorial 000's sequence accuracy: mean of (argmax == label) over every position.

    Nothing is masked: the seq2seq adder's targets are fixed-format (sum,
    ``#``, then zeros up to the length), and the zeros count like any other
    position. A label of -100 can never match, so it counts as a miss; use
    :func:`token_accuracy` to skip such positions.
    """
    logits, labels = _shifted(logits, labels, shift)
    pred = _predictions(logits, labels)
    return float((pred == labels).float().mean()) if labels.numel() else math.nan


def exact_match(
    predictions: Tensor | Sequence[Any], references: Tensor | Sequence[Any], *, ignore_index: int = IGNORE_INDEX
) -> float:
    """Fraction of rows predicted exactly.

    Tensors: predictions (B, T) ids or (B, T, V) logits against labels (B, T);
    a row matches when every position with a label (!= ignore_index) matches.
    Rows without any label do not match. Sequences (e.g. strings): plain equality.
    """
    if isinstance(references, Tensor):
        pred = _predictions(predictions, references)
        keep = references != ignore_index
        rows_ok = ((pred == references) | ~keep).all(dim=-1) & keep.any(dim=-1)
        return float(rows_ok.float().mean()) if references.size(0) else math.nan
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions but {len(references)} references")
    return sum(p == r for p, r in zip(predictions, references)) / len(references) if references else math.nan


def classification_accuracy(logits: Tensor, labels: Tensor) -> float:
    """logits (B, K) or predicted classes (B,), labels (B,) -> fraction right."""
    pred = _predictions(logits, labels)
    return float((pred == labels).float().mean()) if labels.numel() else math.nan


def perplexity(
    logits: Tensor,
    labels: Tensor,
    *,
    shift: bool = False,
    ignore_index: int = IGNORE_INDEX,
    pad_token_id: int | None = None,
) -> float:
    """exp(mean token cross-entropy) over the labelled positions (ignore_index and pad excluded).

    logits (B, T, V), labels (B, T); ``shift`` as in :func:`token_accuracy`.
    Over several batches, sum the cross-entropies and counts first
    (:func:`cross_entropy_sum`) rather than averaging perplexities.
    """
    total, count = cross_entropy_sum(logits, labels, shift=shift, ignore_index=ignore_index, pad_token_id=pad_token_id)
    return math.exp(total / count) if count else math.nan


def cross_entropy_sum(
    logits: Tensor,
    labels: Tensor,
    *,
    shift: bool = False,
    ignore_index: int = IGNORE_INDEX,
    pad_token_id: int | None = None,
) -> tuple[float, int]:
    """(sum of token cross-entropies, number of labelled tokens), to aggregate over batches."""
    logits, labels = _shifted(logits, labels, shift)
    keep = _labelled(labels, ignore_index, pad_token_id)
    labels = labels.masked_fill(~keep, ignore_index)
    flat = logits.reshape(-1, logits.size(-1)).float()  # (B T, V)
    ce = F.cross_entropy(flat, labels.reshape(-1), ignore_index=ignore_index, reduction="sum")
    return float(ce), int(keep.sum())


# ---------------------------------------------------------------------------- split metrics (teacher-forced)
HIGHER_IS_BETTER = {"exact_match": True, "accuracy": True, "token_accuracy": True, "loss": False, "perplexity": False}
"""Direction of each metric, for choosing the best checkpoint."""


def eval_splits(task: Task) -> list[str]:
    """Every split but the training split."""
    return list(task.split_names[1:])


def default_best_metric(task: Task) -> str:
    """The metric that picks a task's best checkpoint: exact match for generative tasks, accuracy for
    classification, else the loss."""
    if isinstance(task, GenerativeTask) and task.kind in ("lm", "seq2seq"):
        return "exact_match"
    if task.kind == "classification":
        return "accuracy"
    return "loss"


def teacher_forced_exact_match(logits: Tensor, targets: Tensor) -> Tensor:
    """(B,) bool: would greedy decoding reproduce every target of the row? One forward pass suffices.

    ``logits`` (B, T, V) come from a teacher-forced pass over the whole
    sequence and ``targets`` (B, T) are aligned with them (-100 where
    nothing is predicted: prompt and padding). Greedy decoding of the row,
    started from its prompt, writes the targets exactly iff the argmax at
    *every* target position equals the target:

    - if it does, induction on the position: greedy's first token is the
      argmax after the prompt, which is the first target; so greedy's input
      at the next position equals the teacher-forced input, and with a
      causal model (a position sees only itself and earlier positions) the
      logits there are the same, so its argmax is again the target, and so on.
    - if it does not, take the first position where the argmax differs: its
      input is still identical to the teacher-forced one (all earlier
      targets matched), so greedy writes the wrong token there.

    For GPT arithmetic the targets are the answer digits and ``<EOS>``, so
    this is the exact match of greedy decoding that stops at ``<EOS>``
    (stricter than a check that ignores a missing ``<EOS>``). Caveats: exact
    ties in the argmax, and floating-point differences between a full pass
    and cached incremental decoding, could make the two disagree on a
    knife-edge row. Rows with no target count as not matched.
    """
    pred = logits.argmax(dim=-1)  # (B, T)
    scored = targets != IGNORE_INDEX
    return ((pred == targets) | ~scored).all(dim=1) & scored.any(dim=1)


def batch_metric_sums(kind: str, out: LossOutput, exact_match: bool) -> dict[str, float]:
    """Additive sums of one batch; :func:`finish_metrics` turns summed sums into metrics."""
    sums = {"loss_sum": float(out.loss_sum), "count": float(out.count)}
    if kind in ("lm", "seq2seq"):
        scored = out.targets != IGNORE_INDEX
        sums["correct"] = float(((out.logits.argmax(-1) == out.targets) & scored).sum())
        if exact_match:
            sums["exact"] = float(teacher_forced_exact_match(out.logits, out.targets).sum())
            sums["rows"] = float(scored.any(dim=1).sum())
    elif kind == "classification":
        sums["correct"] = float((out.logits.argmax(-1) == out.targets).sum())
    return sums


def finish_metrics(kind: str, sums: dict[str, float]) -> dict[str, float]:
    """Metrics from summed :func:`batch_metric_sums`: loss (mean per target), and by kind
    token_accuracy + perplexity (lm), token_accuracy (seq2seq), exact_match, accuracy."""
    count = max(sums.get("count", 0.0), 1.0)
    loss = sums["loss_sum"] / count
    out = {"loss": loss, "examples": sums.get("examples", 0.0)}
    if kind in ("lm", "seq2seq"):
        out["token_accuracy"] = sums["correct"] / count
        if kind == "lm":
            out["perplexity"] = math.exp(min(loss, 700.0))
        if "exact" in sums:
            out["exact_match"] = sums["exact"] / max(sums["rows"], 1.0)
    elif kind == "classification":
        out["accuracy"] = sums["correct"] / count
    return out


@torch.no_grad()
def split_sums(
    model: nn.Module,
    task: Task,
    split: str,
    *,
    batch_size: int = 512,
    max_examples: int = 0,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    autocast: AbstractContextManager | None = None,
) -> dict[str, float]:
    """The additive metric sums (:func:`batch_metric_sums`, plus ``examples``) of ``model`` on one
    shard of the first ``max_examples`` (0: all) examples of ``split``.

    ``shard=(rank, world_size)`` takes every ``world_size``-th example from
    ``rank``, so processes score disjoint shards whose sums add up to the
    whole split's; :func:`finish_metrics` turns the (summed) sums into metrics.
    """
    device = torch.device(device)
    ds = task.dataset(split)
    n = len(ds) if not max_examples else min(len(ds), max_examples)
    rank, world_size = shard
    mine = list(range(rank, n, world_size))
    loss_fn = loss_for(task.kind)
    exact = isinstance(task, GenerativeTask) and task.kind in ("lm", "seq2seq")
    keys = ["loss_sum", "count", "correct", "exact", "rows", "examples"] if exact else ["loss_sum", "count", "correct", "examples"]
    totals = dict.fromkeys(keys, 0.0)
    with _eval_mode(model):
        for start in range(0, len(mine), batch_size):
            idx = mine[start : start + batch_size]
            batch = {k: v.to(device, non_blocking=True) for k, v in task.collate([ds[i] for i in idx]).items()}
            with autocast or nullcontext():
                out = loss_fn(model, batch)
            for k, v in batch_metric_sums(task.kind, out, exact).items():
                totals[k] += v
            totals["examples"] += len(idx)
    return totals


def evaluate_split(
    model: nn.Module,
    task: Task,
    split: str,
    *,
    batch_size: int = 512,
    max_examples: int = 0,
    device: torch.device | str = "cpu",
    autocast: AbstractContextManager | None = None,
) -> dict[str, float]:
    """The task kind's metrics of ``model`` on the first ``max_examples`` (0: all) examples of ``split``.

    Returns loss (mean per target) and, by kind: token_accuracy, perplexity
    (lm), exact_match (generative tasks: greedy-decoding exact match from one
    teacher-forced pass, see ``teacher_forced_exact_match``), accuracy
    (classification); ``examples`` is how many were scored. (Under several
    processes the trainer adds up each one's :func:`split_sums` instead.)
    """
    sums = split_sums(model, task, split, batch_size=batch_size, max_examples=max_examples, device=device,
                      autocast=autocast)
    return finish_metrics(task.kind, sums)


# ---------------------------------------------------------------------------- by length
@dataclass
class LengthRow:
    """Accuracy of one problem length."""

    length: int
    n: int
    exact_match: float
    token_accuracy: float
    in_distribution: bool


@dataclass
class LengthTable:
    """Accuracy per problem length for one model on one split.

    ``rows`` are sorted by length. ``exact_match`` is the task verifier's
    verdict on the generated answer; ``token_accuracy`` compares the
    generated tokens position by position with the expected answer
    (classification tasks: both are the classification accuracy).
    """

    task: str
    split: str
    train_lengths: list[int]
    rows: list[LengthRow]
    decoding: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def summary(self) -> dict[str, float]:
        """Example-weighted exact match over all, in-distribution and out-of-distribution lengths."""

        def mean(rows: list[LengthRow], metric: str) -> float:
            n = sum(r.n for r in rows)
            return sum(getattr(r, metric) * r.n for r in rows) / n if n else math.nan

        ind = [r for r in self.rows if r.in_distribution]
        ood = [r for r in self.rows if not r.in_distribution]
        return {
            "exact_match": mean(self.rows, "exact_match"),
            "exact_match_in_distribution": mean(ind, "exact_match"),
            "exact_match_out_of_distribution": mean(ood, "exact_match"),
            "token_accuracy": mean(self.rows, "token_accuracy"),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""
        data = asdict(self)
        data["summary"] = {k: (None if math.isnan(v) else v) for k, v in self.summary().items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LengthTable:
        try:
            rows = [LengthRow(**r) for r in data["rows"]]
            return cls(
                task=data["task"],
                split=data["split"],
                train_lengths=list(data["train_lengths"]),
                rows=rows,
                decoding=dict(data.get("decoding", {})),
                label=data.get("label", ""),
            )
        except (KeyError, TypeError) as e:
            raise DataError(f"not an accuracy-by-length table: {e}") from None

    def to_markdown(self) -> str:
        lines = ["| length | n | exact match | token accuracy | in distribution |", "|---:|---:|---:|---:|:---:|"]
        for r in self.rows:
            lines.append(
                f"| {r.length} | {r.n} | {r.exact_match:.3f} | {r.token_accuracy:.3f} "
                f"| {'yes' if r.in_distribution else 'no'} |"
            )
        return "\n".join(lines)


def train_lengths(task: Any) -> list[int]:
    """The problem lengths the task trains on: ``config.train_lengths`` when the
    task has it, else the lengths present in its first (training) split."""
    declared = getattr(getattr(task, "config", None), "train_lengths", None)
    if declared is not None:
        return sorted(int(x) for x in declared)
    return sorted({int(x) for x in task.example_lengths(task.split_names[0])})


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in eval mode, then restore its training flag (also on error)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _pad_rows(
    rows: Sequence[Sequence[int]], pad: int, device: torch.device, side: str
) -> tuple[Tensor, Tensor]:
    """Pad id lists on ``side`` ("left" or "right") -> ids (B, T), mask (B, T) (1 on real tokens)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), T), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        start = T - len(r) if side == "left" else 0
        ids[i, start : start + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, start : start + len(r)] = 1
    return ids.to(device), mask.to(device)


def _generation_inputs(
    task: Any, tokenizer: Any, prompts: Sequence[Any], device: torch.device
) -> tuple[dict[str, Any], int]:
    """generate() inputs for a batch of prompts, and where the new tokens start in the output."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if task.kind == "seq2seq":
        src, src_mask = _pad_rows([p.ids for p in prompts], pad, device, "right")
        inputs: dict[str, Any] = {"encoder_input_ids": src}
        if not bool(src_mask.all()):
            inputs["encoder_attention_mask"] = src_mask
        # decoding starts from the model's own start token, the one it was trained with
        return inputs, 1
    ids, mask = _pad_rows([p.ids for p in prompts], pad, device, "left")
    inputs = {"input_ids": ids}
    if not bool(mask.all()):
        inputs["attention_mask"] = mask
    return inputs, ids.size(1)


def _expected_ids(task: Any, tokenizer: Any, answer: str) -> list[int]:
    """The answer's tokens as the model should write them (GPT answers end with EOS)."""
    ids = tokenizer.encode(answer)
    if task.kind == "lm" and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def _decoding_options(task: Any, tokenizer: Any, prompts: Sequence[Any], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with defaults for a batch of prompts: room for the longest expected answer,
    and for GPT tasks stopping (and padding) at the tokenizer's EOS. Given options win."""
    options = dict(options)
    options.setdefault("max_new_tokens", max(len(_expected_ids(task, tokenizer, p.answer)) for p in prompts))
    if task.kind == "lm" and tokenizer.eos_token_id is not None:
        options.setdefault("eos_token_id", tokenizer.eos_token_id)
        options.setdefault("pad_token_id", tokenizer.pad_token_id)
    return options


def generate_answers(
    model: nn.Module,
    task: Any,
    prompts: Sequence[Any],
    *,
    tokenizer: Any = None,
    batch_size: int = 256,
    **generate_options: Any,
) -> list[list[int]]:
    """Greedy (by default) answers to ``prompts`` (a task's ``Prompt`` objects): the new token ids of each.

    GPT prompts are left-padded in a batch; generation stops at the
    tokenizer's EOS (the answer length + 1 at most). Seq2seq sources are
    right-padded with an encoder mask and decoded for the answer's length.
    """
    tokenizer = tokenizer or task.tokenizer
    device = _model_device(model)
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        inputs, new_from = _generation_inputs(task, tokenizer, chunk, device)
        options = _decoding_options(task, tokenizer, chunk, generate_options)
        if task.kind != "seq2seq" and any(p.position_ids is not None for p in chunk):
            inputs["position_ids"] = _given_positions(chunk, new_from, options["max_new_tokens"]).to(device)
        seqs = generate(model, **inputs, **options)
        out.extend(row[new_from:] for row in seqs.tolist())
    return out


def _given_positions(prompts: Sequence[Any], width: int, new_tokens: int) -> Tensor:
    """(B, width + new_tokens) position ids for left-padded GPT prompts that carry their own
    (``Prompt.position_ids``): 0 on the padding, each prompt's ids, then its answer's ids (the last
    one repeated past the end of what the prompt lists, where only padding follows EOS)."""
    rows = []
    for p in prompts:
        ids = list(p.position_ids) if p.position_ids is not None else list(range(len(p.ids) + new_tokens))
        n = len(p.ids)
        answer = ids[n : n + new_tokens]
        answer += [answer[-1] if answer else ids[n - 1]] * (new_tokens - len(answer))
        rows.append([0] * (width - n) + ids[:n] + answer)
    return torch.tensor(rows, dtype=torch.long)


def _score_answer(task: Any, tokenizer: Any, prompt: Any, new_ids: list[int]) -> tuple[bool, float]:
    """(verifier verdict, token accuracy against the expected answer)."""
    expected = _expected_ids(task, tokenizer, prompt.answer)
    got = new_ids[: len(expected)]
    same = sum(a == b for a, b in zip(got, expected))
    text = tokenizer.decode(new_ids)
    return bool(task.check_answer(prompt.ids, text)), same / len(expected) if expected else math.nan


def evaluate_by_length(
    model: nn.Module,
    task: Any,
    split: str = "test",
    *,
    tokenizer: Any = None,
    batch_size: int = 256,
    max_per_length: int | None = None,
    label: str = "",
    **generate_options: Any,
) -> LengthTable:
    """Accuracy per problem length of autoregressive decoding on ``split``.

    Args:
        model: GPT for ``lm`` tasks, EncoderDecoder for ``seq2seq`` tasks
            (generative tasks with ``prompts`` and ``check_answer``), or an
            EncoderClassifier for ``classification`` tasks with ``lengths``
            (accuracy by length, no decoding).
        task: the task (its tokenizer is used unless ``tokenizer`` is given).
        max_per_length: evaluate at most this many problems of each length (first ones).
        label: the name of this model in plots (e.g. the run name).
        **generate_options: passed to :func:`generate` (default greedy;
            e.g. ``num_beams=4``).
    Returns:
        a :class:`LengthTable` (``to_dict()`` for JSON, ``plot_accuracy_by_length`` for a PNG).
    """
    task.check_split(split)
    if max_per_length is not None and max_per_length < 1:
        raise ConfigError(f"max_per_length={max_per_length} must be >= 1 or None")
    trained = train_lengths(task)
    with _eval_mode(model):
        if task.kind == "classification":
            rows = _classification_by_length(model, task, split, batch_size, max_per_length, trained)
        elif hasattr(task, "prompts") and hasattr(task, "check_answer"):
            rows = _generative_by_length(
                model, task, split, tokenizer, batch_size, max_per_length, trained, generate_options
            )
        else:
            raise ConfigError(
                f"task {task.name!r} (kind {task.kind!r}) has no per-length answers to check; evaluate_by_length "
                "needs a generative task (prompts + check_answer) or a classification task with lengths"
            )
    decoding = {k: v for k, v in generate_options.items() if isinstance(v, (int, float, str, bool, type(None)))}
    return LengthTable(task=task.name, split=split, train_lengths=trained, rows=rows, decoding=decoding, label=label)


def _generative_by_length(model, task, split, tokenizer, batch_size, max_per_length, trained, options) -> list[LengthRow]:
    tokenizer = tokenizer or task.tokenizer
    by_length: dict[int, list[Any]] = {}
    for p in task.prompts(split):
        by_length.setdefault(int(p.length), []).append(p)
    rows = []
    for length in sorted(by_length):
        prompts = by_length[length][:max_per_length] if max_per_length else by_length[length]
        answers = generate_answers(model, task, prompts, tokenizer=tokenizer, batch_size=batch_size, **options)
        verdicts = [_score_answer(task, tokenizer, p, a) for p, a in zip(prompts, answers)]
        rows.append(
            LengthRow(
                length=length,
                n=len(prompts),
                exact_match=sum(ok for ok, _ in verdicts) / len(verdicts),
                token_accuracy=float(np.mean([acc for _, acc in verdicts])),
                in_distribution=length in trained,
            )
        )
        log.info("length %d: exact match %.3f over %d problems", length, rows[-1].exact_match, len(prompts))
    return rows


def _classification_by_length(model, task, split, batch_size, max_per_length, trained) -> list[LengthRow]:
    ds = task.dataset(split)
    lengths = task.example_lengths(split)
    device = _model_device(model)
    rows = []
    for length in sorted({int(x) for x in lengths}):
        idx = np.flatnonzero(lengths == length)
        if max_per_length:
            idx = idx[:max_per_length]
        correct = 0
        for start in range(0, len(idx), batch_size):
            batch = task.collate([ds[int(i)] for i in idx[start : start + batch_size]])
            with torch.inference_mode():
                logits = model(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            correct += int((logits.argmax(-1).cpu() == batch["labels"]).sum())
        acc = correct / len(idx)
        rows.append(LengthRow(length, len(idx), acc, acc, length in trained))
    return rows


def teacher_forced_by_length(
    model: nn.Module,
    task: Any,
    split: str = "test",
    *,
    batch_size: int = 256,
    max_per_length: int | None = None,
    label: str = "",
) -> LengthTable:
    """Accuracy per problem length with the true target as the decoder's input (one forward pass).

    ``token_accuracy`` is tutorial 000's: argmax == target over every target
    position (the format's zeros after ``#`` included; positions labelled -100
    are not targets); ``exact_match``: every target position right. Compare
    with :func:`evaluate_by_length`, where the model reads its own outputs.
    """
    task.check_split(split)
    if task.kind not in ("seq2seq", "lm"):
        raise ConfigError(f"teacher_forced_by_length needs a seq2seq or lm task, got kind {task.kind!r}")
    ds = task.dataset(split)
    lengths = np.asarray(task.example_lengths(split))
    device = _model_device(model)
    loss_fn = loss_for(task.kind)
    rows = []
    with _eval_mode(model), torch.inference_mode():
        for length in sorted({int(x) for x in lengths}):
            idx = np.flatnonzero(lengths == length)[:max_per_length]
            correct = total = exact = 0
            for start in range(0, len(idx), batch_size):
                batch = task.collate([ds[int(i)] for i in idx[start : start + batch_size]])
                out = loss_fn(model, {k: v.to(device) for k, v in batch.items()})
                keep = out.targets != IGNORE_INDEX  # (B, T)
                right = (out.logits.argmax(-1) == out.targets) & keep  # (B, T)
                correct += int(right.sum())
                total += int(keep.sum())
                exact += int((right | ~keep).all(dim=-1).sum())
            rows.append(LengthRow(length, len(idx), exact / len(idx), correct / total if total else math.nan,
                                  length in train_lengths(task)))
    return LengthTable(task=task.name, split=split, train_lengths=train_lengths(task), rows=rows,
                       decoding={"teacher_forced": True}, label=label)


# ---------------------------------------------------------------------------- best of n
def top_at_n_accuracy(
    model: nn.Module,
    task: Any,
    split: str = "test",
    n: int = 8,
    *,
    tokenizer: Any = None,
    batch_size: int = 64,
    max_problems: int | None = None,
    **sampling_kwargs: Any,
) -> dict[str, Any]:
    """Fraction of problems for which at least one of ``n`` samples is correct.

    Samples come from :func:`scratchformer.generate.best_of_n` with the task's
    verifier as the scorer (``do_sample=True`` unless overridden; pass a
    ``generator`` for reproducibility). Returns ``{"n", "accuracy",
    "problems", "by_length": {length: accuracy}}``.
    """
    if not (hasattr(task, "prompts") and hasattr(task, "check_answer")):
        raise ConfigError(f"task {task.name!r} has no verifier (check_answer); top_at_n_accuracy needs one")
    tokenizer = tokenizer or task.tokenizer
    prompts = task.prompts(split)[:max_problems] if max_problems else task.prompts(split)
    device = _model_device(model)
    ok: list[bool] = []
    with _eval_mode(model):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            inputs, _ = _generation_inputs(task, tokenizer, chunk, device)
            options = _decoding_options(task, tokenizer, chunk, sampling_kwargs)
            ids = inputs.pop("input_ids", None)

            def verifier(prompt_ids: list[int], new_ids: list[int]) -> float:
                return float(task.check_answer(prompt_ids, tokenizer.decode(new_ids)))

            out = best_of_n(model, ids, n, scorer=verifier, **inputs, **options)
            ok.extend(bool(s >= 1.0) for s in out.scores.tolist())
    by_length: dict[int, list[bool]] = {}
    for p, good in zip(prompts, ok):
        by_length.setdefault(int(p.length), []).append(good)
    return {
        "n": n,
        "problems": len(prompts),
        "accuracy": sum(ok) / len(ok) if ok else math.nan,
        "by_length": {length: sum(v) / len(v) for length, v in sorted(by_length.items())},
    }


__all__ = [
    "LengthRow",
    "LengthTable",
    "classification_accuracy",
    "cross_entropy_sum",
    "HIGHER_IS_BETTER",
    "batch_metric_sums",
    "default_best_metric",
    "eval_splits",
    "evaluate_by_length",
    "evaluate_split",
    "exact_match",
    "finish_metrics",
    "generate_answers",
    "perplexity",
    "split_sums",
    "teacher_forced_by_length",
    "teacher_forced_exact_match",
    "token_accuracy",
    "token_accuracy_all_positions",
    "top_at_n_accuracy",
    "train_lengths",
]
