"""The training loop: one trainer for every architecture and task.

Read it top to bottom:

- :func:`setup` builds the task and the model, checks every option, picks
  (or resumes) the run directory and returns a :class:`TrainState`;
- :func:`next_batch` takes this process's share of the next global batch;
- :func:`train_step` is one update: the loss of each micro-batch, one
  optimizer step at the schedule's learning rate;
- :func:`train_loop` repeats them, logging, evaluating and checkpointing at
  their intervals, then evaluates every split once more;
- :func:`train` is all of it for one run config.

The loss (:mod:`scratchformer.losses`), the schedule (:mod:`.optim`) and the
metrics (:mod:`scratchformer.evaluate`) are pure functions imported from
their modules; the RNG state (:mod:`.rng`), precision (:mod:`.precision`)
and the metrics log (:mod:`.logs`) have their own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..io import WriteError, atomic_write_text, remove_partial_writes, save_json
from ..errors import CheckpointError, ConfigError, ScratchformerError
from ..evaluate import HIGHER_IS_BETTER, default_best_metric, eval_splits, finish_metrics, split_sums
from ..losses import TRAIN_ACCURACY_KEY, LossOutput, batch_tokens, correct_predictions, loss_for, target_count
from ..nn.linear import WHOLE_PASS, KernelTuner, keep_if_faster, linear_kernels
from ..tasks.base import Batch, Task
from . import distributed as D
from .checkpoint import (
    check_state_matches,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    save_model_weights,
    save_state_dict,
)
from .config import RunConfig
from .data import ResumableSampler, split_global_batch
from .logs import MetricsLog, check_tensorboard, show_progress, truncate_metrics
from .init_from import load_init_weights, prepare_init_from
from .optim import build_optimizer, lr_at
from .precision import autocast_factory, uses_bf16
from .rng import rng_state, seed_everything, set_rng_state
from .run import attempt_trained, build_run, prepare_run_dir, read_run_config, start_attempt

logger = logging.getLogger(__name__)


class NonFiniteLossError(ScratchformerError, ArithmeticError):
    """The loss or gradient became NaN/inf; the run stopped without writing a checkpoint."""


@dataclass
class TrainResult:
    """What a finished run reports.

    Attributes:
        run_dir: the run directory.
        step: updates done.
        metrics: final metrics per evaluation split.
        best: {"step", "metric", "value"} of the best evaluation, or None.
        elapsed_s: wall time of the run's training (excluding set-up), summed over
            the processes that trained it (see :class:`TrainingTime`).
    """

    run_dir: Path
    step: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    elapsed_s: float = 0.0


@dataclass
class TrainingTime:
    """Training wall and CPU time: what earlier processes spent up to the checkpoint this one resumed
    from (``prior_*``, read from it), plus this process's since :meth:`start`. Checkpoints record it,
    so a run killed and resumed reports the time its steps took, not the last process's alone (the
    time between a kill and the checkpoint before it is lost with those steps, which are redone)."""

    prior_wall_s: float = 0.0
    prior_cpu_s: float = 0.0
    wall0: float = 0.0
    cpu0: float = 0.0

    def start(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def wall_s(self) -> float:
        return self.prior_wall_s + time.perf_counter() - self.wall0

    def cpu_s(self) -> float:
        """This process's CPU time (on a shared machine, what the run cost), plus earlier ones'."""
        return self.prior_cpu_s + time.process_time() - self.cpu0

    def to_dict(self) -> dict[str, float]:
        return {"elapsed_s": self.wall_s(), "cpu_s": self.cpu_s()}

    def resume_from(self, saved: dict[str, float] | None) -> None:
        self.prior_wall_s = float((saved or {}).get("elapsed_s", 0.0))
        self.prior_cpu_s = float((saved or {}).get("cpu_s", 0.0))


@dataclass
class TrainState:
    """Everything a run holds between steps: :func:`setup` makes it, :func:`train_step` advances it.

    Attributes:
        cfg: the run config as given; ``arch`` the model's architecture name;
            ``effective`` the config with every model field filled in (what
            config.json records once this attempt checkpoints).
        info, device: this process's place in the job, and its device.
        run_dir: where the run writes.
        task, train_ds: the task and its training split.
        raw_model: the model as built (its state dict is what checkpoints hold).
        train_model: what a step runs: ``raw_model``, or it wrapped by DDP or
            FSDP and/or ``torch.compile``.
        eval_model: what evaluation runs (``raw_model`` unless FSDP shards it).
        optimizer, sampler: the optimizer, and the resumable order of examples.
        schedule: the learning rate as a function of the step.
        loss_fn: the task kind's loss; ``autocast`` makes the precision
            context a forward pass runs in.
        fsdp: the model is sharded over processes.
        kernels: the Linear kernels chosen for this run (None: plain ``F.linear``,
            ``train.linear_backend=torch``); checkpoints record its choices.
        eval_split, best_metric: what is evaluated while training, and what "best" means.
        step: updates done; ``best`` the best evaluation so far; ``last_eval``
            the final step's evaluation (reused at the end when it saw the whole split).
        clock: the training time so far, earlier processes' included.
    """

    cfg: RunConfig
    arch: str
    effective: RunConfig
    info: D.DistInfo
    device: torch.device
    run_dir: Path
    task: Task
    train_ds: Dataset
    raw_model: nn.Module
    train_model: nn.Module
    eval_model: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: ResumableSampler
    schedule: Callable[[int], float]
    loss_fn: Callable[[nn.Module, Batch], LossOutput]
    autocast: Callable[[], AbstractContextManager]
    fsdp: bool
    kernels: KernelTuner | None
    eval_split: str | None
    best_metric: str
    step: int = 0
    best: dict[str, Any] | None = None
    last_eval: dict[str, float] | None = None
    clock: TrainingTime = field(default_factory=TrainingTime)


@dataclass
class StepStats:
    """What one :func:`train_step` measured: the mean loss per target of the global batch, the
    gradient norm before clipping, the learning rate, and this process's real tokens."""

    loss: float
    grad_norm: float
    lr: float
    tokens: int
    targets: float = 0.0  # scored targets in the global batch
    correct: Tensor | None = None  # of this process's targets, how many the argmax got right (on the device)


