"""Data parallelism: 2 CPU processes (gloo, launched by torchrun) train exactly like one process
with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchformer.nn.linear import onednn_available
from scratchformer.train import resolve_config, train

REPO = Path(__file__).resolve().parents[1]

OVERRIDES = [
    "model.d_model=32", "model.n_head=2", "model.n_layer=2", "model.max_len=32", "model.dropout=0.0",
    "task.max_digits=2", "task.min_digits=1", "task.num_examples=3000",
    "train.batch_size=16", "train.steps=5", "train.eval_every=0", "train.checkpoint_every=0",
    "train.eval_max_examples=200", "train.progress=false", "train.log_every=1", "train.warmup_steps=2",
    "train.lr=3e-3",
    # every matmul through the oneDNN Linear (its custom backward under DDP's and FSDP's gradient hooks);
    # "auto" would leave this tiny model's products on F.linear, which the rest of the suite covers
    *(["train.linear_backend=onednn"] if onednn_available() else []),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "train"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(tmp_path, strategy):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("CI", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        "-m", "scratchformer", "train", *OVERRIDES, f"train.out_dir={tmp_path}", "name=two",
        f"train.distributed={strategy}", "train.grad_accum=2",  # each rank: 2 micro-batches of 4 examples
    ]
    two = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    one = train(resolve_config(None, [*OVERRIDES, f"train.out_dir={tmp_path}", "name=one", "train.threads=1"]))
    out, err = two.communicate(timeout=240)
    assert two.returncode == 0, err[-3000:]
    assert out.count("run directory:") == 1  # only rank 0 reports (and writes)

    single, double = _train_losses(one.run_dir), _train_losses(tmp_path / "two")
    assert len(single) == len(double) == 5
    for a, b in zip(single, double):
        assert abs(a - b) <= 1e-5, (single, double)
    wa, wb = load_file(one.run_dir / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-5)
    assert single[-1] < single[0]  # the weights did move
