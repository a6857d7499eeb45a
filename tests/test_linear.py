"""scratchformer.nn.linear: every kernel is F.linear, forward and backward; the tuner chooses by measuring,
never slower than F.linear, and fast_linears swaps kernels into a built model without changing it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor.utils import run_and_get_code

from scratchformer.errors import ConfigError
from scratchformer.models import GPT, GPTConfig
from scratchformer.nn import linear as L

needs_onednn = pytest.mark.skipif(not L.onednn_available(), reason="this PyTorch has no oneDNN linear kernel")


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
    forced = L.KernelTuner(force="onednn")  # measuring would leave products this small to F.linear
    assert forced.kernel_for(x, w, b) == "onednn"
    y = forced.linear(x, w, b)
    assert y.grad_fn is not None and "OneDNN" in type(y.grad_fn).__name__  # really the oneDNN path
    y_ref = F.linear(x, w, b)
    assert y.shape == y_ref.shape
    assert _rel(y, y_ref) < 1e-5
    dy = torch.randn_like(y_ref)
    got = _grads(forced.linear, x, w, b, dy)
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
    L.KernelTuner(force="onednn").linear(x, w).sum().backward()
    assert calls[0] == 2  # the forward and dy.T @ x; no dy @ W, since x needs no gradient
    assert x.grad is None
    assert _rel(w.grad, torch.ones(6, 5).t() @ x) < 1e-6


@needs_onednn
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # from torch.func's internals
def test_double_backward_jvp_and_torch_func_fall_back_to_torch_rules():
    torch.manual_seed(0)
    lin = nn.Linear(1024, 1024)
    L.fast_linears(lin_holder := nn.Sequential(lin), L.KernelTuner(force="onednn"))
    lin = lin_holder[0]
    x = torch.randn(3, 1024, requires_grad=True)
    assert lin.tuner.kernel_for(x, lin.weight) == "onednn"
    # double backward: the gradient of a gradient
    (g,) = torch.autograd.grad(lin(x).pow(2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    # forward-mode AD, even without autograd
    v = torch.randn_like(x)
    with torch.no_grad():
        _, tangent = torch.func.jvp(lin, (x.detach(),), (v,))
    # torch.func.grad
    fg = torch.func.grad(lambda t: lin(t).pow(2).sum())(x.detach())
    (g_ref,) = torch.autograd.grad(F.linear(x, lin.weight, lin.bias).pow(2).sum(), x, create_graph=True)
    (gg_ref,) = torch.autograd.grad(g_ref.sum(), x)
    assert _rel(g, g_ref) < 1e-5 and _rel(gg, gg_ref) < 1e-5
    assert _rel(tangent, F.linear(v, lin.weight)) < 1e-5
    assert _rel(fg, g_ref) < 1e-5


# ---------------------------------------------------------------- choosing by measurement
def test_fastest_keeps_the_baseline_unless_another_kernel_beats_it_by_the_margin():
    assert L.fastest({"torch": 1.0, "onednn": 0.96}, "torch", 0.95) == "torch"  # within noise: F.linear
    assert L.fastest({"torch": 1.0, "onednn": 0.90}, "torch", 0.95) == "onednn"
    assert L.fastest({"torch": 1.0, "onednn": 1.5, "row": 0.5}, "torch", 0.95) == "row"
    assert L.fastest({"torch": 1.0, "onednn": 2.0}, "torch", 0.95) == "torch"


def _slowed(fn, seconds: float):
    import time

    def slow(*args):
        time.sleep(seconds)
        return fn(*args)

    return slow


@needs_onednn
@pytest.mark.parametrize("slow", ["torch", "onednn"])
@pytest.mark.parametrize("grad", [False, True])
def test_the_tuner_measures_each_shape_once_and_keeps_the_faster_kernel(monkeypatch, slow, grad):
    """A kernel made 2 ms slower loses, whichever it is; the choice is measured once per shape
    class (forward and backward when gradients are wanted) and reused."""
    monkeypatch.setitem(L.KERNELS, slow, _slowed(L.KERNELS[slow], 0.002))
    measured = []
    real = L.time_candidates
    monkeypatch.setattr(L, "time_candidates", lambda c, **kw: measured.append(sorted(c)) or real(c, **kw))
    tuner = L.KernelTuner()
    x, w = torch.randn(64, 128, requires_grad=grad), torch.randn(256, 128, requires_grad=grad)
    for _ in range(3):
        y = tuner.linear(x, w)
        torch.testing.assert_close(y, F.linear(x, w))
    assert measured == [["onednn", "torch"]]
    want = "onednn" if slow == "torch" else "torch"
    assert list(tuner.choices.values()) == [want]
    key = next(iter(tuner.choices))
    assert key.startswith("linear 64x128x256 float32 cpu") and (" grad " in key) == grad
    tuner.linear(torch.randn(65, 128), w)  # another row count: another shape class
    assert len(measured) == 2 and len(tuner.choices) == 2


@pytest.mark.parametrize("grad", [False, True])
def test_measuring_leaves_the_global_rng_alone(grad):
    """A measurement must not shift dropout masks or samples: a resumed run, which measures less,
    would otherwise draw differently from the uninterrupted one."""
    x, w = torch.randn(64, 256, requires_grad=grad), torch.randn(256, 256, requires_grad=grad)
    state = torch.get_rng_state()
    tuner = L.KernelTuner()
    tuner.linear(x, w)
    assert tuner.choices  # it did measure
    assert torch.equal(torch.get_rng_state(), state)


def test_small_and_unsupported_products_take_f_linear_unmeasured(monkeypatch):
    monkeypatch.setattr(L, "time_candidates", lambda *a, **k: pytest.fail("measured"))
    tuner = L.KernelTuner()
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    assert tuner.kernel_for(x, w) == "torch"  # below MEASURE_MIN_MACS
    big_x, big_w = torch.randn(64, 256), torch.randn(256, 256)
    assert tuner.kernel_for(big_x.double(), big_w.double()) == "torch"  # float64
    assert tuner.kernel_for(big_x[0], big_w) == "torch"  # 1-D input
    assert tuner.kernel_for(big_x[:0], big_w) == "torch"  # no rows
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tuner.kernel_for(big_x, big_w) == "torch"  # autocast decides the dtype: torch's kernel
    assert tuner.choices == {}


def test_recorded_choices_are_reused_without_measuring(monkeypatch):
    monkeypatch.setattr(L, "time_candidates", lambda *a, **k: pytest.fail("measured"))
    x, w = torch.randn(64, 256), torch.randn(256, 256)
    key = L.KernelTuner.shape_key("linear", x, w, None, grad=False)
    assert L.KernelTuner(choices={key: "torch"}).kernel_for(x, w) == "torch"
    with pytest.raises(ConfigError, match="'mkl'"):
        L.KernelTuner(choices={key: "mkl"})
    # the decoding step's choices (other kernels, other names) are its to check: recorded, then kept
    decode = {"decode 1x256x256 float32 cpu nograd t2": "row", "decode-step 2x64x4x256x65 rows 1 t2": "measured"}
    assert L.KernelTuner(choices={key: "torch", **decode}).choices == {key: "torch", **decode}


def test_keep_if_faster_sets_measured_kernels_against_f_linear_once(monkeypatch):
    """The whole-pass trial runs each way (F.linear forced for one, the force lifted after); "torch"
    winning sends every product, measured or not yet, to F.linear; the outcome is recorded and
    then returned unmeasured; with nothing but F.linear chosen there is nothing to time."""
    key = L.KernelTuner.shape_key("linear", torch.randn(64, 256), torch.randn(256, 256), None, grad=False)
    forces = []
    monkeypatch.setattr(L, "time_candidates",
                        lambda c, **kw: [f() for f in c.values()] and {"measured": 2.0, "torch": 1.0})
    tuner = L.KernelTuner(choices={key: "onednn"} if L.onednn_available() else {})
    big, x = nn.Sequential(nn.Linear(256, 256, bias=False)), torch.randn(64, 256)
    L.fast_linears(big, tuner)

    def trial():
        forces.append(tuner.force)
        with torch.no_grad():
            big(x)  # the recorded shape: oneDNN, unless forced

    if not L.onednn_available():
        assert L.keep_if_faster(tuner, trial) and not forces  # only F.linear here: nothing to compare
        return
    assert not L.keep_if_faster(tuner, trial)
    assert forces == [None, None, "torch"] and tuner.force is None  # which kernels it takes, then each way
    assert tuner.choices == {key: "torch", L.WHOLE_PASS: "torch"}
    monkeypatch.setattr(L, "time_candidates", lambda *a, **k: pytest.fail("measured again"))
    assert tuner.kernel_for(torch.randn(32, 512), torch.randn(512, 512)) == "torch"  # a new shape: unmeasured
    assert not L.keep_if_faster(tuner, trial)
    assert L.keep_if_faster(L.KernelTuner(choices={key: "torch"}), trial)
    # measured choices the trial's products do not take (another model's, from a kernel cache): no timing
    other = L.KernelTuner(choices={key: "onednn"})
    holder = nn.Sequential(nn.Linear(8, 8))
    L.fast_linears(holder, other)
    assert L.keep_if_faster(other, lambda: holder(torch.randn(2, 8))) and L.WHOLE_PASS not in other.choices


def test_the_disk_cache_is_keyed_by_machine_and_read_back(tmp_path, monkeypatch):
    path = tmp_path / "kernels.json"
    x, w = torch.randn(64, 256), torch.randn(256, 256)
    first = L.KernelTuner(path=path)
    name = first.kernel_for(x, w)
    data = json.loads(path.read_text())
    assert list(data) == [L.machine_key()] and list(data[L.machine_key()].values()) == [name]
    assert L.cpu_model() in L.machine_key() and torch.__version__ in L.machine_key()
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary left behind
    monkeypatch.setattr(L, "time_candidates", lambda *a, **k: pytest.fail("measured again"))
    assert L.KernelTuner(path=path).kernel_for(x, w) == name
    decode = {"decode 1x256x256 float32 cpu nograd t2": "row", "decode-step 2x64x4x256x65 rows 1 t2": "measured"}
    first._write_disk(*next(iter(decode.items())))
    first._write_disk(*list(decode.items())[1])
    mkl = {"linear 1x1x1 float32 cpu nograd t2": "mkl"}  # not a kernel here: dropped on reading
    path.write_text(json.dumps({L.machine_key(): {**json.loads(path.read_text())[L.machine_key()], **mkl}}))
    assert L.KernelTuner(path=path).choices == {L.KernelTuner.shape_key("linear", x, w, None, False): name, **decode}
    monkeypatch.setattr(L, "machine_key", lambda: "another CPU")  # another machine measures for itself
    assert L.KernelTuner(path=path).choices == {}
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="kernels.json.*not valid JSON"):
        L.KernelTuner(path=path)


@needs_onednn
def test_compiled_onednn_linear_equals_f_linear():
    torch._dynamo.reset()
    x, w, b = torch.randn(2, 6, 24, requires_grad=True), torch.randn(40, 24, requires_grad=True), torch.randn(40)
    b.requires_grad_()
    dy = torch.randn(2, 6, 40)
    compiled = torch.compile(L.KernelTuner(force="onednn").linear, fullgraph=True)
    got = _grads(compiled, x, w, b, dy)
    with torch.no_grad():
        y, code = run_and_get_code(compiled, x, w, b)
    assert any("scratchformer.onednn_linear" in c for c in code)  # the compiled graph calls the oneDNN kernel
    assert _rel(y, F.linear(x, w, b)) < 1e-5
    for g, r in zip(got, _grads(F.linear, x, w, b, dy)):
        assert _rel(g, r) < 1e-5


# ---------------------------------------------------------------- the seam: fast_linears on a built model
def _gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=50, max_len=32, n_layer=2, n_head=2, d_model=32))


def test_models_hold_plain_linears_and_fast_linears_changes_nothing_but_the_kernel():
    model = _gpt()
    assert {type(m) for m in model.modules() if isinstance(m, nn.Linear)} == {nn.Linear}
    before = model.state_dict()
    params = {n: p for n, p in model.named_parameters()}
    tuner = L.fast_linears(model, L.KernelTuner())
    assert {type(m) for m in model.modules() if isinstance(m, nn.Linear)} == {L.TunedLinear}
    assert all(m.tuner is tuner for m in model.modules() if isinstance(m, L.TunedLinear))
    assert {n: p for n, p in model.named_parameters()} == params  # the very same Parameter objects
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert model.lm_head.weight is model.embed.tok.weight  # still tied
    assert type(_gpt().lm_head) is nn.Linear  # nothing process-wide changed
    ids = torch.randint(0, 50, (2, 8))
    torch.testing.assert_close(model(ids), _gpt()(ids))


def test_gradcheck_float64_tuned_linear():
    # float64 takes torch's kernel (the oneDNN backward is held to F.linear's in float32 above)
    holder = nn.Sequential(nn.Linear(5, 3).double())
    L.fast_linears(holder, L.KernelTuner(force="onednn" if L.onednn_available() else None))
    x = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert holder[0].tuner.kernel_for(x, holder[0].weight) == "torch"
    assert torch.autograd.gradcheck(lambda t: holder(t), (x,))


@needs_onednn
def test_gpt_loss_and_gradients_agree_between_kernels(monkeypatch):
    calls = _count_onednn_calls(monkeypatch)
    results = {}
    for backend in ("torch", "onednn"):  # "onednn": every product, however small
        model = _gpt()
        L.linear_kernels(model, backend)
        ids = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
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
        L.linear_kernels(_gpt(), "onednnn")
    with pytest.raises(ConfigError, match=r"'mkl'"):
        L.KernelTuner(force="mkl")


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


def test_decoding_kernels_eligible_for_a_product():
    from scratchformer.models.fast_decode import _eligible

    big, one = torch.randn(512, 256), torch.randn(1, 256)
    assert "row" in _eligible(one, big, copies=True)
    assert "row" not in _eligible(torch.randn(2, 256), big, copies=True)  # two rows: a matmul
    assert "copy" in _eligible(torch.randn(2, 256), big, copies=True)
    assert not {"copy", "row"} & set(_eligible(one, big, copies=False))  # no kernel on a copy
    assert _eligible(one.double(), big.double(), copies=True) == ("torch",)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _eligible(one, big, copies=True) == ("torch",)


def test_a_measured_model_compiles_and_keeps_its_choices():
    """Under torch.compile a TunedLinear takes the kernel measured eagerly (no timing while
    tracing), and a shape not yet measured takes F.linear; the outputs equal eager's."""
    torch._dynamo.reset()
    holder = nn.Sequential(nn.Linear(64, 96))
    tuner = L.fast_linears(holder, L.KernelTuner(min_macs=0))
    x = torch.randn(8, 64)
    eager = holder(x)
    assert len(tuner.choices) == 1
    compiled = torch.compile(holder, fullgraph=True)  # no graph break in a TunedLinear
    torch.testing.assert_close(compiled(x), eager)
    y = torch.randn(5, 64)
    torch.testing.assert_close(compiled(y), F.linear(y, holder[0].weight, holder[0].bias), rtol=1e-5, atol=1e-5)
    assert len(tuner.choices) == 1  # nothing measured while tracing
