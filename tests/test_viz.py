"""Pictures: attention maps (written-out path equal to the fused one), positional encodings, curves.

Every plot is read back from its PNG: big enough, and not one flat colour.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scratchformer.cli import main
from scratchformer.models import (
    GPT,
    EncoderClassifier,
    EncoderClassifierConfig,
    EncoderDecoder,
    EncoderDecoderConfig,
    GPTConfig,
)
from scratchformer.nn.positional import vaswani_table
from scratchformer.losses import LossOutput, correct_predictions
from scratchformer.viz.attention import attention_maps, written_out_attention
from scratchformer.viz.curves import plot_curves
from scratchformer.viz.positional import positional_table, rope_scores


def assert_picture(path: Path, min_side: int = 200) -> None:
    """The PNG exists, has a sensible size and is not blank."""
    import matplotlib.image

    assert path.is_file(), path
    img = matplotlib.image.imread(str(path))  # (H, W, 4) floats in [0, 1]
    assert img.shape[0] >= min_side and img.shape[1] >= min_side, img.shape
    rgb = img[..., :3]
    assert rgb.std() > 0.02, "the picture is (nearly) one flat colour"
    assert (rgb < 0.5).mean() > 0.005, "almost nothing dark is drawn on the picture"


# ---------------------------------------------------------------- attention weights
TINY = dict(d_model=32, n_head=4, n_layer=2, max_len=16, attn_impl="fused")


def _models():
    torch.manual_seed(0)
    return {
        "gpt": GPT(GPTConfig(vocab_size=20, **TINY)),
        "encoder_classifier": EncoderClassifier(EncoderClassifierConfig(vocab_size=20, num_classes=3, pooling="first", **TINY)),
        "encoder_decoder": EncoderDecoder(EncoderDecoderConfig(src_vocab_size=20, tgt_vocab_size=18, **TINY)),
    }


def _call(model, ids, mask, weights: bool):
    if isinstance(model, EncoderDecoder):
        dec = (ids[:, :5] % 18).clone()
        return model(ids, dec, encoder_attention_mask=mask, output_attentions=weights)
    return model(ids, mask, output_attentions=weights)


@pytest.mark.parametrize("arch", ["gpt", "encoder_classifier", "encoder_decoder"])
def test_attention_weights_leave_the_outputs_unchanged(arch):
    """Asking for weights runs the written-out path; the outputs equal the fused path's (to float
    rounding), and the switch alone gives bit-identical outputs to asking for weights."""
    model = _models()[arch].eval()
    ids = torch.randint(0, 18, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        fused = _call(model, ids, mask, weights=False)
        with_weights, att = _call(model, ids, mask, weights=True)
        with written_out_attention(model):
            switched = _call(model, ids, mask, weights=False)
    assert all(m.impl == "fused" for m in model.modules() if hasattr(m, "impl"))  # restored
    torch.testing.assert_close(with_weights, fused, atol=1e-5, rtol=1e-5)
    assert torch.equal(switched, with_weights)
    layers = att["decoder"] if arch == "encoder_decoder" else att
    assert len(layers) == 2
    kinds = {"gpt": {"self"}, "encoder_classifier": {"self"}, "encoder_decoder": {"self", "cross"}}[arch]
    assert set(layers[0]) == kinds
    if arch == "encoder_decoder":
        assert len(att["encoder"]) == 2 and att["encoder"][0]["self"].shape == (2, 4, 7, 7)
        assert layers[0]["cross"].shape == (2, 4, 5, 7)
        assert float(layers[1]["cross"][1, :, :, 5:].abs().max()) == 0.0  # padded source keys get no weight


def test_encoder_layer0_weights_equal_softmax_of_the_projected_embeddings():
    """An independent computation of layer 0's weights (post-norm: its input is the embedding)."""
    model = _models()["encoder_classifier"].eval()
    ids = torch.randint(0, 20, (1, 6))
    maps = attention_maps(model, ids)
    x = model.embed(ids)  # (1, T, C)
    mha = model.encoder.blocks[0].attn.sublayer if hasattr(model.encoder.blocks[0].attn, "sublayer") else model.encoder.blocks[0].attn
    q, k, _ = (x @ mha.in_proj.weight.T + mha.in_proj.bias).split(32, dim=-1)
    q = q.view(1, 6, 4, 8).transpose(1, 2)
    k = k.view(1, 6, 4, 8).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)[0]  # (H, T, T)
    torch.testing.assert_close(maps["encoder"][0], expected, atol=1e-6, rtol=1e-5)


def test_attention_maps_kinds_shapes_and_rows():
    models = _models()
    ids = torch.randint(0, 18, (1, 6))
    gpt = attention_maps(models["gpt"], ids)
    assert set(gpt) == {"decoder"} and gpt["decoder"].shape == (2, 4, 6, 6)
    assert float(torch.triu(gpt["decoder"], diagonal=1).abs().max()) == 0.0  # causal
    s2s = attention_maps(models["encoder_decoder"], ids, ids[:, :3])
    assert {k: tuple(v.shape) for k, v in s2s.items()} == {
        "encoder": (2, 4, 6, 6), "decoder": (2, 4, 3, 3), "cross": (2, 4, 3, 6)}
    for w in [*gpt.values(), *s2s.values()]:
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))