# ---------------------------------------------------------------------- the run
def train(
    cfg: RunConfig,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train the run ``cfg`` describes, writing its run directory.

    Args:
        cfg: the run config (model, task, train options, seed).
        run_dir: where to write; default ``train.out_dir/<name or timestamp>``.
        resume: continue ``run_dir`` from its newest complete checkpoint (its
            config.json must describe the same model and task as ``cfg``).

    Raises:
        ConfigError: an option that cannot work, or a run directory that cannot
            be used (not empty and not a run; a run that saved weights, without
            ``resume``; ``resume`` without a complete checkpoint); checked before
            anything is written.
        CheckpointError: ``resume`` with an unreadable or mismatched checkpoint.
        WriteError: a file could not be written; for a full disk the message
            names the last intact checkpoint.
        NonFiniteLossError: the loss or gradient norm became NaN/inf; the
            message names the step, and the last checkpoint is left untouched.
    """
    info, device = D.init_distributed(cfg.train.device)
    try:
        path = prepare_run_dir(cfg, run_dir, resume)  # refuses, before any write, what would lose data
        path = Path(D.broadcast_object(str(path), info))  # rank 0's choice (a timestamp) for everyone
        try:
            return train_loop(setup(cfg, info, device, path, resume))
        except WriteError as e:
            if not e.disk_full:
                raise
            last = latest_checkpoint(path)
            where = f"the last intact checkpoint is {last}" if last else "no checkpoint was written"
            raise WriteError(f"{e}; training stopped and {where}", e.errno) from None
    finally:
        D.shutdown_distributed(info)


def train_loop(state: TrainState) -> TrainResult:
    """Step until ``train.steps``, logging, evaluating and checkpointing at their intervals; then
    evaluate every evaluation split and write ``results.json``."""
    from tqdm.auto import tqdm

    tc, info = state.cfg.train, state.info
    log = MetricsLog(state.run_dir, info.is_main, tc.log_tensorboard)
    bar = tqdm(total=tc.steps, initial=state.step, disable=not (info.is_main and show_progress(tc.progress)),
               desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
    state.raw_model.train()
    window = LogWindow(time.perf_counter())
    state.clock.start()
    try:
        while state.step < tc.steps:
            state.step += 1
            batch = next_batch(state)
            stats = train_step(state, batch)
            if state.step == 1:  # every product has met its kernel by now (a resumed run reloads the choices)
                check_kernels(state, batch[0])
            window.add(stats)
            bar.update(1)
            final = state.step == tc.steps
            if final or state.step % tc.log_every == 0:
                log_training(state, window, stats, log, bar)
            if state.eval_split is not None and (final or (tc.eval_every and state.step % tc.eval_every == 0)):
                evaluate_while_training(state, stats, log, bar)
            if final or (tc.checkpoint_every and state.step % tc.checkpoint_every == 0):
                save_training_checkpoint(state)
    finally:
        bar.close()
    elapsed, cpu_s = state.clock.wall_s(), state.clock.cpu_s()
    results = final_evaluation(state, log)
    log.close()
    if info.is_main:
        save_json(state.run_dir / "results.json",
                  {"step": state.step, "elapsed_s": elapsed, "cpu_s": cpu_s, "splits": results, "best": state.best})
    return TrainResult(run_dir=state.run_dir, step=state.step, metrics=results, best=state.best, elapsed_s=elapsed)


# ---------------------------------------------------------------------- one step
def next_batch(state: TrainState) -> list[Batch]:
    """This process's shard of each micro-batch of the next global batch, collated on the host."""
    tc, info = state.cfg.train, state.info
    shards = split_global_batch(state.sampler.take(tc.batch_size), tc.grad_accum, info.world_size, info.rank)
    return [state.task.collate([state.train_ds[i] for i in idx]) for idx in shards]


def train_step(state: TrainState, batch: list[Batch]) -> StepStats:
    """One update from this process's micro-batches of a global batch (host tensors, see :func:`next_batch`).

    Each micro-batch's loss *sum* is divided by the target count of the whole
    global batch, so gradient accumulation and data parallelism give exactly
    the update of one big batch.

    Raises:
        NonFiniteLossError: the loss or the gradient norm is NaN/inf (no update is made).
    """
    info, device = state.info, state.device
    lr = state.schedule(state.step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    # counted on the host batches: reading counts back from a GPU would wait for the last step
    local_count = float(sum(target_count(state.task.kind, b) for b in batch))
    tokens = sum(batch_tokens(b) for b in batch)
    micro = [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in batch]
    (global_count,) = D.all_reduce_sum([local_count], info, device)
    scale = info.world_size / max(global_count, 1.0)  # DDP averages gradients over ranks
    loss_sum = torch.zeros((), device=device)
    correct = None  # the training accuracy's numerator, where the task kind has one
    for j, b in enumerate(micro):
        with D.gradient_sync(state.train_model, info, sync=j == len(micro) - 1), state.autocast():
            out = state.loss_fn(state.train_model, b)
        (out.loss_sum * scale).backward()
        loss_sum += out.loss_sum.detach().float()
        right = correct_predictions(state.task.kind, out)
        if right is not None:
            correct = right if correct is None else correct + right
    (total,) = D.all_reduce_sum([float(loss_sum)], info, device)
    loss = total / max(global_count, 1.0)
    if not math.isfinite(loss):
        raise _non_finite("loss", loss, state.step, state.run_dir)
    grad_norm = clip_gradients(state)
    if not math.isfinite(grad_norm):
        raise _non_finite("gradient norm", grad_norm, state.step, state.run_dir)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    return StepStats(loss=loss, grad_norm=grad_norm, lr=lr, tokens=tokens, targets=global_count, correct=correct)


def check_kernels(state: TrainState, batch: Batch) -> None:
    """After a fresh run's first step: keep the Linear kernels measured one product at a time only if
    the forward and backward pass of ``batch`` (host tensors) runs faster with them than with
    ``F.linear`` everywhere (``nn.linear.keep_if_faster``). The trial passes draw from a forked RNG and
    their gradients are dropped, so the run goes on as if they had not been; checkpoints record the
    outcome. Only on the CPU (elsewhere every product takes ``F.linear``), and skipped where the
    passes would not show it: several processes (their collectives), a compiled step (traced with
    the kernels of its first call)."""
    tc = state.cfg.train
    if state.kernels is None or state.info.enabled or tc.compile or state.device.type != "cpu":
        return
    b = {k: v.to(state.device) for k, v in batch.items()}

    def forward_backward() -> None:
        with state.autocast():
            state.loss_fn(state.train_model, b).loss_sum.backward()

    with torch.random.fork_rng(devices=[]):  # the CPU's generator: dropout in the trial draws from a copy
        keep_if_faster(state.kernels, forward_backward)
    state.optimizer.zero_grad(set_to_none=True)
    outcome = state.kernels.choices.get(WHOLE_PASS)
    if outcome is not None:
        logger.info("Linear kernels: %s", {"measured": "each product's own, faster in the whole pass",
                                           "torch": "F.linear, faster in the whole pass"}.get(outcome, outcome))


def clip_gradients(state: TrainState) -> float:
    """The gradients' total norm, after clipping them to ``train.grad_clip`` when it is > 0."""
    clip = state.cfg.train.grad_clip
    params = [p for p in state.train_model.parameters() if p.grad is not None]
    if clip > 0:  # (FSDP2's sharded DTensor gradients reduce their norm across ranks)
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        return float(norm.full_tensor() if state.fsdp else norm)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
    return float(norm.full_tensor() if state.fsdp and hasattr(norm, "full_tensor") else norm)


def _non_finite(what: str, value: float, step: int, run_dir: Path) -> NonFiniteLossError:
    last = latest_checkpoint(run_dir)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    return NonFiniteLossError(
        f"{what} is {value} at step {step}; training stopped and {where}. "
        "Lower train.lr, keep train.grad_clip > 0, or use train.precision=fp32"
    )


# ---------------------------------------------------------------------- logging and evaluation
@dataclass
class LogWindow:
    """What the steps since the last ``train`` record add up to (``start``: when training started)."""

    start: float
    since: float = 0.0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)
    targets: float = 0.0
    correct: Tensor | None = None

    def __post_init__(self) -> None:
        self.since = self.since or self.start

    def add(self, stats: StepStats) -> None:
        self.tokens += stats.tokens
        self.losses.append(stats.loss)
        self.targets += stats.targets
        if stats.correct is not None:
            self.correct = stats.correct if self.correct is None else self.correct + stats.correct


def log_training(state: TrainState, window: LogWindow, stats: StepStats, log: MetricsLog, bar: Any) -> None:
    """Write one ``train`` record (mean loss and tokens/s since the last one) and start a new window."""
    now = time.perf_counter()
    tokens = D.all_reduce_sum([float(window.tokens)], state.info, state.device)[0]
    record = {"event": "train", "step": state.step, "loss": sum(window.losses) / len(window.losses),
              "lr": stats.lr, "grad_norm": stats.grad_norm, "tokens_per_s": tokens / max(now - window.since, 1e-9),
              "epoch": state.sampler.epoch, "elapsed_s": state.clock.wall_s()}
    key = TRAIN_ACCURACY_KEY.get(state.task.kind)
    if key is not None:  # the training accuracy over the targets of the window's steps
        local = float(window.correct) if window.correct is not None else 0.0
        record[key] = D.all_reduce_sum([local], state.info, state.device)[0] / max(window.targets, 1.0)
    log.write(record)
    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{stats.lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
    window.since, window.tokens, window.losses, window.targets, window.correct = now, 0, [], 0.0, None


def evaluate(state: TrainState, split: str, max_examples: int) -> dict[str, float]:
    """The task's metrics on ``split`` (:mod:`scratchformer.evaluate`), each process scoring its shard."""
    info = state.info
    sums = split_sums(state.eval_model, state.task, split, batch_size=state.cfg.train.eval_batch_size,
                      max_examples=max_examples, device=state.device, shard=(info.rank, info.world_size),
                      autocast=state.autocast())
    return finish_metrics(state.task.kind, dict(zip(sums, D.all_reduce_sum(list(sums.values()), info, state.device))))


def evaluate_while_training(state: TrainState, stats: StepStats, log: MetricsLog, bar: Any) -> None:
    """Evaluate ``eval_split``, log it, and keep the weights as ``best.safetensors`` when they are the best yet."""
    tc, split, metric = state.cfg.train, state.eval_split, state.best_metric
    metrics = evaluate(state, split, tc.eval_max_examples)
    log.write({"event": "eval", "step": state.step, "split": split, **metrics})
    if state.step == tc.steps:
        state.last_eval = metrics
    value = metrics.get(metric)
    if value is not None and _better(value, state.best, metric):
        state.best = {"step": state.step, "metric": metric, "value": value, "split": split}
        if state.info.is_main:
            _save_best(state)
        elif state.fsdp:
            _state_dicts(state)  # collective: every rank joins
    bar.set_postfix({"loss": f"{stats.loss:.4f}", f"{split}_{metric}": f"{value:.4f}" if value is not None else "-"})


def final_evaluation(state: TrainState, log: MetricsLog) -> dict[str, dict[str, float]]:
    """Every evaluation split's metrics after the last step (the last step's evaluation if it saw all of its split)."""
    results: dict[str, dict[str, float]] = {}
    last = state.last_eval
    for split in eval_splits(state.task):
        whole = last is not None and split == state.eval_split and last["examples"] == len(state.task.dataset(split))
        results[split] = last if whole else evaluate(state, split, 0)
        log.write({"event": "final", "step": state.step, "split": split, **results[split]})
    return results


def _better(value: float, best: dict[str, Any] | None, metric: str) -> bool:
    if best is None:
        return True
    return value > best["value"] if HIGHER_IS_BETTER[metric] else value < best["value"]


# ---------------------------------------------------------------------- checkpoints
def save_training_checkpoint(state: TrainState) -> None:
    """Write a checkpoint of the current step (weights, optimizer, sampler, every rank's RNG) and ``model.safetensors``."""
    info = state.info
    model_sd, optim_sd = _state_dicts(state)
    rngs = D.gather_objects(rng_state(), info)
    if info.is_main:
        saved = {"sampler": state.sampler.state_dict(), "rng": rngs, "best": state.best,
                 "kernels": dict(state.kernels.choices) if state.kernels is not None else {},
                 "time": state.clock.to_dict()}
        save_checkpoint(state.run_dir, state.step, model_sd, optim_sd, saved, state.arch,
                        keep=state.cfg.train.keep_checkpoints)
        save_state_dict(state.run_dir / "model.safetensors", model_sd, state.arch)
        attempt_trained(state.run_dir, state.effective)  # this attempt's config is now the run's
    D.barrier(info)


def _state_dicts(state: TrainState) -> tuple[dict[str, Any], dict[str, Any]]:
    if state.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(state.train_model, state.optimizer,
                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state.raw_model.state_dict(), state.optimizer.state_dict()


def _load_state_dicts(state: TrainState, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None:
    if state.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(state.train_model, state.optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                       options=StateDictOptions(full_state_dict=True))
        return
    check_state_matches(state.raw_model.state_dict(), model_sd, "the checkpoint's model.safetensors")
    state.raw_model.load_state_dict(model_sd)
    try:
        state.optimizer.load_state_dict(optim_sd)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"the checkpoint's optimizer state does not fit this optimizer: {e}") from None


def _save_best(state: TrainState) -> None:
    if state.fsdp:
        model_sd, _ = _state_dicts(state)
        save_state_dict(state.run_dir / "best.safetensors", model_sd, state.arch)
    else:
        save_model_weights(state.run_dir / "best.safetensors", state.raw_model, state.arch)
    save_json(state.run_dir / "best.json", state.best)


# ---------------------------------------------------------------------- set-up
def setup(
    cfg: RunConfig,
    info: D.DistInfo,
    device: torch.device,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainState:
    """Everything a run needs, built, checked and (on ``resume``) restored; the run directory written.

    Raises ConfigError or CheckpointError before anything trains (see :func:`train`).
    """
    tc = cfg.train
    if tc.log_tensorboard:
        check_tensorboard()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    use_bf16 = uses_bf16(tc.precision, device)

    seed_everything(cfg.seed)  # data and model: deterministic from the seed, identical on every rank
    cfg = prepare_init_from(cfg)  # init_from: the checkpoint's model config (and its tokenizer for text tasks)
    task, raw_model, effective = build_run(cfg)
    load_init_weights(raw_model, effective)
    # Linear kernels measured on this machine (or forced); checkpoints record the choices
    kernels = linear_kernels(raw_model, tc.linear_backend or "auto")
    effective = dataclasses.replace(effective, train=effective.train.replace(linear_backend=tc.linear_backend or "auto"))
    eval_split, best_metric, schedule = _check_options(cfg, task, raw_model, info)
    run_dir = Path(run_dir)  # chosen and checked by prepare_run_dir
    if resume:
        _check_same_run(run_dir, effective)

    raw_model.to(device)
    fsdp = info.enabled and tc.distributed == "fsdp"
    train_model = D.wrap_model(raw_model, info, device, tc.distributed) if fsdp else raw_model
    optimizer = build_optimizer(tc.optimizer, train_model if fsdp else raw_model, tc.lr, tc.weight_decay,
                                **tc.optimizer_options)
    train_ds = task.dataset(task.split_names[0])
    state = TrainState(
        cfg=cfg, arch=effective.arch, effective=effective, info=info, device=device, run_dir=run_dir, task=task,
        train_ds=train_ds, raw_model=raw_model, train_model=train_model, eval_model=raw_model,
        optimizer=optimizer, sampler=ResumableSampler(len(train_ds), cfg.seed), schedule=schedule,
        loss_fn=loss_for(task.kind, tc.label_smoothing),  # evaluation uses the plain loss
        autocast=autocast_factory(use_bf16, device), fsdp=fsdp, kernels=kernels,
        eval_split=eval_split, best_metric=best_metric,
    )
    seed_everything(cfg.seed + info.rank)  # dropout differs between ranks, as with independent workers
    if resume:
        _restore(state)
    _write_run_files(state, effective, resume)
    D.barrier(info)
    _wrap_for_training(state)
    return state


def _check_options(
    cfg: RunConfig, task: Task, model: nn.Module, info: D.DistInfo
) -> tuple[str | None, str, Callable[[int], float]]:
    """The evaluation split, the best metric and the learning-rate schedule, each checked now."""
    tc = cfg.train
    splits = eval_splits(task)
    eval_split = tc.eval_split or (splits[0] if splits else None)
    if eval_split is not None:
        task.check_split(eval_split)
    best_metric = default_best_metric(task) if tc.best_metric == "auto" else tc.best_metric
    if best_metric not in HIGHER_IS_BETTER:
        raise ConfigError(f"train.best_metric={best_metric!r} is not one of {sorted(HIGHER_IS_BETTER)} or 'auto'")
    split_global_batch(list(range(tc.batch_size)), tc.grad_accum, info.world_size, 0)  # divisibility check
    d_model = getattr(model.config, "d_model", None)

    def schedule(step: int) -> float:
        return lr_at(tc.schedule, step, tc.lr, total_steps=tc.steps, warmup_steps=tc.warmup_steps,
                     min_lr_ratio=tc.min_lr_ratio, d_model=d_model)

    schedule(1)  # a schedule that cannot work fails now
    return eval_split, best_metric, schedule


def _check_same_run(run_dir: Path, effective: RunConfig) -> None:
    """ConfigError unless the resumed run holds the same model and task as ``effective``."""
    saved = read_run_config(run_dir)
    for section in ("model", "task"):
        if saved.to_dict()[section] != effective.to_dict()[section]:
            raise ConfigError(
                f"cannot resume {str(run_dir)!r} with a different {section} config: "
                f"saved {saved.to_dict()[section]}, now {effective.to_dict()[section]}"
            )


def _restore(state: TrainState) -> None:
    """Continue from the run directory's newest complete checkpoint: weights, optimizer, sampler, RNG, best,
    Linear kernel choices."""
    tc, info, run_dir = state.cfg.train, state.info, state.run_dir
    ckpt_path = latest_checkpoint(run_dir)
    if ckpt_path is None:  # prepare_run_dir found one; it went away since
        raise CheckpointError(f"{str(run_dir)!r} lost its last complete checkpoint while starting; nothing was changed")
    ckpt = load_checkpoint(ckpt_path)
    _load_state_dicts(state, ckpt.model, ckpt.optimizer)
    state.sampler.load_state_dict(ckpt.state["sampler"])
    rngs = ckpt.state["rng"]
    if len(rngs) != info.world_size:
        raise CheckpointError(
            f"{str(ckpt_path)!r} was written by {len(rngs)} processes; resume it with the same number "
            f"(now {info.world_size})"
        )
    set_rng_state(rngs[info.rank])
    state.step, state.best = ckpt.step, ckpt.state.get("best")
    state.clock.resume_from(ckpt.state.get("time"))
    if state.kernels is not None:  # multiply as the interrupted run did: bit-identical from here
        state.kernels.load(ckpt.state.get("kernels", {}))
    if state.step > tc.steps:
        raise ConfigError(
            f"train.steps={tc.steps} is below step {state.step}, which {run_dir} already reached; "
            f"pass train.steps >= {state.step} to resume"
        )
    logger.info("resumed %s at step %d", run_dir, state.step)


def _write_run_files(state: TrainState, effective: RunConfig, resume: bool) -> None:
    """Rank 0 records the attempt (history/, and config.json for a new run), writes tokenizer.json and
    task.json, and starts (or trims, on resume) metrics.jsonl."""
    if not state.info.is_main:
        return
    run_dir, task = state.run_dir, state.task
    start_attempt(run_dir, effective, resume, state.step)
    if task.tokenizer is not None:
        task.tokenizer.save(run_dir / "tokenizer.json")
    save_json(run_dir / "task.json", task_summary(task))
    if resume:
        truncate_metrics(run_dir / "metrics.jsonl", state.step)
        remove_stale_temporaries(run_dir)
        remove_partial_writes(run_dir)
    else:
        atomic_write_text(run_dir / "metrics.jsonl", "")


def task_summary(task: Task) -> dict[str, Any]:
    """``task.describe()`` plus ``bos_first``: whether training sequences start with the BOS token
    (so a text prompt needs it prepended)."""
    summary = json.loads(json.dumps(task.describe(), default=str))
    first = task.dataset(task.split_names[0])[0]
    bos = None if task.tokenizer is None else task.tokenizer.bos_token_id
    ids = first.get("input_ids")
    summary["bos_first"] = bool(bos is not None and ids is not None and len(ids) and int(ids[0]) == bos)
    return summary


def _wrap_for_training(state: TrainState) -> None:
    """DDP around the model (or FSDP already), then ``torch.compile`` when asked."""
    tc = state.cfg.train
    if not state.fsdp:
        model_for_step: nn.Module = torch.compile(state.raw_model) if tc.compile else state.raw_model
        state.train_model = D.wrap_model(model_for_step, state.info, state.device, "ddp")
    else:
        if tc.compile:
            state.train_model = torch.compile(state.train_model)
        state.eval_model = state.train_model
