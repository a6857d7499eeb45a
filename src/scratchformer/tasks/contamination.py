"""Evaluation hygiene: how much of an evaluation set also appears in training.

Examples are compared exactly: strings as strings, token sequences (lists,
tuples, numpy arrays, 1-D tensors) as tuples of ints. Tutorial 000 closes by
asking how contaminated the in-distribution evaluation is; the arithmetic
tasks avoid it by default (``exclude_train_from_eval=True``).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from scratchformer.tasks.base import Task


def _key(example: Any) -> Hashable:
    if isinstance(example, str):
        return example
    if hasattr(example, "tolist"):  # numpy array or tensor
        example = example.tolist()
    if isinstance(example, (list, tuple)):
        return tuple(_key(x) if isinstance(x, (list, tuple, np.ndarray)) else x for x in example)
    return example


def contamination_report(
    train_examples: Iterable[Any], eval_examples: Sequence[Any], max_examples: int = 10
) -> dict[str, Any]:
    """Count evaluation examples that also occur in the training examples.

    Args:
        train_examples: training examples (strings or token sequences).
        eval_examples: evaluation examples of the same kind.
        max_examples: how many contaminated examples to list.

    Returns:
        ``{"count": int, "total": int, "fraction": float, "examples": list}``:
        contaminated evaluation examples (duplicates within the evaluation set
        counted each time), evaluation set size, count / total (0.0 for an
        empty evaluation set) and up to ``max_examples`` of them.
    """
    seen = {_key(x) for x in train_examples}
    hits = [x for x in eval_examples if _key(x) in seen]
    total = len(eval_examples)
    return {
        "count": len(hits),
        "total": total,
        "fraction": len(hits) / total if total else 0.0,
        "examples": [x if isinstance(x, str) else list(_key(x)) for x in hits[:max_examples]],
    }


def task_contamination(task: Task, train_split: str | None = None, eval_split: str = "test") -> dict[str, Any]:
    """:func:`contamination_report` of two splits of ``task``, compared by :meth:`Task.texts`."""
    train_split = train_split or task.split_names[0]
    return contamination_report(task.texts(train_split), task.texts(eval_split))
