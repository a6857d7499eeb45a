"""Hugging Face-format directories on the command line: generate, eval, viz attention, and
`train init_from=DIR` (GPT-2 fine-tuning; BERT sentiment fine-tuning from a labelled file).

Every directory here is built from a config with random weights and a tokenizer trained or
written on the spot: nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel  # noqa: E402

from scratchformer.cli import main  # noqa: E402
from scratchformer.interop.hf_dir import load_hf_dir  # noqa: E402
from scratchformer.tokenizers.bpe import BPETokenizer  # noqa: E402
from scratchformer.train.run import load_run  # noqa: E402

TEXT = ("the cat sat on the mat. the dog sat on the log. a cat and a dog met on the mat.\n" * 20)
WORDS = {"1": ["good", "great", "fine", "nice", "lovely"], "0": ["bad", "awful", "poor", "sad", "ugly"]}
FILLER = ["the", "film", "was", "very", "really", "a", "plot", "and", "cast"]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 saved by transformers, with a byte-level BPE tokenizer.json trained on TEXT."""
    d = tmp_path_factory.mktemp("gpt2")
    tok = BPETokenizer.train([TEXT], vocab_size=300)
    tok.backend.save(str(d / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT classifier saved by transformers, with a WordPiece vocab.txt."""
    d = tmp_path_factory.mktemp("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *WORDS["1"], *WORDS["0"]]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(d, safe_serialization=True)
    return d


def sentiment_file(path: Path, n: int = 120, seed: int = 0) -> Path:
    """A labelled CSV: a review is positive exactly when it holds a positive word."""
    g = torch.Generator().manual_seed(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = str(i % 2)
            words = [FILLER[int(j)] for j in torch.randint(0, len(FILLER), (4,), generator=g)]
            words.insert(int(torch.randint(0, 5, (1,), generator=g)), WORDS[label][int(torch.randint(0, 5, (1,), generator=g))])
            w.writerow([" ".join(words), label])
    return path


# ---------------------------------------------------------------- GPT-2 directories
def test_generate_from_a_gpt2_directory_matches_transformers_greedy(capsys, gpt2_dir, cli):
    hf = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    tok = load_hf_dir(gpt2_dir).tokenizer
    ids = tok.encode("the cat sat")
    with torch.no_grad():
        expected = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    code, out, err = cli("generate", str(gpt2_dir), "the cat sat", "--max-new-tokens", "8")
    assert code == 0, err
    new = expected[0, len(ids):].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    assert out.strip() == "the cat sat" + tok.decode(new)


def test_generate_from_a_gpt2_directory_with_the_tutorial_sampling_options(capsys, gpt2_dir, cli):
    args = ["generate", str(gpt2_dir), "the dog", "--do-sample", "--top-k", "50", "--top-p", "0.95",
            "--temperature", "0.7", "--no-repeat-ngram-size", "2", "--max-new-tokens", "12", "--seed", "3"]
    code, out, err = cli(*args)
    assert code == 0, err
    assert out.startswith("the dog")
    assert cli(*args)[1] == out  # one seed, one text


def test_eval_a_gpt2_directory_on_a_text_file_matches_transformers_perplexity(capsys, gpt2_dir, tmp_path, cli):
    data = tmp_path / "text.txt"
    data.write_text(TEXT[:400])
    code, out, err = cli("eval", str(gpt2_dir), "--data", str(data), "--json", "--block-size", "32")
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    hf = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    ids = load_hf_dir(gpt2_dir).tokenizer.encode(TEXT[:400])
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids) - 1, 32):
            window = torch.tensor([ids[i: i + 32]])
            if window.size(1) < 2:
                continue
            loss = hf(window, labels=window).loss
            total += float(loss) * (window.size(1) - 1)
            count += window.size(1) - 1
    assert metrics["loss"] == pytest.approx(total / count, rel=1e-4)


def test_eval_a_hf_directory_needs_data(capsys, gpt2_dir, cli):
    code, _, err = cli("eval", str(gpt2_dir))
    assert code == 2 and "--data" in err and "Traceback" not in err


def test_train_init_from_a_gpt2_directory_starts_from_its_weights(capsys, gpt2_dir, tmp_path, cli):
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    run = tmp_path / "run"
    code, out, err = cli("train", f"init_from={gpt2_dir}", "task.name=text_lm", f"task.path={data}",
                             "task.block_size=32", "train.steps=1", "train.lr=0", "train.batch_size=4",
                             "train.eval_every=0", "train.threads=1", "train.warmup_steps=0", "--run-dir", str(run))
    assert code == 0, err
    ours = load_run(run).model
    hf = GPT2LMHeadModel.from_pretrained(gpt2_dir)
    assert torch.equal(ours.embed.tok.weight, hf.transformer.wte.weight)
    assert json.loads((run / "config.json").read_text())["init_from"] == str(gpt2_dir)
    code, out, err = cli("generate", str(run), "the cat", "--max-new-tokens", "4")
    assert code == 0, err  # the run saved the directory's tokenizer


# ---------------------------------------------------------------- BERT directories
def test_eval_a_bert_directory_on_a_labelled_file_matches_transformers(capsys, bert_dir, tmp_path, cli):
    data = sentiment_file(tmp_path / "reviews.csv", n=30)
    code, out, err = cli("eval", str(bert_dir), "--data", str(data), "--json")
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    hf = BertForSequenceClassification.from_pretrained(bert_dir).eval()
    tok = load_hf_dir(bert_dir).tokenizer
    rows = list(csv.DictReader(data.open()))
    right = 0
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([[tok.bos_token_id, *tok.encode(r["text"]), tok.eos_token_id]])
            right += int(hf(ids).logits.argmax(-1)) == int(r["label"])
    assert metrics["accuracy"] == pytest.approx(right / len(rows))


def test_viz_attention_on_a_bert_directory(capsys, bert_dir, tmp_path, cli):
    pytest.importorskip("bertviz")
    code, out, err = cli("viz", "attention", str(bert_dir), "a good film", "--out", str(tmp_path))
    assert code == 0, err
    names = sorted(Path(p).name for p in out.split())
    assert names == ["attention_encoder_layer0.png", "attention_encoder_layer1.png",
                     "attention_head_view.html", "attention_model_view.html"]
    html = (tmp_path / "attention_head_view.html").read_text()
    assert "[CLS]" in html and "[SEP]" in html and "good" in html


def test_sentiment_fine_tuning_from_a_bert_directory(capsys, bert_dir, tmp_path, cli):
    """`scratchformer train init_from=BERT_DIR` on a labelled CSV: the BERT weights are the start,
    the directory's tokenizer encodes the texts, and accuracy is reported (and learned)."""
    data = sentiment_file(tmp_path / "reviews.csv", n=160)
    run = tmp_path / "sentiment"
    code, out, err = cli("train", f"init_from={bert_dir}", "model.arch=encoder_classifier", "model.dropout=0.0",
        "task.name=text_classification", f"task.path={data}", "train.steps=150", "train.lr=1e-3",
        "train.batch_size=16", "train.warmup_steps=10", "train.eval_every=75", "train.weight_decay=0",
        "train.threads=1", "--run-dir", str(run))
    assert code == 0, err
    assert "accuracy" in out
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in final if r["event"] == "final" and r["split"] == "test"][0]
    assert test["accuracy"] >= 0.9, test
    train_lines = [r for r in final if r["event"] == "train"]
    assert all("accuracy" in r for r in train_lines)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["pooler"] is True and cfg["model"]["type_vocab_size"] == 2 and cfg["model"]["num_classes"] == 2
    assert cfg["task"]["tokenizer"] == str(bert_dir)


def test_init_from_bert_with_no_training_keeps_the_weights(capsys, bert_dir, tmp_path, cli):
    data = sentiment_file(tmp_path / "reviews.csv", n=40)
    run = tmp_path / "zero"
    code, _, err = cli("train", f"init_from={bert_dir}", "task.name=text_classification",
                           f"task.path={data}", "train.steps=1", "train.lr=0", "train.batch_size=4",
                           "train.eval_every=0", "train.threads=1", "train.warmup_steps=0", "--run-dir", str(run))
    assert code == 0, err
    ours = load_run(run).model
    hf = BertForSequenceClassification.from_pretrained(bert_dir)
    assert torch.equal(ours.embed.types.weight, hf.bert.embeddings.token_type_embeddings.weight)
    assert torch.equal(ours.head.weight, hf.classifier.weight)  # same two classes: the head is kept


def test_init_from_a_missing_directory_is_a_clear_error(capsys, tmp_path, cli):
    code, _, err = cli("train", f"init_from={tmp_path / 'nope'}", "train.steps=1")
    assert code == 2 and "init_from" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["generate", "gpt2-definitely-not-cached", "hi"],
                                  ["eval", "someone/bert-not-cached", "--data", "x.csv"],
                                  ["train", "init_from=gpt2-definitely-not-cached", "train.steps=1"]])
