"""Evaluation metrics and accuracy-by-length tables.

The metrics are checked on hand-made tensors against values worked out by
hand (or torch's cross-entropy). The per-length evaluation is checked with
*oracle* models that know the right answer (and can be told to be wrong on
some lengths), so the expected table is known without trusting the code
under test.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchformer.errors import ConfigError
from scratchformer.eval_report import evaluate_run
from scratchformer.evaluate import (
    LengthTable,
    classification_accuracy,
    evaluate_by_length,
    exact_match,
    perplexity,
    token_accuracy,
    token_accuracy_all_positions,
    top_at_n_accuracy,
)
from scratchformer.models import EncoderDecoder
from scratchformer.tasks import build_task
from scratchformer.train import build_optimizer, evaluate_split, resolve_config, train
from scratchformer.train.run import build_model
from scratchformer.viz.lengths import plot_accuracy_by_length

torch.set_num_threads(2)
PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- tensor metrics
def one_hot_logits(pred: list[list[int]], V: int = 5) -> torch.Tensor:
    return F.one_hot(torch.tensor(pred), V).float() * 5.0  # (B, T, V), argmax = pred


def test_token_accuracy_counts_only_labelled_positions():
    logits = one_hot_logits([[1, 2, 3], [4, 4, 0]])
    labels = torch.tensor([[1, 0, 3], [-100, 4, -100]])
    assert token_accuracy(logits, labels) == pytest.approx(3 / 4)  # 1 ok, 0 miss, 3 ok; 4 ok
    assert token_accuracy(logits, labels, pad_token_id=0) == pytest.approx(3 / 3)
    assert math.isnan(token_accuracy(logits, torch.full((2, 3), -100)))


def test_token_accuracy_shift_is_the_gpt_label_convention():
    # logits at t predict labels at t + 1
    logits = one_hot_logits([[2, 3, 4]])
    labels = torch.tensor([[-100, 2, 3]])
    assert token_accuracy(logits, labels, shift=True) == 1.0
    assert token_accuracy(logits, labels) == 0.0


def test_all_positions_accuracy_is_the_tutorials_toy_example():
    # tutorial 000's toy batch: argmax rows are [2, 3, 0] and [2, 2, 3]
    output = torch.tensor(
        [
            [[1.0, 2.0, 3.0, 0.5], [0.1, 0.5, 1.5, 2.0], [2.5, 1.0, 0.2, 0.1]],
            [[0.2, 0.3, 0.5, 0.1], [1.0, 1.5, 2.0, 0.5], [0.1, 0.2, 0.5, 2.5]],
        ]
    )
    target = torch.tensor([[0, 3, 2], [1, 0, 0]])
    assert token_accuracy_all_positions(output, target) == pytest.approx(1 / 6)
    # an ignored label is a miss here, and skipped by token_accuracy
    target2 = torch.tensor([[2, 3, -100], [2, 2, 3]])
    assert token_accuracy_all_positions(output, target2) == pytest.approx(5 / 6)
    assert token_accuracy(output, target2) == 1.0


def test_exact_match_and_classification_accuracy():
    pred = torch.tensor([[1, 2, 9], [1, 2, 3], [0, 0, 0]])
    labels = torch.tensor([[1, 2, -100], [1, 2, 4], [-100, -100, -100]])
    assert exact_match(pred, labels) == pytest.approx(1 / 3)  # row 0 only; an unlabelled row never matches
    assert exact_match(["12", "7"], ["12", "8"]) == 0.5
    logits = torch.tensor([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0]])
    assert classification_accuracy(logits, torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)


def test_perplexity_is_exp_of_mean_cross_entropy_without_padding():
    V = 7
    assert perplexity(torch.zeros(2, 4, V), torch.randint(0, V, (2, 4))) == pytest.approx(V)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, V, generator=g)
    labels = torch.randint(0, V, (3, 5), generator=g)
    labels[0, 3:] = -100
    labels[2, 0] = 6  # every 6 is padding below
    kept = labels.masked_fill(labels == 6, -100)
    expected = math.exp(F.cross_entropy(logits.reshape(-1, V), kept.reshape(-1), ignore_index=-100).item())
    assert perplexity(logits, labels, pad_token_id=6) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- oracle models
class OracleGPT(nn.Module):
    """Answers ``<BOS>a+b=`` prompts by the task's own formula; wrong on ``wrong_widths``."""

    def __init__(self, task, wrong_widths=()):
        super().__init__()
        self.task, self.tok, self.wrong = task, task.tokenizer, set(wrong_widths)
        self.config = SimpleNamespace(vocab_size=self.tok.vocab_size, max_len=64)
        self.embed = SimpleNamespace(pos=SimpleNamespace(supports_cache=False))
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep=0):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        for b in range(B):
            ids = input_ids[b].tolist()
            if attention_mask is not None:
                ids = [t for t, m in zip(ids, attention_mask[b].tolist()) if m]
            text = self.tok.decode(ids)
            question, _, so_far = text.removeprefix("<BOS>").partition("=")
            a, b_ = question.split("+")
            width = len(a)
            answer = self.task.expected_answer(int(a), int(b_), width) + "#"  # '#' stands for EOS below
            nxt = answer[len(so_far)] if len(so_far) < len(answer) else "#"
            if width in self.wrong and nxt.isdigit():
                nxt = str((int(nxt) + 1) % 10)
            tid = self.tok.eos_token_id if nxt == "#" else self.tok.token_to_id(nxt)
            logits[b, -1, tid] = 10.0
        return logits[:, -logits_to_keep:] if logits_to_keep else logits