# ---------------------------------------------------------------- positional encodings
def test_sinusoidal_table_is_the_vaswani_formula():
    torch.testing.assert_close(positional_table("sinusoidal", 20, 16), vaswani_table(20, 16))


def test_rope_scores_depend_only_on_the_offset():
    s = rope_scores(24, 16)
    assert float(s[0, 0]) == pytest.approx(1.0)
    for offset in range(-5, 6):
        diag = torch.diagonal(s, offset)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), atol=1e-5, rtol=0)
    assert float(s[10, 10]) > float(s[10, 0])  # far apart scores less than together


@pytest.mark.parametrize("name", ["sinusoidal", "sinusoidal_xl", "rope"])
def test_viz_positional_writes_and_names_a_picture(capsys, tmp_path, name, cli):
    out = tmp_path / f"{name}.png"
    code, stdout, err = cli("viz", "positional", name, "--out", str(out), "--length", "32")
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert_picture(out)


def test_viz_positional_refuses_a_scheme_without_a_picture(capsys, cli):
    code, _, err = cli("viz", "positional", "sinusoidl")
    assert code == 2 and "did you mean 'sinusoidal'" in err and "Traceback" not in err


# ---------------------------------------------------------------- curves
def _metrics(run_dir: Path, slope: float) -> Path:
    run_dir.mkdir(parents=True)
    lines = []
    for step in range(10, 110, 10):
        lines.append({"event": "train", "step": step, "loss": 3.0 / (1 + slope * step), "lr": 1e-3 * step / 100,
                      "accuracy": 1 - 1 / (1 + slope * step)})
        if step % 50 == 0:
            lines.append({"event": "eval", "step": step, "split": "val", "loss": 3.5 / (1 + slope * step),
                          "accuracy": 0.9 - 1 / (1 + slope * step)})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"event": "tra')
    return run_dir


def test_viz_curves_overlays_runs(capsys, tmp_path, cli):
    a, b = _metrics(tmp_path / "a", 0.05), _metrics(tmp_path / "b", 0.2)
    out = tmp_path / "curves.png"
    code, stdout, err = cli("viz", "curves", str(a), str(b), "--out", str(out))
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert_picture(out)
    code, stdout, _ = cli("viz", "curves", str(a))
    assert code == 0 and stdout.strip() == str(a / "plots" / "curves.png")


def test_plot_curves_draws_one_line_per_run_and_quantity(tmp_path):
    a, b = _metrics(tmp_path / "a", 0.05), _metrics(tmp_path / "b", 0.2)
    import matplotlib.figure

    drawn = {}
    original = matplotlib.figure.Figure.savefig

    def spy(self, *args, **kwargs):
        drawn.update({ax.get_ylabel(): len(ax.get_lines()) for ax in self.axes})
        return original(self, *args, **kwargs)

    matplotlib.figure.Figure.savefig = spy
    try:
        plot_curves([a, b], tmp_path / "c.png")
    finally:
        matplotlib.figure.Figure.savefig = original
    assert drawn == {"loss": 4, "accuracy": 4, "learning rate": 2}  # train + eval per run; lr per run


def test_viz_curves_on_a_missing_run_is_a_clear_error(capsys, tmp_path, cli):
    code, _, err = cli("viz", "curves", str(tmp_path / "nope"))
    assert code == 2 and "metrics.jsonl" in err


def test_correct_predictions_counts_scored_targets_only():
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])  # predicts 1, 0, 1
    out = LossOutput(torch.zeros(()), torch.tensor(2), logits, torch.tensor([[1, 1, -100]]))
    assert int(correct_predictions("lm", out)) == 1
    cls = LossOutput(torch.zeros(()), torch.tensor(3), torch.eye(3), torch.tensor([0, 2, 2]))
    assert int(correct_predictions("classification", cls)) == 2
    assert correct_predictions("regression", cls) is None


# ---------------------------------------------------------------- end to end on real runs
@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """A GPT and an encoder-decoder run, a few steps each (the pictures need weights, not skill)."""
    root = tmp_path_factory.mktemp("runs")
    common = ["train.steps=6", "train.log_every=2", "train.eval_every=3", "train.checkpoint_every=0",
              "train.batch_size=16", "train.eval_max_examples=32", "train.threads=1", "train.warmup_steps=2",
              "model.d_model=32", "model.n_head=2"]
    small = ["task.train_lengths=[3,4]", "task.test_lengths=[3,4]", "task.train_examples_per_length=100",
             "task.test_examples_per_length=20"]
    runs = {}
    for name, extra in (("gpt", ["task.num_examples=400"]),
                        ("s2s", ["model.arch=encoder_decoder", "task.name=addition_seq2seq", *small]),
                        ("cls", ["model.arch=encoder_classifier", "task.name=difference_sign", *small])):
        code = main(["train", *extra, *common, "--run-dir", str(root / name)])
        assert code == 0
        runs[name] = root / name
    return runs


