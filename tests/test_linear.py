"""scratchformer.nn.linear: the oneDNN path is F.linear, forward and backward, and is chosen when it should be."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

from scratchformer.errors import ConfigError
from scratchformer.models import GPT, GPTConfig
from scratchformer.nn import linear as L

needs_onednn = pytest.mark.skipif(not L.onednn_available(), reason="this PyTorch has no oneDNN linear kernel")
needs_auto_onednn = pytest.mark.skipif(not L._AUTO_ONEDNN, reason='"auto" uses oneDNN on x86-64 only')


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _grads(fn, x, w, b, dy):
    for t in (x, w, b):
        if t is not None:
            t.grad = None
    fn(x, w, b).backward(dy)
    return [None if t is None else t.grad.clone() for t in (x, w, b)]


CASES = {
    "2-D": lambda: (torch.randn(37, 24), torch.randn(40, 24), torch.randn(40)),
    "3-D, no bias": lambda: (torch.randn(3, 11, 24), torch.randn(40, 24), None),
    "x transposed": lambda: (torch.randn(5, 24, 9).transpose(1, 2), torch.randn(40, 24), torch.randn(40)),
    "weight a row slice": lambda: (torch.randn(4, 7, 24), torch.randn(120, 24)[40:80], torch.randn(40)),
    "weight transposed view": lambda: (torch.randn(13, 24), torch.randn(24, 40).t(), None),
    "fewer outputs than inputs": lambda: (torch.randn(2, 9, 24), torch.randn(16, 24), torch.randn(16)),
}


@needs_onednn
@pytest.mark.parametrize("case", list(CASES))
def test_onednn_linear_equals_f_linear_forward_and_backward(case):
    torch.manual_seed(0)
    x, w, b = CASES[case]()
    x, w = x.clone().requires_grad_(), w.detach().requires_grad_()  # x keeps its strides through clone
    b = None if b is None else b.requires_grad_()
    with L.linear_backend("onednn"):  # "auto" would leave products this small to F.linear
        assert L.uses_onednn(x, w)
        y = L.linear(x, w, b)
        assert y.grad_fn is not None and "OneDNN" in type(y.grad_fn).__name__  # really the oneDNN path
    y_ref = F.linear(x, w, b)
    assert y.shape == y_ref.shape
    assert _rel(y, y_ref) < 1e-5
    dy = torch.randn_like(y_ref)
    with L.linear_backend("onednn"):
        got = _grads(L.linear, x, w, b, dy)
    want = _grads(F.linear, x, w, b, dy)
    for g, r in zip(got, want):
        assert (g is None) == (r is None)
        if g is not None:
            assert g.shape == r.shape and _rel(g, r) < 1e-5


def _count_onednn_calls(monkeypatch) -> list[int]:
    """Count the oneDNN products the Linear path makes (forward and backward)."""
    calls = [0]
    real = L.onednn_linear

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "onednn_linear", counted)
    return calls


@needs_onednn
def test_only_the_gradients_asked_for_are_made(monkeypatch):
    calls = _count_onednn_calls(monkeypatch)
    x, w = torch.randn(6, 8), torch.randn(5, 8, requires_grad=True)
    with L.linear_backend("onednn"):
        L.linear(x, w).sum().backward()
    assert calls[0] == 2  # the forward and dy.T @ x; no dy @ W, since x needs no gradient
    assert x.grad is None
    assert _rel(w.grad, torch.ones(6, 5).t() @ x) < 1e-6


@needs_auto_onednn
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # from torch.func's internals
def test_double_backward_jvp_and_torch_func_fall_back_to_torch_rules():
    torch.manual_seed(0)
    lin = L.Linear(1024, 1024)  # a weight of 1M numbers: oneDNN under "auto"
    x = torch.randn(3, 1024, requires_grad=True)
    with L.linear_backend("auto"):
        assert L.uses_onednn(x, lin.weight)
        # double backward: the gradient of a gradient
        (g,) = torch.autograd.grad(lin(x).pow(2).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), x)
        # forward-mode AD, even without autograd
        v = torch.randn_like(x)
        with torch.no_grad():
            _, tangent = torch.func.jvp(lin, (x.detach(),), (v,))
        # torch.func.grad
        fg = torch.func.grad(lambda t: lin(t).pow(2).sum())(x.detach())
    with L.linear_backend("torch"):
        (g_ref,) = torch.autograd.grad(lin(x).pow(2).sum(), x, create_graph=True)
        (gg_ref,) = torch.autograd.grad(g_ref.sum(), x)
    assert _rel(g, g_ref) < 1e-5 and _rel(gg, gg_ref) < 1e-5
    assert _rel(tangent, F.linear(v, lin.weight)) < 1e-5
    assert _rel(fg, g_ref) < 1e-5


@needs_auto_onednn
def test_auto_sends_only_big_enough_products_to_onednn():
    w = torch.randn(256, 512)  # below ONEDNN_MIN_WEIGHT: the row count decides
    assert w.numel() < L.ONEDNN_MIN_WEIGHT
    rows = L.ONEDNN_MIN_MACS // w.numel()  # exactly the threshold
    big = torch.randn(L.ONEDNN_MIN_WEIGHT // 512, 512)  # a weight big enough for any row count
    with L.linear_backend("auto"):
        assert L.uses_onednn(torch.randn(rows, 512), w)
        assert not L.uses_onednn(torch.randn(rows - 1, 512), w)
        assert L.uses_onednn(torch.randn(2, rows // 2, 512), w)  # leading dimensions are rows too
        assert L.uses_onednn(torch.randn(1, 512), big)
        assert not L.uses_onednn(torch.randn(1, 512), big[:-1])
        assert L.matmul_for(torch.randn(rows, 512), w) is L.onednn_linear
        assert L.matmul_for(torch.randn(1, 512), w) is F.linear
    with L.linear_backend("onednn"):
        assert L.uses_onednn(torch.randn(1, 512), w)


def test_torch_backend_and_unsupported_inputs_fall_back_to_f_linear():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with L.linear_backend("torch"):
        assert not L.uses_onednn(x, w)
    with L.linear_backend("auto"):
        assert not L.uses_onednn(x.double(), w.double())  # float64: torch's kernel
        assert not L.uses_onednn(x[0], w)  # 1-D input
        assert not L.uses_onednn(x[:0], w)  # no rows
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not L.uses_onednn(x, w)  # autocast decides the dtype: torch's kernel


@needs_onednn
def test_compiled_onednn_linear_equals_f_linear():
    torch._dynamo.reset()
    x, w, b = torch.randn(2, 6, 24, requires_grad=True), torch.randn(40, 24, requires_grad=True), torch.randn(40)
    b.requires_grad_()
    dy = torch.randn(2, 6, 40)
    compiled = torch.compile(L.linear, fullgraph=True)
    with L.linear_backend("onednn"):
        got = _grads(compiled, x, w, b, dy)
        with torch.no_grad():
            y, code = run_and_get_code(compiled, x, w, b)
    assert any("scratchformer.onednn_linear" in c for c in code)  # the compiled graph calls the oneDNN kernel
    assert _rel(y, F.linear(x, w, b)) < 1e-5
    for g, r in zip(got, _grads(F.linear, x, w, b, dy)):
        assert _rel(g, r) < 1e-5


def test_gradcheck_float64_linear_module():
    # float64 takes torch's kernel (the oneDNN backward is held to F.linear's in float32 above)
    lin = L.Linear(5, 3).double()
    x = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert not L.uses_onednn(x, lin.weight)
    assert torch.autograd.gradcheck(lambda t: lin(t), (x,))


@needs_onednn
def test_gpt_loss_and_gradients_agree_between_backends(monkeypatch):
    calls = _count_onednn_calls(monkeypatch)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, max_len=32, n_layer=2, n_head=2, d_model=32))
    ids = torch.randint(0, 50, (3, 16))
    results = {}
    for backend in ("torch", "onednn"):  # "onednn": every product, however small
        model.zero_grad(set_to_none=True)
        with L.linear_backend(backend):
            loss = model.loss(ids, ids)
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert calls[0] > 0  # the oneDNN side really ran through oneDNN
    (l_t, g_t), (l_o, g_o) = results["torch"], results["onednn"]
    assert abs(l_t.item() - l_o.item()) < 1e-5
    for name in g_t:
        assert _rel(g_o[name], g_t[name]) < 1e-4, name


def test_bad_backend_names_the_value_and_the_choices():
    with pytest.raises(ConfigError, match=r"'onednnn'.*did you mean 'onednn'"):
        L.set_linear_backend("onednnn")
    assert L.get_linear_backend() in L.BACKENDS  # unchanged by the refused call


def test_an_explicit_choice_overrides_a_bad_environment_variable(monkeypatch):
    monkeypatch.setattr(L, "_backend", None)
    monkeypatch.setenv("SCRATCHFORMER_LINEAR", "fast")
    with L.linear_backend("torch"):
        assert L.get_linear_backend() == "torch"
    with pytest.raises(ConfigError, match="SCRATCHFORMER_LINEAR.*'fast'"):
        L.get_linear_backend()


def test_bad_environment_variable_is_a_clear_error():
    code = "from scratchformer.nn.linear import get_linear_backend; get_linear_backend()"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"SCRATCHFORMER_LINEAR": "fast", "PATH": ""})
    assert res.returncode != 0
    assert "SCRATCHFORMER_LINEAR" in res.stderr and "'fast'" in res.stderr


def test_train_config_rejects_an_unknown_linear_backend():
    from scratchformer.train.config import TrainConfig

    with pytest.raises(ConfigError, match="linear_backend"):
        TrainConfig(linear_backend="mkl")


# ---------------------------------------------------------------- row_linear (one-row products in decoding)
@pytest.mark.parametrize("k, m", [(24, 40), (7, 300), (513, 129)])
@pytest.mark.parametrize("parts", [1, 2, 3, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_row_linear_is_f_linear(k, m, parts, bias):
    """x @ W.T + b for one row, from the (in, out) copy cut into any number of bags
    (more bags than rows included), to 1e-5 relative."""
    torch.manual_seed(k + m + parts)
    x, w = torch.randn(1, k), torch.randn(m, k)
    b = torch.randn(m) if bias else None
    ids, offsets = L.row_linear_parts(k, parts, x.device)
    assert offsets.numel() == min(parts, k) and offsets[0] == 0 and bool((offsets.diff() > 0).all())
    got = L.row_linear(x, w.t().contiguous(), b, ids, offsets)
    assert got.shape == (1, m)
    assert _rel(got, F.linear(x, w, b)) <= 1e-5
    x64, w64 = x.double(), w.double()
    assert _rel(got.double(), F.linear(x64, w64, None if b is None else b.double())) <= 1e-5


@needs_auto_onednn
def test_uses_row_linear_only_for_one_row_without_gradients_under_auto():
    big = torch.randn(L.ROW_LINEAR_MIN_WEIGHT // 256, 256)
    small = torch.randn(L.ROW_LINEAR_MIN_WEIGHT // 256 - 1, 256)
    one = torch.randn(1, 256)
    with torch.no_grad():
        assert L.uses_row_linear(one, big)
        assert not L.uses_row_linear(one, small)  # torch's addmm is faster there
        assert not L.uses_row_linear(torch.randn(2, 256), big)  # two rows: a matmul
        assert not L.uses_row_linear(one.double(), big.double())
        with L.linear_backend("onednn"):
            assert not L.uses_row_linear(one, big)  # asked for oneDNN by name
        with L.linear_backend("torch"):
            assert not L.uses_row_linear(one, big)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not L.uses_row_linear(one, big)
    assert not L.uses_row_linear(one, big)  # gradients on: autograd needs F.linear