class OracleSeq2Seq(nn.Module):
    """Writes the seq2seq adder's target (sum, '#', zeros) for a reversed-digit source."""

    def __init__(self, task, wrong_lengths=()):
        super().__init__()
        self.task, self.tok, self.wrong = task, task.tokenizer, set(wrong_lengths)
        V = self.tok.vocab_size
        self.config = SimpleNamespace(src_vocab_size=V, tgt_vocab_size=V, max_len=64, start_token_id=self.tok.bos_token_id)
        self.tgt_embed = SimpleNamespace(pos=SimpleNamespace(supports_cache=False), tok=SimpleNamespace(num_embeddings=V))
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode(self, src, mask=None):
        return src.float()[..., None]  # (B, S, 1): the memory is the source itself

    def source_positions(self, src):
        return None  # the plain 0..S-1

    def decode(self, dec, memory, enc_mask=None, dec_mask=None, cache=None, source_positions=None):
        B, T = dec.shape
        logits = torch.zeros(B, T, self.config.tgt_vocab_size)
        for b in range(B):
            src = [int(x) for x, m in zip(memory[b, :, 0].tolist(), enc_mask[b].tolist() if enc_mask is not None else [1] * memory.size(1)) if m]
            text = self.tok.decode(src)
            left, right = text.split("+")
            target = str(int(left[::-1]) + int(right[::-1])) + "#"
            target = target + "0" * (len(text) + 1 - len(target))
            pos = T - 1  # tokens written so far (after the start token)
            ch = target[pos] if pos < len(target) else "0"
            if len(text) in self.wrong and ch.isdigit():
                ch = str((int(ch) + 3) % 10)
            logits[b, -1, self.tok.token_to_id(ch)] = 10.0
        return logits, None


@pytest.fixture(scope="module")
def gpt_task():
    return build_task("addition_gpt", max_digits=3, min_digits=1, num_examples=300)


@pytest.fixture(scope="module")
def s2s_task():
    return build_task(
        "addition_seq2seq", train_lengths="3..4", test_lengths="3..6", train_examples_per_length=40,
        test_examples_per_length=12,
    )  # fmt: skip


def test_gpt_oracle_scores_one_and_wrong_widths_zero(gpt_task):
    table = evaluate_by_length(OracleGPT(gpt_task), gpt_task, "test", batch_size=7)
    assert [r.length for r in table.rows] == [1, 2, 3]
    assert all(r.exact_match == 1.0 and r.token_accuracy == 1.0 for r in table.rows)
    assert sum(r.n for r in table.rows) == len(gpt_task.dataset("test"))
    assert all(r.in_distribution for r in table.rows)  # every width is trained on in this task
    table = evaluate_by_length(OracleGPT(gpt_task, wrong_widths={2}), gpt_task, "test")
    by = {r.length: r for r in table.rows}
    assert by[2].exact_match == 0.0 and by[1].exact_match == 1.0 and by[3].exact_match == 1.0
    assert 0.0 < by[2].token_accuracy < 1.0  # the EOS is still right, the digits are not


