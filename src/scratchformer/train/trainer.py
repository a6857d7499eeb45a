"""The training loop: one trainer for every architecture and task.

``train(config)`` builds the task and the model, then repeats: take the next
global batch, run the task kind's loss on each micro-batch (this process's
shard), step the optimizer at the schedule's learning rate; evaluate, log
and checkpoint at their intervals. The loop reads top to bottom; the loss,
the schedule and the metrics are pure functions imported from their modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import atomic_write_text, save_json
from ..errors import CheckpointError, ConfigError, ScratchformerError
from ..tasks.base import GenerativeTask, Task
from . import distributed as D
from .checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    save_model_weights,
    save_state_dict,
    check_state_matches,
)
from ..nn.linear import get_linear_backend, linear, linear_backend
from .config import RunConfig
from .data import ResumableSampler, split_global_batch
from .losses import (
    HIGHER_IS_BETTER,
    batch_metric_sums,
    batch_tokens,
    finish_metrics,
    loss_for,
    target_count,
)
from .optim import build_optimizer, lr_at
from .run import build_run, read_run_config

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
        elapsed_s: wall time of this process's training (excluding set-up).
    """

    run_dir: Path
    step: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    elapsed_s: float = 0.0


# ---------------------------------------------------------------------- evaluation
def eval_splits(task: Task) -> list[str]:
    """Every split but the training split."""
    return list(task.split_names[1:])


def task_summary(task: Task) -> dict[str, Any]:
    """``task.describe()`` plus ``bos_first``: whether training sequences start with the BOS token
    (so a text prompt needs it prepended)."""
    summary = json.loads(json.dumps(task.describe(), default=str))
    first = task.dataset(task.split_names[0])[0]
    bos = None if task.tokenizer is None else task.tokenizer.bos_token_id
    ids = first.get("input_ids")
    summary["bos_first"] = bool(bos is not None and ids is not None and len(ids) and int(ids[0]) == bos)
    return summary


def default_best_metric(task: Task) -> str:
    if isinstance(task, GenerativeTask) and task.kind in ("lm", "seq2seq"):
        return "exact_match"
    if task.kind == "classification":
        return "accuracy"
    return "loss"


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    task: Task,
    split: str,
    *,
    batch_size: int = 512,
    max_examples: int = 0,
    device: torch.device | str = "cpu",
    info: D.DistInfo | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """The task kind's metrics of ``model`` on the first ``max_examples`` (0: all) examples of ``split``.

    Returns loss (mean per target) and, by kind: token_accuracy, perplexity
    (lm), exact_match (generative tasks: greedy-decoding exact match from one
    teacher-forced pass, see ``teacher_forced_exact_match``), accuracy
    (classification); ``examples`` is how many were scored. Under several
    processes each rank scores a disjoint shard and the sums are reduced.
    """
    info = info or D.DistInfo()
    device = torch.device(device)
    ds = task.dataset(split)
    n = len(ds) if not max_examples else min(len(ds), max_examples)
    mine = list(range(info.rank, n, info.world_size))
    loss_fn = loss_for(task.kind)
    exact = isinstance(task, GenerativeTask) and task.kind in ("lm", "seq2seq")
    was_training = model.training
    model.eval()
    keys = ["loss_sum", "count", "correct", "exact", "rows", "examples"]
    totals = dict.fromkeys(keys, 0.0)
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        batch = _to(task.collate([ds[i] for i in idx]), device)
        with autocast or contextlib.nullcontext():
            out = loss_fn(model, batch)
        for k, v in batch_metric_sums(task.kind, out, exact).items():
            totals[k] += v
        totals["examples"] += len(idx)
    model.train(was_training)
    summed = dict(zip(keys, D.all_reduce_sum([totals[k] for k in keys], info, device)))
    if not exact:
        summed.pop("exact"), summed.pop("rows")
    return finish_metrics(task.kind, summed)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ---------------------------------------------------------------------- logging
class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed and fsynced); TensorBoard optionally."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # checked importable before training

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.writer is not None:
            prefix = record.get("split", record["event"])
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.writer.add_scalar(f"{prefix}/{k}", v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only complete lines of records at or before ``step`` (resume after a kill)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(record, dict) and record.get("step", 0) <= step and record.get("event") != "final":
            keep.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def check_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "train.log_tensorboard=true needs the tensorboard package, which is not installed; "
            "install it with `pip install 'scratchformer[tensorboard]'` or drop the flag"
        ) from None


def show_progress(setting: bool | None) -> bool:
    if setting is not None:
        return setting
    return sys.stderr.isatty() and not os.environ.get("CI")