def test_a_hub_name_offline_says_what_to_download_and_where(capsys, monkeypatch, tmp_path, argv, cli):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach for the network in a test
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*argv)
    assert code == 2 and "Traceback" not in err
    assert "config.json, model.safetensors, tokenizer.json" in err and "into one directory" in err, err


def test_viz_attention_on_a_gpt2_directory(capsys, gpt2_dir, tmp_path, cli):
    pytest.importorskip("bertviz")
    code, out, err = cli("viz", "attention", str(gpt2_dir), "the cat sat", "--out", str(tmp_path),
                             "--no-html")
    assert code == 0, err
    assert sorted(Path(p).name for p in out.split()) == ["attention_decoder_layer0.png", "attention_decoder_layer1.png"]


def test_train_init_from_a_run_directory_continues_from_its_weights(capsys, tmp_path, cli):
    common = ["train.batch_size=16", "train.eval_every=0", "train.threads=1", "train.warmup_steps=0",
              "task.num_examples=300", "model.d_model=32", "model.n_head=2"]
    code, _, err = cli("train", "train.steps=3", *common, "--run-dir", str(tmp_path / "first"))
    assert code == 0, err
    code, _, err = cli("train", f"init_from={tmp_path / 'first'}", "train.steps=1", "train.lr=0",
                           "model.d_model=64", *common, "--run-dir", str(tmp_path / "second"))
    assert code == 0, err
    first, second = load_run(tmp_path / "first").model, load_run(tmp_path / "second").model
    assert second.config.d_model == 32  # the checkpoint decides the shape (model.d_model=64 ignored, with a warning)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