def test_seq2seq_oracle_and_in_distribution_marks(s2s_task):
    table = evaluate_by_length(OracleSeq2Seq(s2s_task, wrong_lengths={6}), s2s_task, "test", max_per_length=5)
    assert [(r.length, r.in_distribution) for r in table.rows] == [(3, True), (4, True), (5, False), (6, False)]
    assert all(r.n == 5 for r in table.rows)
    assert [r.exact_match for r in table.rows] == [1.0, 1.0, 1.0, 0.0]
    s = table.summary()
    assert s["exact_match_in_distribution"] == 1.0 and s["exact_match_out_of_distribution"] == 0.5
    again = LengthTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again.rows == table.rows


def test_real_encoder_decoder_runs_through_evaluate_by_length(s2s_task):
    from scratchformer.models import EncoderDecoder, EncoderDecoderConfig

    V = s2s_task.tokenizer.vocab_size
    model = EncoderDecoder(EncoderDecoderConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=16, n_head=2, n_layer=1,
                                                max_len=16, decoder_start_token_id=s2s_task.decoder_start_token_id))
    table = evaluate_by_length(model, s2s_task, "test", max_per_length=3, num_beams=2)
    assert [r.length for r in table.rows] == [3, 4, 5, 6]
    assert all(0.0 <= r.exact_match <= 1.0 and 0.0 <= r.token_accuracy <= 1.0 for r in table.rows)
    assert table.decoding == {"num_beams": 2}


def test_top_at_n_accuracy_counts_any_correct_sample(gpt_task):
    res = top_at_n_accuracy(OracleGPT(gpt_task), gpt_task, "test", n=2, max_problems=6, temperature=0.5)
    assert res["accuracy"] == 1.0 and res["problems"] == 6
    wrong = OracleGPT(gpt_task, wrong_widths={1, 2, 3})
    # the oracle puts all mass (e^10 vs 1) on the wrong digit: with n=2 almost surely still wrong
    res = top_at_n_accuracy(wrong, gpt_task, "test", n=2, max_problems=6, generator=torch.Generator().manual_seed(0))
    assert res["accuracy"] < 0.5


def test_evaluate_by_length_refuses_a_task_without_answers():
    task = build_task("difference_sign", train_lengths="3..4", test_lengths="3..5", train_examples_per_length=20,
                      test_examples_per_length=10)  # fmt: skip
    from scratchformer.models import EncoderClassifier, EncoderClassifierConfig

    V = task.tokenizer.vocab_size
    clf = EncoderClassifier(EncoderClassifierConfig(vocab_size=V, d_model=16, n_head=2, n_layer=1, max_len=32))
    table = evaluate_by_length(clf, task, "test")  # classification: accuracy by length, no decoding
    assert [r.length for r in table.rows] == [3, 4, 5] and [r.in_distribution for r in table.rows] == [True, True, False]
    with pytest.raises(ConfigError, match="split"):
        evaluate_by_length(clf, task, "tset")


# ---------------------------------------------------------------- plots and runs
def test_plot_writes_a_png_with_several_runs(tmp_path, s2s_task):
    a = evaluate_by_length(OracleSeq2Seq(s2s_task), s2s_task, "test", max_per_length=2)
    b = evaluate_by_length(OracleSeq2Seq(s2s_task, wrong_lengths={5, 6}), s2s_task, "test", max_per_length=2)
    path = plot_accuracy_by_length({"oracle": a, "half": b.to_dict()}, tmp_path / "plots" / "acc.png")
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 2000
    with pytest.raises(ConfigError, match="metric"):
        plot_accuracy_by_length({"a": a}, tmp_path / "x.png", metric="accuracy")


def test_evaluate_run_writes_eval_json_and_plot(tmp_path):
    from scratchformer.train import resolve_config, train

    common = [
        "model.d_model=16", "model.n_head=2", "model.n_layer=1", "model.max_len=16", "task.max_digits=2",
        "task.min_digits=1", "task.num_examples=400", "train.batch_size=16", "train.eval_every=0",
        "train.checkpoint_every=0", "train.eval_max_examples=50", "train.progress=false", "train.threads=1",
        "train.steps=2", f"train.out_dir={tmp_path}",
    ]  # fmt: skip
    first = train(resolve_config(None, [*common, "name=first"])).run_dir
    second = train(resolve_config(None, [*common, "name=second", "seed=1"])).run_dir
    evaluate_run(first, max_per_length=4)
    result = evaluate_run(second, max_per_length=4, compare=[first])
    written = json.loads((second / "eval.json").read_text())
    assert written["run"] == "second" and written["split"] == "test"
    assert [r["length"] for r in written["by_length"]["rows"]] == [1, 2]
    assert {"loss", "token_accuracy"} <= set(written["metrics"])
    assert (second / "plots" / "accuracy_by_length.png").read_bytes().startswith(PNG)
    assert result["plot"] == "plots/accuracy_by_length.png"


