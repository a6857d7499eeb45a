"""The regression warm-up of tutorial 000 (Part I): y = X @ w + b + noise.

N examples, D features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratchformer.errors import ConfigError, DataError
from scratchformer.tasks.base import (
    ExampleDataset,
    PrebuiltSplitsTask,
    TaskConfig,
    check_split_fractions,
    register_task,
)


@dataclass
class RegressionConfig(TaskConfig):
    """Linear data with Gaussian noise.

    X ~ N(0, 1) of shape (N, D), w ~ N(0, 1) of shape (D,), y = X @ w + bias +
    noise * N(0, 1). The tutorial's values are the defaults (10 000 examples,
    100 features, noise 0.2, no bias).

    Attributes:
        num_examples, dim, noise: as above; noise >= 0.
        bias: the constant b.
        split_fractions: (train, val, test); a split with fraction 0 is left out.
    """

    num_examples: int = 10_000
    dim: int = 100
    noise: float = 0.2
    bias: float = 0.0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._at_least("num_examples", 1)
        self._at_least("dim", 1)
        if not isinstance(self.noise, (int, float)) or self.noise < 0:
            raise ConfigError(f"noise={self.noise!r} must be a number >= 0")
        self.split_fractions = check_split_fractions(self.split_fractions)


@register_task("regression")
class RegressionTask(PrebuiltSplitsTask):
    """See :class:`RegressionConfig`. Batch: ``inputs`` (B, D) float, ``targets`` (B,) float.

    Attributes:
        weights: (D,) the true w; ``bias``: the true b (to compare a fit against).
    """

    kind = "regression"
    config_class = RegressionConfig

    def __init__(self, config: RegressionConfig) -> None:
        super().__init__(config)
        self.config: RegressionConfig = config
        rng = np.random.default_rng(config.seed)
        x = rng.standard_normal((config.num_examples, config.dim)).astype(np.float32)  # (N, D)
        self.weights = rng.standard_normal(config.dim).astype(np.float32)  # (D,)
        self.bias = float(config.bias)
        y = (x @ self.weights + self.bias + config.noise * rng.standard_normal(config.num_examples)).astype(np.float32)
        self._datasets: dict[str, ExampleDataset] = {}
        present = [(n, f) for n, f in zip(("train", "val", "test"), config.split_fractions) if f > 0]
        start = 0
        for i, (name, fraction) in enumerate(present):
            last = i == len(present) - 1
            stop = config.num_examples
            if not last:
                stop = min(stop, start + round(config.num_examples * fraction))
            if stop <= start:
                raise DataError(
                    f"regression: the {name} split of {config.num_examples} examples is empty "
                    f"(split_fractions={config.split_fractions}); raise num_examples or that fraction"
                )
            self._datasets[name] = ExampleDataset(
                {"inputs": x[start:stop], "targets": y[start:stop], "lengths": np.full(stop - start, config.dim)}
            )
            start = stop