# ---------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states of this process."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------- run directory
def new_run_dir(cfg: RunConfig) -> Path:
    """``out_dir/name``, or ``out_dir/<timestamp>`` (with a suffix if taken)."""
    base = Path(cfg.train.out_dir)
    if cfg.name:
        path = base / cfg.name
        if (path / "config.json").exists():
            raise ConfigError(
                f"run directory {str(path)!r} already holds a run; resume it with "
                f"`scratchformer train --resume {path}` or choose another name=..."
            )
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, i = base / stamp, 1
    while path.exists():
        i += 1
        path = base / f"{stamp}-{i}"
    return path


def _state_dicts(train_model: nn.Module, raw_model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool):
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(train_model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return raw_model.state_dict(), optimizer.state_dict()


def _load_state_dicts(train_model, raw_model, optimizer, model_sd, optim_sd, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(train_model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                       options=StateDictOptions(full_state_dict=True))
        return
    check_state_matches(raw_model.state_dict(), model_sd, "the checkpoint's model.safetensors")
    raw_model.load_state_dict(model_sd)
    try:
        optimizer.load_state_dict(optim_sd)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"the checkpoint's optimizer state does not fit this optimizer: {e}") from None


# ---------------------------------------------------------------------- the loop
def cpu_bf16_matmul_speedup(n: int = 256, repeats: int = 20) -> float:
    """How many times faster a bf16 (n x n) matmul is than float32 on this CPU.

    Some CPUs have native bf16 units (AVX512-BF16, AMX) and run bf16 several
    times faster; others emulate it and run it hundreds of times slower. A
    few milliseconds of measuring tells which before a whole run is spent.
    Each side runs the kernel training would: float32 through
    ``scratchformer.nn.linear`` (oneDNN under the "auto" backend on x86-64),
    bf16 through ``F.linear`` as autocast calls it.
    """

    def seconds(dtype: torch.dtype) -> float:
        a = torch.randn(n, n).to(dtype)
        matmul = linear if dtype == torch.float32 else F.linear
        matmul(a, a)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            matmul(a, a)
        return time.perf_counter() - start

    return seconds(torch.float32) / seconds(torch.bfloat16)


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
        ConfigError: an option that cannot work (checked before training).
        CheckpointError: ``resume`` with an unreadable or mismatched checkpoint.
        NonFiniteLossError: the loss or gradient norm became NaN/inf; the
            message names the step, and the last checkpoint is left untouched.
    """
    tc = cfg.train
    # for this run only (None: the process's choice); the caller's choice comes back after
    with linear_backend(tc.linear_backend or get_linear_backend()):
        info, device = D.init_distributed(tc.device)
        try:
            return _train(cfg, info, device, run_dir, resume)
        finally:
            D.shutdown_distributed(info)


def _train(cfg: RunConfig, info: D.DistInfo, device: torch.device, run_dir, resume: bool) -> TrainResult:
    tc = cfg.train
    if tc.log_tensorboard:
        check_tensorboard()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    use_bf16 = tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type == "cpu":
        speedup = cpu_bf16_matmul_speedup()
        if speedup < 1.0:
            logger.warning(
                "train.precision=bf16 on this CPU: a bf16 matmul runs %.2fx as fast as the float32 one "
                "training would use, so training will be slower; use train.precision=fp32", speedup
            )
        else:
            logger.info("bf16 autocast on CPU: bf16 matmuls measured %.1fx as fast as float32 here", speedup)

    # ---- data and model (deterministic from the seeds, identical on every rank)
    seed_everything(cfg.seed)
    task, raw_model, effective = build_run(cfg)
    effective = dataclasses.replace(effective, train=effective.train.replace(linear_backend=get_linear_backend()))
    train_split = task.split_names[0]
    train_ds = task.dataset(train_split)
    splits = eval_splits(task)
    eval_split = tc.eval_split or (splits[0] if splits else None)
    if eval_split is not None:
        task.check_split(eval_split)
    best_metric = default_best_metric(task) if tc.best_metric == "auto" else tc.best_metric
    if best_metric not in HIGHER_IS_BETTER:
        raise ConfigError(f"train.best_metric={best_metric!r} is not one of {sorted(HIGHER_IS_BETTER)} or 'auto'")
    split_global_batch(list(range(tc.batch_size)), tc.grad_accum, info.world_size, 0)  # divisibility check
    d_model = getattr(raw_model.config, "d_model", None)
    lr_at(tc.schedule, 1, tc.lr, total_steps=tc.steps, warmup_steps=tc.warmup_steps,
          min_lr_ratio=tc.min_lr_ratio, d_model=d_model)  # a schedule that cannot work fails now

    # ---- run directory (rank 0 decides, everyone agrees)
    if resume:
        if run_dir is None:
            raise ConfigError("resume needs the run directory")
        run_dir = Path(run_dir)
        saved = read_run_config(run_dir)
        for section in ("model", "task"):
            if saved.to_dict()[section] != effective.to_dict()[section]:
                raise ConfigError(
                    f"cannot resume {str(run_dir)!r} with a different {section} config: "
                    f"saved {saved.to_dict()[section]}, now {effective.to_dict()[section]}"
                )
    else:
        run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
        if (run_dir / "config.json").exists():  # every rank checks, so all of them stop together
            raise ConfigError(f"{str(run_dir)!r} already holds a run; use --resume to continue it")
    run_dir = Path(D.broadcast_object(str(run_dir), info))

    raw_model.to(device)
    fsdp = info.enabled and tc.distributed == "fsdp"
    train_model = D.wrap_model(raw_model, info, device, tc.distributed) if fsdp else raw_model
    optimizer = build_optimizer(tc.optimizer, train_model if fsdp else raw_model, tc.lr, tc.weight_decay,
                                **tc.optimizer_options)
    sampler = ResumableSampler(len(train_ds), cfg.seed)
    seed_everything(cfg.seed + info.rank)  # dropout differs between ranks, as with independent workers

    # ---- resume or start
    step = 0
    best: dict[str, Any] | None = None
    last_eval: dict[str, float] | None = None  # the last step's evaluation, reused at the end if it saw the whole split
    ckpt_path = latest_checkpoint(run_dir) if resume else None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        _load_state_dicts(train_model, raw_model, optimizer, ckpt.model, ckpt.optimizer, fsdp)
        sampler.load_state_dict(ckpt.state["sampler"])
        rngs = ckpt.state["rng"]
        if len(rngs) != info.world_size:
            raise CheckpointError(
                f"{str(ckpt_path)!r} was written by {len(rngs)} processes; resume it with the same number "
                f"(now {info.world_size})"
            )
        set_rng_state(rngs[info.rank])
        step, best = ckpt.step, ckpt.state.get("best")
        if step > tc.steps:
            raise ConfigError(
                f"train.steps={tc.steps} is below step {step}, which {run_dir} already reached; "
                f"pass train.steps >= {step} to resume"
            )
        logger.info("resumed %s at step %d", run_dir, step)
    elif resume:
        logger.warning("%s has no complete checkpoint; starting from step 0", run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_json(run_dir / "config.json", effective.to_dict())
        if task.tokenizer is not None:
            task.tokenizer.save(run_dir / "tokenizer.json")
        save_json(run_dir / "task.json", task_summary(task))
        if resume:
            truncate_metrics(run_dir / "metrics.jsonl", step)
            remove_stale_temporaries(run_dir)
        else:
            atomic_write_text(run_dir / "metrics.jsonl", "")
    D.barrier(info)

    if not fsdp:
        model_for_step: nn.Module = torch.compile(raw_model) if tc.compile else raw_model
        train_model = D.wrap_model(model_for_step, info, device, "ddp")
    elif tc.compile:
        train_model = torch.compile(train_model)
    eval_model = train_model if fsdp else raw_model
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    loss_fn = loss_for(task.kind)
    log = MetricsLog(run_dir, info.is_main, tc.log_tensorboard)
    arch = effective.arch

    def evaluate(split: str, max_examples: int) -> dict[str, float]:
        return evaluate_split(eval_model, task, split, batch_size=tc.eval_batch_size, max_examples=max_examples,
                              device=device, info=info, autocast=autocast())

    def checkpoint(at: int) -> None:
        model_sd, optim_sd = _state_dicts(train_model, raw_model, optimizer, fsdp)
        rngs = D.gather_objects(rng_state(), info)
        if info.is_main:
            state = {"sampler": sampler.state_dict(), "rng": rngs, "best": best}
            save_checkpoint(run_dir, at, model_sd, optim_sd, state, arch, keep=tc.keep_checkpoints)
            save_state_dict(run_dir / "model.safetensors", model_sd, arch)
        D.barrier(info)

    from tqdm.auto import tqdm

    bar = tqdm(total=tc.steps, initial=step, disable=not (info.is_main and show_progress(tc.progress)),
               desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
    raw_model.train()
    t_start = time.perf_counter()
    t_log, tokens_since, losses_since = t_start, 0, []
    try:
        while step < tc.steps:
            step += 1
            lr = lr_at(tc.schedule, step, tc.lr, total_steps=tc.steps, warmup_steps=tc.warmup_steps,
                       min_lr_ratio=tc.min_lr_ratio, d_model=d_model)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # -- one update: this rank's shard of each micro-batch of the global batch
            shards = split_global_batch(sampler.take(tc.batch_size), tc.grad_accum, info.world_size, info.rank)
            cpu_micro = [task.collate([train_ds[i] for i in idx]) for idx in shards]
            # counted on the host batches: reading counts back from a GPU would wait for the last step
            local = [float(sum(target_count(task.kind, b) for b in cpu_micro)), 0.0]
            tokens_since += sum(batch_tokens(b) for b in cpu_micro)
            micro = [_to(b, device) for b in cpu_micro]
            (global_count,) = D.all_reduce_sum(local[:1], info, device)
            scale = info.world_size / max(global_count, 1.0)  # DDP averages gradients over ranks
            loss_sum = torch.zeros((), device=device)
            for j, batch in enumerate(micro):
                with D.gradient_sync(train_model, info, sync=j == len(micro) - 1), autocast():
                    out = loss_fn(train_model, batch)
                (out.loss_sum * scale).backward()
                loss_sum += out.loss_sum.detach().float()
            (total,) = D.all_reduce_sum([float(loss_sum)], info, device)
            loss = total / max(global_count, 1.0)
            if not math.isfinite(loss):
                raise _non_finite("loss", loss, step, run_dir)
            params = [p for p in train_model.parameters() if p.grad is not None]
            if tc.grad_clip > 0:  # (FSDP2's sharded DTensor gradients reduce their norm across ranks)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip).full_tensor()
                                  if fsdp else torch.nn.utils.clip_grad_norm_(params, tc.grad_clip))
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
                grad_norm = float(norm.full_tensor() if fsdp and hasattr(norm, "full_tensor") else norm)
            if not math.isfinite(grad_norm):
                raise _non_finite("gradient norm", grad_norm, step, run_dir)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses_since.append(loss)
            bar.update(1)

            # -- log, evaluate, checkpoint
            if step % tc.log_every == 0 or step == tc.steps:
                now = time.perf_counter()
                tokens = D.all_reduce_sum([float(tokens_since)], info, device)[0]
                record = {"event": "train", "step": step, "loss": sum(losses_since) / len(losses_since), "lr": lr,
                          "grad_norm": grad_norm, "tokens_per_s": tokens / max(now - t_log, 1e-9),
                          "epoch": sampler.epoch, "elapsed_s": now - t_start}
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
                t_log, tokens_since, losses_since = now, 0, []
            final = step == tc.steps
            if eval_split is not None and (final or (tc.eval_every and step % tc.eval_every == 0)):
                metrics = evaluate(eval_split, tc.eval_max_examples)
                log.write({"event": "eval", "step": step, "split": eval_split, **metrics})
                if final:
                    last_eval = metrics
                value = metrics.get(best_metric)
                if value is not None and _better(value, best, best_metric):
                    best = {"step": step, "metric": best_metric, "value": value, "split": eval_split}
                    if info.is_main:
                        _save_best(run_dir, train_model, raw_model, optimizer, fsdp, arch, best)
                    elif fsdp:
                        _state_dicts(train_model, raw_model, optimizer, fsdp)  # collective: every rank joins
                bar.set_postfix({"loss": f"{loss:.4f}", f"{eval_split}_{best_metric}": f"{value:.4f}" if value is not None else "-"})
            if final or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
                checkpoint(step)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t_start

    # ---- final evaluation on every evaluation split
    results: dict[str, dict[str, float]] = {}
    for split in splits:
        whole = last_eval is not None and split == eval_split and last_eval["examples"] == len(task.dataset(split))
        results[split] = last_eval if whole else evaluate(split, 0)  # the last step's evaluation, if it saw it all
        log.write({"event": "final", "step": step, "split": split, **results[split]})
    log.close()
    if info.is_main:
        save_json(run_dir / "results.json", {"step": step, "elapsed_s": elapsed, "splits": results, "best": best})
    return TrainResult(run_dir=run_dir, step=step, metrics=results, best=best, elapsed_s=elapsed)


def _better(value: float, best: dict[str, Any] | None, metric: str) -> bool:
    if best is None:
        return True
    return value > best["value"] if HIGHER_IS_BETTER[metric] else value < best["value"]


def _save_best(run_dir: Path, train_model, raw_model, optimizer, fsdp: bool, arch: str, best: dict[str, Any]) -> None:
    if fsdp:
        model_sd, _ = _state_dicts(train_model, raw_model, optimizer, fsdp)
        save_state_dict(run_dir / "best.safetensors", model_sd, arch)
    else:
        save_model_weights(run_dir / "best.safetensors", raw_model, arch)
    save_json(run_dir / "best.json", best)


def _non_finite(what: str, value: float, step: int, run_dir: Path) -> NonFiniteLossError:
    last = latest_checkpoint(run_dir)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    return NonFiniteLossError(
        f"{what} is {value} at step {step}; training stopped and {where}. "
        "Lower train.lr, keep train.grad_clip > 0, or use train.precision=fp32"
    )