# ---------------------------------------------------------------- split evaluation: the loss each task kind defines, one prediction at a time
# (mutations that survived the other files: labels -100 clamped to 0 in lm_loss; seq2seq logits
#  shifted by one; MSE replaced by L1)
def test_lm_eval_loss_is_next_token_cross_entropy_over_answer_tokens_only():
    task = build_task("addition_gpt", max_digits=2, min_digits=1, num_examples=200)
    torch.manual_seed(0)
    model, _ = build_model({"arch": "gpt", "d_model": 32, "n_head": 2, "n_layer": 1, "init_std": 0.2}, task)
    model.eval()
    ds = task.dataset("test")
    n = 20
    nll, count, correct = 0.0, 0, 0
    with torch.no_grad():
        for i in range(n):
            ids = torch.as_tensor(ds[i]["input_ids"])[None]  # (1, T), one unpadded example
            labels = torch.as_tensor(ds[i]["labels"])
            for t in torch.nonzero(labels != -100).flatten().tolist():  # answer digits and <EOS>
                logits = model(ids[:, :t])[0, -1]  # p(x_t | x_<t)
                nll += float(F.cross_entropy(logits[None], ids[0, t : t + 1]))
                correct += int(logits.argmax() == ids[0, t])
                count += 1
    metrics = evaluate_split(model, task, "test", batch_size=7, max_examples=n)
    assert count > n  # several answer tokens per problem, prompt tokens never scored
    assert metrics["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert metrics["token_accuracy"] == pytest.approx(correct / count)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_seq2seq_eval_loss_is_target_cross_entropy_given_the_target_prefix():
    task = build_task("addition_seq2seq", train_lengths="3..4", test_lengths="3..5", train_examples_per_length=20,
                      test_examples_per_length=4)  # fmt: skip
    torch.manual_seed(0)
    model, _ = build_model({"arch": "encoder_decoder", "d_model": 32, "n_head": 2, "n_layer": 1, "init_std": 0.2}, task)
    assert isinstance(model, EncoderDecoder)
    model.eval()
    ds = task.dataset("test")
    start = model.config.start_token_id
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(ds)):
            src = torch.as_tensor(ds[i]["encoder_input_ids"])[None]
            labels = [int(x) for x in ds[i]["labels"] if x != -100]
            for t, target in enumerate(labels):  # p(y_t | source, start, y_<t)
                dec = torch.tensor([[start, *labels[:t]]])
                logits = model(src, dec)[0, -1]
                nll += float(F.cross_entropy(logits[None], torch.tensor([target])))
                count += 1
    metrics = evaluate_split(model, task, "test", batch_size=5)
    assert metrics["loss"] == pytest.approx(nll / count, rel=1e-5)


def test_regression_eval_loss_is_the_mse_and_sgd_training_lowers_it(tmp_path, read_metrics):
    task = build_task("regression", num_examples=400, dim=4)
    torch.manual_seed(0)
    model, _ = build_model({"arch": "mlp"}, task)
    ds = task.dataset("test")
    batch = task.collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        expected = float(((model(batch["inputs"]).squeeze(-1) - batch["targets"]) ** 2).mean())
    assert evaluate_split(model, task, "test", batch_size=17)["loss"] == pytest.approx(expected, rel=1e-5)

    opt = build_optimizer("sgd", model, lr=0.1, weight_decay=0.0)
    assert type(opt) is torch.optim.SGD

    result = train(resolve_config(None, [
        "model.arch=mlp", "task.name=regression", "task.dim=4", "task.num_examples=2000", "train.optimizer=sgd",
        "train.lr=0.02", "train.schedule=constant", "train.steps=120", "train.batch_size=32", "train.eval_every=0",
        "train.checkpoint_every=0", "train.progress=false", "train.log_every=1", "train.threads=1",
        f"train.out_dir={tmp_path}", "name=reg",
    ]))  # fmt: skip
    losses = [r["loss"] for r in read_metrics(result.run_dir) if r["event"] == "train"]
    assert sum(losses[-10:]) < 0.3 * sum(losses[:10])
    assert result.metrics["test"]["loss"] < 0.3 * losses[0]
