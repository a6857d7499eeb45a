"""The training data stream: a resumable, deterministic order of examples, cut into global batches.

Every rank draws the same permutation from the same generator, takes the same
global batch of indices, and keeps its own disjoint slice of each
micro-batch, so no data is exchanged between processes and the stream
depends only on the seed and the step (not on how many processes run).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError


class ResumableSampler:
    """An endless stream of example indices: epoch after epoch, each a fresh permutation.

    The permutation of an epoch is drawn from ``generator`` when the epoch
    starts. The state is (epoch, offset into the epoch, generator state at
    the epoch's start), so a restored sampler redraws the same permutation
    and continues at the same example.

    Args:
        n: examples in the training split (> 0).
        seed: seeds the sampler's own ``torch.Generator`` (independent of the
            global torch RNG that dropout uses).
    """

    def __init__(self, n: int, seed: int) -> None:
        if n <= 0:
            raise ConfigError("the training split is empty; nothing to train on")
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_state = self.generator.get_state()
        self._order = torch.randperm(self.n, generator=self.generator)
        self.offset = 0

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices (crossing into the next epoch when this one runs out)."""
        out: list[int] = []
        while len(out) < k:
            if self.offset == self.n:
                self.epoch += 1
                self._start_epoch()
            m = min(k - len(out), self.n - self.offset)
            out.extend(self._order[self.offset : self.offset + m].tolist())
            self.offset += m
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "epoch": self.epoch, "offset": self.offset, "generator_state": self._epoch_state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n"] != self.n:
            raise ConfigError(
                f"the checkpoint's training split has {state['n']} examples, this task builds {self.n}; "
                "the task options changed since the checkpoint was written"
            )
        self.generator.set_state(state["generator_state"])
        self.epoch = int(state["epoch"])
        self._start_epoch()
        self.offset = int(state["offset"])


def split_global_batch(indices: list[int], grad_accum: int, world_size: int, rank: int) -> list[list[int]]:
    """This rank's slice of each micro-batch of a global batch.

    The global batch is cut into ``grad_accum`` consecutive micro-batches and
    each micro-batch into ``world_size`` consecutive, disjoint shards.

    Raises:
        ConfigError: the batch does not divide evenly.
    """
    B = len(indices)
    if B % (grad_accum * world_size):
        raise ConfigError(
            f"train.batch_size={B} must be divisible by grad_accum * processes = {grad_accum} * {world_size}"
        )
    micro = B // grad_accum
    shard = micro // world_size
    return [indices[j * micro + rank * shard : j * micro + (rank + 1) * shard] for j in range(grad_accum)]