def test_trainer_logs_training_accuracy(trained_runs):
    for name, key in (("gpt", "token_accuracy"), ("s2s", "token_accuracy"), ("cls", "accuracy")):
        train = [json.loads(line) for line in (trained_runs[name] / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in train if r["event"] == "train"]
        assert len(train) == 3 and all(0.0 <= r[key] <= 1.0 for r in train), (name, train)


@pytest.mark.parametrize("name,kinds", [("gpt", ["decoder"]), ("s2s", ["encoder", "decoder", "cross"]),
                                        ("cls", ["encoder"])])
def test_viz_attention_writes_pngs_per_layer_and_html(capsys, tmp_path, trained_runs, name, kinds, cli):
    pytest.importorskip("bertviz")
    text = {"gpt": "12+34=", "s2s": "12+34", "cls": "1234"}[name]
    code, stdout, err = cli("viz", "attention", str(trained_runs[name]), text, "--out", str(tmp_path))
    assert code == 0, err
    written = [Path(line) for line in stdout.split()]
    pngs = sorted(p.name for p in written if p.suffix == ".png")
    assert pngs == sorted(f"attention_{k}_layer{i}.png" for k in kinds for i in range(2))
    for p in written:
        assert p.is_file()
        if p.suffix == ".png":
            assert_picture(p)
    assert {p.name for p in written if p.suffix == ".html"} == {"attention_head_view.html", "attention_model_view.html"}


def test_viz_attention_positional_of_a_learned_run(capsys, trained_runs, cli):
    code, stdout, err = cli("viz", "positional", str(trained_runs["gpt"]))
    assert code == 0, err
    assert_picture(Path(stdout.strip()))


def test_attention_png_labels_its_axes_with_the_tokens(tmp_path):
    import matplotlib.figure

    from scratchformer.viz.attention import plot_attention

    maps = attention_maps(_models()["encoder_decoder"], torch.tensor([[1, 2, 3, 4]]), torch.tensor([[18, 5, 6]]))
    seen = []
    original = matplotlib.figure.Figure.savefig

    def spy(self, *args, **kwargs):
        ax = self.axes[0]
        seen.append(([t.get_text() for t in ax.get_yticklabels()], [t.get_text() for t in ax.get_xticklabels()]))
        return original(self, *args, **kwargs)

    matplotlib.figure.Figure.savefig = spy
    try:
        paths = plot_attention(maps, ["a", "b", "c", "d"], tmp_path, decoder_tokens=["<start>", "x", "y"])
    finally:
        matplotlib.figure.Figure.savefig = original
    assert [p.name for p in paths] == [f"attention_{k}_layer{i}.png" for k in ("encoder", "decoder", "cross")
                                       for i in range(2)]
    assert seen[0] == (["a", "b", "c", "d"], ["a", "b", "c", "d"])  # encoder: source x source
    assert seen[2] == (["<start>", "x", "y"], ["<start>", "x", "y"])  # decoder self
    assert seen[4] == (["<start>", "x", "y"], ["a", "b", "c", "d"])  # cross: decoder queries, source keys


@pytest.mark.parametrize("argv", [["viz", "--help"], ["viz", "attention", "--help"], ["viz", "positional", "--help"],
                                  ["viz", "curves", "--help"]])
def test_viz_help_has_examples(capsys, argv, cli):
    code, out, _ = cli(*argv)
    assert code == 0 and "examples:" in out and "scratchformer viz" in out


def test_viz_without_a_subcommand_is_a_usage_error(capsys, cli):
    code, _, err = cli("viz")
    assert code == 2 and "attention|positional|curves" in err


def test_training_accuracy_is_the_accuracy_on_the_examples_trained_on(capsys, tmp_path):
    """With lr=0 the weights never change, so the accuracy logged over exactly one epoch equals the
    model's accuracy on the whole training split."""
    from scratchformer.tasks import build_task

    options = dict(train_lengths=[3, 4], test_lengths=[3, 4], train_examples_per_length=60, test_examples_per_length=10)
    n = len(build_task("difference_sign", **options).dataset("train"))
    batch = next(b for b in (8, 7, 6, 5, 4, 3, 2, 1) if n % b == 0)
    steps = n // batch
    run = tmp_path / "lr0"
    code = main(["train", "model.arch=encoder_classifier", "task.name=difference_sign", "model.d_model=32",
                 "model.n_head=2", *[f"task.{k}={json.dumps(v)}" for k, v in options.items()],
                 f"train.batch_size={batch}", f"train.steps={steps}", f"train.log_every={steps}", "train.lr=0",
                 "train.eval_every=0", "train.threads=1", "train.warmup_steps=0", "--run-dir", str(run)])
    assert code == 0
    record = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x][0]
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "train", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert record["accuracy"] == pytest.approx(report["metrics"]["accuracy"], abs=1e-9)
    assert 0.0 < record["accuracy"] < 1.0  # an untrained model: a real fraction, not a constant
