"""Tests for scratchformer.tasks: each format is parsed back independently of the generator."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchformer.errors import ConfigError, DataError
from scratchformer.tasks import (
    GenerativeTask,
    IGNORE_INDEX,
    TASKS,
    build_task,
    contamination_report,
    load_wikitext,
    parse_lengths,
    task_contamination,
)
from scratchformer.tasks.text import resolve_data_path
from scratchformer.tokenizers import ArithmeticTokenizer, load_tokenizer

SHAKESPEARE = "bundled:tinyshakespeare"
TOK = ArithmeticTokenizer()


def to_base(value: int, base: int) -> str:
    digits = ""
    while True:
        value, d = divmod(value, base)
        digits = str(d) + digits
        if value == 0:
            return digits


def all_rows(task, split):
    ds = task.dataset(split)
    return [ds[i] for i in range(len(ds))]


def decode(ids) -> str:
    return TOK.decode([int(i) for i in ids])


# ====================================================================== registry
def test_registry_has_every_task():
    # (a subset: the tests below run over every registered task, so a new one is tested by registering it)
    assert set(TASKS) >= {
        "difference_sign",
        "addition_seq2seq",
        "addition_gpt",
        "addition_lengthgen",
        "text_lm",
        "text_lines_lm",
        "text_classification",
        "regression",
    }


KIND_KEYS = {
    "lm": ("input_ids", "labels"),
    "seq2seq": ("encoder_input_ids", "labels"),
    "classification": ("input_ids", "labels"),
    "regression": ("inputs", "targets"),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_builds_its_splits_the_same_way_twice_and_collates_its_kinds_keys(name, tiny_task_options):
    options = tiny_task_options(name)
    task, again = build_task(name, **options), build_task(name, **options)
    assert task.name == name and task.kind in KIND_KEYS and task.split_names
    assert again.split_names == task.split_names
    for split in task.split_names:
        ds, ds_again = task.dataset(split), again.dataset(split)
        assert len(ds) == len(ds_again) > 0, split
        n = min(4, len(ds))
        for i in range(n):  # the same seed gives the same examples
            first, second = ds[i], ds_again[i]
            assert first.keys() == second.keys()
            assert all(np.array_equal(np.asarray(first[k]), np.asarray(second[k])) for k in first), (split, i)
        batch = task.collate([ds[i] for i in range(n)])
        for key in KIND_KEYS[task.kind]:
            assert key in batch and batch[key].shape[0] == n, (split, key)
    json.dumps(task.describe(), default=str)
    if isinstance(task, GenerativeTask):  # its verifier accepts the stored answers
        prompt = task.prompts(task.split_names[-1])[0]
        assert task.check_answer(prompt.ids, prompt.answer)


def test_unknown_task_and_option_suggest_the_right_name():
    with pytest.raises(ConfigError, match="did you mean 'addition_gpt'"):
        build_task("adition_gpt")
    with pytest.raises(ConfigError, match="did you mean 'max_digits'"):
        build_task("addition_gpt", max_digit=2)


def test_parse_lengths_forms():
    assert parse_lengths("x", "3..5") == (3, 4, 5)
    assert parse_lengths("x", [5, 3, 3]) == (3, 5)
    assert parse_lengths("x", 7) == (7,)
    with pytest.raises(ConfigError):
        parse_lengths("x", "three")


# ====================================================================== difference sign
def parse_difference(expr: str, base: int) -> tuple[int, int, str, str]:
    left, minus, right = expr.partition("-")
    assert minus and left and right, expr
    return int(left[::-1], base), int(right[::-1], base), left, right


@pytest.mark.parametrize("base", [10, 3])
def test_difference_sign_format(base):
    task = build_task(
        "difference_sign", train_lengths="3..7", test_lengths="8..9", base=base,
        train_examples_per_length=40, test_examples_per_length=20, seed=1,
    )
    T = task.config.max_length
    assert T == 10  # longest length 9, plus the class token
    for split in ("train", "test"):
        texts = task.texts(split)
        assert len(texts) == len(set(texts)), "duplicates must be removed"
        for ex, text in zip(all_rows(task, split), texts):
            ids = ex["input_ids"]
            assert len(ids) == T
            n = ex["lengths"]
            assert len(text) == n
            assert decode(ids[:n]) == text
            # right padding, and the final position is the class token (the pad id)
            assert all(i == TOK.pad_token_id for i in ids[n:])
            assert ids[-1] == TOK.pad_token_id
            assert list(ex["attention_mask"]) == [1] * n + [0] * (T - n - 1) + [1]
            a, b, left, right = parse_difference(text, base)
            assert set(left + right) <= set("0123456789"[:base])
            assert left[-1] != "0" and right[-1] != "0", "no leading zeros"
            assert a >= 1 and b >= 1
            assert ex["labels"] == int(a > b)
        lengths = task.example_lengths(split)
        assert set(lengths) == set(task.config.train_lengths if split == "train" else task.config.test_lengths)


def test_difference_sign_takes_all_problems_of_a_short_length():
    task = build_task("difference_sign", train_lengths=[3, 4], test_lengths=[5], base=3,
                      train_examples_per_length=10_000, test_examples_per_length=5)
    # brute force: every "a-b" of length L with reversed base-3 digits, no leading zero, a, b >= 1
    def brute(L):
        out = set()
        for n in range(1, L - 1):
            for a in range(1, 3 ** n):
                for b in range(1, 3 ** (L - 1 - n)):
                    s = to_base(a, 3)[::-1] + "-" + to_base(b, 3)[::-1]
                    if len(s) == L:
                        out.add(s)
        return out
    texts = task.texts("train")
    lengths = task.example_lengths("train")
    for L in (3, 4):
        assert {t for t, n in zip(texts, lengths) if n == L} == brute(L)
    assert len(task.texts("test")) == 5


def test_difference_sign_too_few_problems_is_an_error_when_asked():
    with pytest.raises(DataError, match="only 81 are available"):
        build_task("difference_sign", train_lengths=[3], test_lengths=[4],
                   train_examples_per_length=100, if_too_few="error")


@pytest.mark.parametrize("bad", [[2, 3], "1..4", [0]])
def test_difference_sign_rejects_short_lengths(bad):
    with pytest.raises(ConfigError, match="length > 2"):
        build_task("difference_sign", train_lengths=bad)


def test_difference_sign_base_beyond_vocabulary():
    with pytest.raises(ConfigError, match="base must be 2..10"):
        build_task("difference_sign", base=16)


def test_difference_sign_eval_excludes_train_by_default():
    kwargs = dict(train_lengths="3..5", test_lengths="3..5", train_examples_per_length=60,
                  test_examples_per_length=60, seed=3)
    clean = build_task("difference_sign", **kwargs)
    assert task_contamination(clean)["count"] == 0
    dirty = build_task("difference_sign", exclude_train_from_eval=False, **kwargs)
    report = task_contamination(dirty)
    assert report["count"] > 0  # length 3 has 81 problems: 60 + 60 must overlap
    assert set(report["examples"]) <= set(dirty.texts("train"))


def test_difference_sign_seeds():
    make = lambda seed: build_task("difference_sign", train_examples_per_length=30,
                                   test_examples_per_length=10, seed=seed)
    assert make(5).texts("train") == make(5).texts("train")
    assert make(5).texts("train") != make(6).texts("train")


# ====================================================================== seq2seq adder
def test_addition_seq2seq_format():
    task = build_task("addition_seq2seq", train_lengths="3..8", test_lengths="3..12",
                      train_examples_per_length=50, test_examples_per_length=20, seed=2)
    for split in ("train", "test"):
        for ex in all_rows(task, split):
            L = ex["lengths"]
            src, tgt = decode(ex["encoder_input_ids"]), decode(ex["labels"])
            assert len(src) == L and len(tgt) == L + 1
            assert list(ex["encoder_attention_mask"]) == [1] * L
            left, _, right = src.partition("+")
            a, b = int(left[::-1]), int(right[::-1])
            assert a >= 1 and b >= 1
            # tutorial rule: reversed operands joined by '+', zeros appended up to L
            rebuilt = f"{str(a)[::-1]}+{str(b)[::-1]}"
            assert src == rebuilt + "0" * (L - len(rebuilt))
            # target: the sum, not reversed, then '#', then zeros up to L + 1
            s = str(a + b)
            assert tgt == s + "#" + "0" * (L - len(s))


def test_addition_seq2seq_collate_pads_mixed_lengths():
    task = build_task("addition_seq2seq", train_lengths=[3, 6], test_lengths=[7],
                      train_examples_per_length=5, test_examples_per_length=5)
    rows = all_rows(task, "train")
    short = next(r for r in rows if r["lengths"] == 3)
    long = next(r for r in rows if r["lengths"] == 6)
    batch = task.collate([short, long])
    assert batch["encoder_input_ids"].shape == (2, 6) and batch["labels"].shape == (2, 7)
    assert batch["encoder_input_ids"][0, 3:].tolist() == [TOK.pad_token_id] * 3
    assert batch["encoder_attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch["labels"][0, 4:].tolist() == [IGNORE_INDEX] * 3
    assert batch["lengths"].tolist() == [3, 6]
    assert batch["labels"].dtype == torch.long


def test_addition_seq2seq_verifier_and_prompts():
    task = build_task("addition_seq2seq", train_lengths=[5], test_lengths=[6],
                      train_examples_per_length=20, test_examples_per_length=20)
    for p in task.prompts("test"):
        assert decode(p.ids) == p.text
        assert task.check_answer(p.text, p.answer)
        assert task.check_answer(list(p.ids), p.answer)
    assert task.check_answer("21+3000", "15#00000")  # 12 + 3
    assert not task.check_answer("21+3000", "16#00000")
    assert not task.check_answer("21+3000", "15")  # no end-of-sum marker
    with pytest.raises(DataError):
        task.check_answer("12*3", "36#")


def test_addition_seq2seq_short_length_error():
    with pytest.raises(ConfigError, match="length > 2"):
        build_task("addition_seq2seq", train_lengths=[2])


def test_addition_seq2seq_eval_excludes_train():
    task = build_task("addition_seq2seq", train_lengths="3..4", test_lengths="3..4",
                      train_examples_per_length=50, test_examples_per_length=50)
    assert task_contamination(task)["count"] == 0
    # length 3 has only 81 sources; training took 50 of them
    assert sum(task.example_lengths("test") == 3) == 31


# ====================================================================== GPT adder
GPT_RE = re.compile(r"^<BOS>(\d+)([-+*])(\d+)=(-?\d+)<EOS>$")


def parse_gpt(text: str):
    m = GPT_RE.match(text)
    assert m, text
    return m.groups()


@pytest.mark.parametrize("reverse_operands", [False, True])
@pytest.mark.parametrize("reverse_answer", [False, True])
def test_addition_gpt_format(reverse_operands, reverse_answer):
    n = 3
    task = build_task("addition_gpt", max_digits=n, num_examples=300,
                      reverse_operands=reverse_operands, reverse_answer=reverse_answer)
    for split in task.split_names:
        for ex in all_rows(task, split):
            ids, labels = list(ex["input_ids"]), list(ex["labels"])
            text = decode(ids)
            A, op, B, C = parse_gpt(text)
            assert op == "+" and len(A) == n and len(B) == n and len(C) == n + 1
            a = int(A[::-1] if reverse_operands else A)
            b = int(B[::-1] if reverse_operands else B)
            c = int(C[::-1] if reverse_answer else C)
            assert a + b == c
            # loss only on the answer and EOS: everything through '=' is masked
            eq = ids.index(TOK.token_to_id("="))
            assert labels[: eq + 1] == [IGNORE_INDEX] * (eq + 1)
            assert labels[eq + 1 :] == ids[eq + 1 :]
            assert len(ids) - eq - 1 == n + 2
            assert ex["lengths"] == n


def test_addition_gpt_matches_tutorial_example_layout():
    task = build_task("addition_gpt", max_digits=2, num_examples=10_000, split_fractions=(1.0, 0.0, 0.0))
    assert task.split_names == ("train",)
    texts = set(task.texts("train"))
    assert len(texts) == 10_000  # every 2-digit problem exactly once
    assert "<BOS>06+39=045<EOS>" in texts and "<BOS>90+38=128<EOS>" in texts


def test_addition_gpt_other_operators():
    sub = build_task("addition_gpt", operator="-", max_digits=2, num_examples=400)
    for text in sub.texts("train"):
        A, _, B, C = parse_gpt(text)
        assert len(C) == 3
        assert int(A) - int(B) == int(C)
        assert C[0] in "-0"
    mul = build_task("addition_gpt", operator="*", max_digits=2, num_examples=400)
    for text in mul.texts("train"):
        A, _, B, C = parse_gpt(text)
        assert len(C) == 4 and int(A) * int(B) == int(C)


def test_addition_gpt_mixed_widths():
    task = build_task("addition_gpt", min_digits=1, max_digits=3, num_examples=900)
    seen = set()
    for split in task.split_names:
        for ex, text in zip(all_rows(task, split), task.texts(split)):
            A, _, B, C = parse_gpt(text)
            a, b = int(A), int(B)
            width = max(len(str(a)), len(str(b)))  # digits of the larger operand
            assert ex["lengths"] == width == len(A) == len(B)
            assert len(C) == width + 1 and a + b == int(C)
            seen.add(width)
    assert seen == {1, 2, 3}
    # a batch with two widths pads on the right with pad ids and -100 labels
    rows = all_rows(task, "train")
    one = next(r for r in rows if r["lengths"] == 1)
    three = next(r for r in rows if r["lengths"] == 3)
    batch = task.collate([one, three])
    # <BOS> d digits, op, d digits, =, d + 1 digits, <EOS>: 8 tokens for d = 1, 14 for d = 3
    assert batch["input_ids"].shape == (2, 14)
    assert batch["input_ids"][0, 8:].tolist() == [TOK.pad_token_id] * 6
    assert batch["labels"][0, 8:].tolist() == [IGNORE_INDEX] * 6
    assert batch["attention_mask"][0].tolist() == [1] * 8 + [0] * 6


def test_addition_gpt_splits_disjoint_and_reproducible():
    make = lambda seed: build_task("addition_gpt", max_digits=2, num_examples=3000, seed=seed)
    task = make(0)
    sets = {s: set(task.texts(s)) for s in task.split_names}
    assert [len(sets[s]) for s in ("train", "val", "test")] == [2100, 600, 300]
    for x, y in itertools.combinations(sets.values(), 2):
        assert not x & y
    assert make(0).texts("val") == task.texts("val")
    assert make(1).texts("val") != task.texts("val")


def test_addition_gpt_contaminated_only_when_asked():
    task = build_task("addition_gpt", max_digits=1, num_examples=100, exclude_train_from_eval=False)
    report = task_contamination(task, eval_split="val")
    assert report["total"] == 20 and report["count"] > 0


def test_addition_gpt_prompts_and_verifier():
    task = build_task("addition_gpt", max_digits=2, num_examples=200, reverse_answer=True)
    for p in task.prompts("test"):
        assert decode(p.ids) == p.text and p.text.endswith("=")
        A, B = p.text[len("<BOS>") : -1].split("+")
        assert p.answer == str(int(A) + int(B)).zfill(3)[::-1]
        assert task.check_answer(p.text, p.answer + "<EOS>junk")
        assert task.check_answer(list(p.ids), p.answer)
        assert not task.check_answer(p.text, p.answer[:-1])
    plain = build_task("addition_gpt", max_digits=2, num_examples=10)
    assert plain.check_answer("<BOS>12+34=", "046<EOS>")
    assert not plain.check_answer("<BOS>12+34=", "46<EOS>")
    with pytest.raises(DataError):
        plain.check_answer("<BOS>12+345=", "357")


def test_addition_gpt_bad_inputs():
    with pytest.raises(DataError, match="only 100 exist"):
        build_task("addition_gpt", max_digits=1, num_examples=101)
    with pytest.raises(DataError, match="split is empty"):
        build_task("addition_gpt", max_digits=2, num_examples=3, split_fractions=(0.9, 0.1, 0.0))
    with pytest.raises(ConfigError, match="max_digits <= 9"):
        build_task("addition_gpt", operator="*", max_digits=10)
    with pytest.raises(ConfigError, match="base must be 2..10"):
        build_task("addition_gpt", base=11)
    with pytest.raises(ConfigError, match="sum to 1"):
        build_task("addition_gpt", split_fractions=(0.5, 0.2, 0.1))


def test_addition_gpt_base_3():
    task = build_task("addition_gpt", max_digits=3, base=3, num_examples=200)
    for text in task.texts("train"):
        A, _, B, C = parse_gpt(text)
        assert set(A + B + C) <= set("012")
        assert int(A, 3) + int(B, 3) == int(C, 3) and len(C) == 4


# ====================================================================== text LM
def test_tiny_shakespeare_ships_inside_the_package():
    path = resolve_data_path(SHAKESPEARE)
    import scratchformer

    assert path.parent == Path(scratchformer.__file__).parent / "data"
    text = path.read_text(encoding="utf-8")
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    # a wheel or fresh install carries it: the file is declared as package data
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "data/*.txt" in project["tool"]["setuptools"]["package-data"]["scratchformer"]
    with pytest.raises(DataError, match="bundled:tinyshakespeare"):
        resolve_data_path("bundled:shakespeare")


def test_text_lm_on_tiny_shakespeare(tmp_path):
    task = build_task("text_lm", path=SHAKESPEARE, block_size=64, cache_dir=str(tmp_path), seed=4)
    with open(resolve_data_path(SHAKESPEARE), encoding="utf-8") as f:
        text = f.read()
    tok = task.tokenizer
    cached = list((tmp_path / "tokens").glob("*.npy"))
    assert len(cached) == 1
    tokens = np.load(cached[0], mmap_mode="r")
    assert tokens.dtype == np.uint16 and len(tokens) == len(text)
    # the split is the last 10% of tokens
    assert task.split_point == len(text) - round(len(text) * 0.1)
    train_text = text[: task.split_point]
    for i in range(0, len(task.dataset("train")), 997):
        ex = task.dataset("train")[i]
        window = tok.decode(ex["input_ids"].tolist())
        assert len(window) == 64 and window in train_text
        assert ex["labels"].tolist() == ex["input_ids"].tolist()
    # validation windows overlap by one token and cover the validation text exactly
    val = task.dataset("val")
    pieces = [tok.decode(val[i]["input_ids"].tolist()) for i in range(len(val))]
    rebuilt = pieces[0] + "".join(p[1:] for p in pieces[1:])
    assert rebuilt == text[task.split_point :]
    # a second build reuses the cache file and the same windows
    again = build_task("text_lm", path=SHAKESPEARE, block_size=64, cache_dir=str(tmp_path), seed=4)
    assert list((tmp_path / "tokens").glob("*.npy")) == cached
    assert again.dataset("train")[5]["input_ids"].tolist() == task.dataset("train")[5]["input_ids"].tolist()
    other = build_task("text_lm", path=SHAKESPEARE, block_size=64, cache_dir=str(tmp_path), seed=5)
    assert not np.array_equal(other.dataset("train").offsets, task.dataset("train").offsets)
    batch = next(iter(task.dataloader("train", batch_size=8)))
    assert batch["input_ids"].shape == (8, 64) and batch["input_ids"].dtype == torch.long


def test_text_lm_cache_key_follows_content(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabcabc\n" * 20, encoding="utf-8")
    build_task("text_lm", path=str(corpus), block_size=8, cache_dir=str(tmp_path / "cache"))
    corpus.write_text("abcabcabd\n" * 20, encoding="utf-8")
    task = build_task("text_lm", path=str(corpus), block_size=8, cache_dir=str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache" / "tokens").glob("*.npy"))) == 2
    assert "d" in task.tokenizer.decode(np.asarray(task.tokens).tolist())


def test_text_lm_bpe(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    task = build_task("text_lm", path=str(corpus), tokenizer="bpe", vocab_size=300, block_size=16,
                      cache_dir=str(tmp_path / "cache"))
    assert task.tokenizer.type_name == "bpe"
    assert task.tokenizer.decode(np.asarray(task.tokens).tolist()) == corpus.read_text()
    saved = tmp_path / "tok.json"
    task.tokenizer.save(saved)
    given = build_task(
        "text_lm", path=str(corpus), tokenizer=str(saved), block_size=16, cache_dir=str(tmp_path / "cache")
    )
    assert load_tokenizer(saved).vocab_size == given.tokenizer.vocab_size


def test_text_bad_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty corpus"):
        build_task("text_lm", path=str(empty), cache_dir=str(tmp_path))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("hello caf\u00e9 world".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt is not UTF-8: byte offset 9"):
        build_task("text_lm", path=str(latin), cache_dir=str(tmp_path))
    small = tmp_path / "small.txt"
    small.write_text("tiny corpus", encoding="utf-8")
    with pytest.raises(DataError, match="fewer than block_size=64"):
        build_task("text_lm", path=str(small), block_size=64, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        build_task("text_lm", path=str(tmp_path / "missing.txt"), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="needs path"):
        build_task("text_lm")


# ====================================================================== text lines LM
def test_text_lines_lm_local_file(tmp_path):
    lines = ["first line here", "", "   ", "second", "a much longer third line that will be cut", "4th", "fifth"]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    task = build_task("text_lines_lm", path=str(path), max_length=12, val_fraction=0.2)
    kept = [x for x in lines if x.strip()]
    assert task.texts("train") == kept[:4] and task.texts("val") == kept[4:]
    tok = task.tokenizer
    for split in task.split_names:
        for ex, line in zip(all_rows(task, split), task.texts(split)):
            full = tok.encode(line) + [tok.eos_token_id]
            assert ex["input_ids"].tolist() == full[:12]
            assert ex["lengths"] == min(len(full), 12)
    batch = task.collate(all_rows(task, "train"))
    n = batch["lengths"]
    T = batch["input_ids"].shape[1]
    for row in range(len(n)):
        pad = slice(int(n[row]), T)
        assert (batch["labels"][row, pad] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, pad] == tok.pad_token_id).all()
        assert (batch["attention_mask"][row, pad] == 0).all()


@pytest.fixture
def offline_hf(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    pytest.importorskip("datasets")


def test_load_wikitext_from_local_files(tmp_path, offline_hf):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = ["", " = Valkyria Chronicles III = \n", "", " Senjō no Valkyria 3 is a game . \n"]
    parquet = tmp_path / "wiki.parquet"
    pq.write_table(pa.table({"text": rows}), parquet)
    assert load_wikitext(split="train", data_files=str(parquet), cache_dir=str(tmp_path / "c")) == rows
    jsonl = tmp_path / "wiki.jsonl"
    jsonl.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    got = load_wikitext(split="validation", data_files={"validation": str(jsonl)}, cache_dir=str(tmp_path / "c"))
    assert got == rows
    task = build_task("text_lines_lm", path=str(parquet), val_fraction=0.5)
    assert task.texts("train") == [" = Valkyria Chronicles III = "]
    assert task.texts("val") == [" Senjō no Valkyria 3 is a game . "]


# ====================================================================== text classification
def test_text_classification_csv(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = [("I love it", "positive"), ("awful, really bad", "negative"), ("meh", "neutral")] * 10
    path.write_text("review,sentiment\n" + "".join(f'"{t}",{y}\n' for t, y in rows), encoding="utf-8")
    task = build_task("text_classification", path=str(path), text_column="review", label_column="sentiment",
                      split_fractions=(0.6, 0.2, 0.2), max_length=8)
    assert task.label_names == ("negative", "neutral", "positive")
    truth = dict(rows)
    assert sum(len(task.dataset(s)) for s in task.split_names) == 30
    for split in task.split_names:
        for ex, text in zip(all_rows(task, split), task.texts(split)):
            assert task.label_names[ex["labels"]] == truth[text]
            assert ex["input_ids"][0] == task.tokenizer.bos_token_id
            assert task.tokenizer.decode(ex["input_ids"][1:].tolist()) == text[:7]
    batch = next(iter(task.dataloader("train", batch_size=4)))
    assert batch["labels"].shape == (4,) and batch["input_ids"].shape[0] == 4
    assert task.describe()["label_names"] == ["negative", "neutral", "positive"]


def test_text_classification_jsonl_numeric_labels(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 11}) + "\n" for i in range(44)), encoding="utf-8")
    task = build_task("text_classification", path=str(path))
    assert task.label_names == tuple(str(i) for i in range(11))  # numeric order: 2 before 10
    for ex, text in zip(all_rows(task, "train"), task.texts("train")):
        assert ex["labels"] == int(text[1:]) % 11


def test_text_classification_bad_inputs(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,a\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column 'sentiment'; its columns are \['text', 'label'\]"):
        build_task("text_classification", path=str(path), label_column="sentiment")
    empty = tmp_path / "e.csv"
    empty.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match="no data rows"):
        build_task("text_classification", path=str(empty))
    bad = tmp_path / "b.jsonl"
    raw = b'{"text": "ok", "label": 1}\n{"text": "\xff"}\n'
    bad.write_bytes(raw)
    with pytest.raises(DataError, match=f"b.jsonl is not UTF-8: byte offset {raw.index(bytes([255]))} "):
        build_task("text_classification", path=str(bad))
    with pytest.raises(DataError, match="split of 1 records is empty"):
        build_task("text_classification", path=str(path))


# ====================================================================== regression
def test_regression_data_is_linear_plus_noise():
    task = build_task("regression", num_examples=4000, dim=8, noise=0.2, bias=1.5, seed=7)
    batch = task.collate(all_rows(task, "train"))
    x, y = batch["inputs"].double().numpy(), batch["targets"].double().numpy()
    assert x.shape == (3200, 8) and batch["inputs"].dtype == torch.float32
    resid = y - x @ task.weights - 1.5
    assert abs(resid.std() - 0.2) < 0.02 and abs(resid.mean()) < 0.02
    design = np.hstack([x, np.ones((len(x), 1))])
    fit = np.linalg.lstsq(design, y, rcond=None)[0]
    assert np.allclose(fit[:-1], task.weights, atol=0.02) and abs(fit[-1] - 1.5) < 0.02
    again = build_task("regression", num_examples=4000, dim=8, noise=0.2, bias=1.5, seed=7)
    assert np.array_equal(again.weights, task.weights)
    with pytest.raises(ConfigError, match="noise"):
        build_task("regression", noise=-1)
    with pytest.raises(DataError, match="test split of 3 examples is empty"):
        build_task("regression", num_examples=3, split_fractions=(0.7, 0.2999, 0.0001))


# ====================================================================== contamination
def test_contamination_report_counts_exact_matches():
    report = contamination_report(["1+1", "2+2", "3+3"], ["2+2", "4+4", "3+3", "2+2"])
    assert report["count"] == 3 and report["total"] == 4 and report["fraction"] == 0.75
    assert report["examples"] == ["2+2", "3+3", "2+2"]
    seqs = contamination_report([np.array([1, 2, 3]), [4, 5]], [torch.tensor([1, 2, 3]), (1, 2)])
    assert seqs["count"] == 1 and seqs["examples"] == [[1, 2, 3]]
    assert contamination_report(["a"], [])["fraction"] == 0.0


def test_every_task_collates_through_a_dataloader(tmp_path):
    builders = {
        "difference_sign": dict(train_examples_per_length=10, test_examples_per_length=5),
        "addition_seq2seq": dict(train_examples_per_length=10, test_examples_per_length=5),
        "addition_gpt": dict(num_examples=100),
        "regression": dict(num_examples=100, dim=4),
        "text_lm": dict(path=SHAKESPEARE, block_size=32, cache_dir=str(tmp_path)),
        "text_lines_lm": dict(path=SHAKESPEARE, max_length=16, max_lines=100),
    }
    for name, options in builders.items():
        task = build_task(name, **options)
        for split in task.split_names:
            batch = next(iter(task.dataloader(split, batch_size=4)))
            assert batch["lengths"].shape == (4,), name
            for key, value in batch.items():
                assert isinstance(value, torch.Tensor), (name, key)
        with pytest.raises(ConfigError, match="unknown split"):
            task.dataset("training")


# ====================================================================== verifier property
_VERIFIERS = {
    (op, ro, ra): build_task("addition_gpt", operator=op, max_digits=3, num_examples=10,
                             reverse_operands=ro, reverse_answer=ra)
    for op in "+-*" for ro in (False, True) for ra in (False, True)
}


@settings(max_examples=200, deadline=None)
@given(a=st.integers(0, 999), b=st.integers(0, 999), op=st.sampled_from("+-*"),
       ro=st.booleans(), ra=st.booleans())
def test_gpt_verifier_agrees_with_independent_formatting(a, b, op, ro, ra):
    task = _VERIFIERS[(op, ro, ra)]
    A, B = str(a).zfill(3), str(b).zfill(3)
    prompt = f"<BOS>{A[::-1] if ro else A}{op}{B[::-1] if ro else B}="
    if op == "-":
        digits = str(abs(a - b)).zfill(3)
        answer = ("-" if a < b else "0") + (digits[::-1] if ra else digits)
    else:
        value = str(a + b).zfill(4) if op == "+" else str(a * b).zfill(6)
        answer = value[::-1] if ra else value
    assert task.check_answer(prompt, answer + "<EOS>")
    wrong = answer[:-1] + str((int(answer[-1]) + 1) % 10)
    assert not task.check_answer(prompt, wrong + "<EOS>")


# ---------------------------------------------------------------------- text data: token array dtype, splits of the file-based tasks; generation speed
def test_token_array_dtype_follows_vocabulary_size(tmp_path):
    from scratchformer.tasks.text import cached_token_array, token_dtype

    # uint16 holds ids 0..65535, i.e. a vocabulary of up to 65536 tokens
    assert token_dtype(256) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    assert token_dtype(200_000) == np.uint32

    class BigVocab:
        """A stand-in tokenizer whose ids exceed uint16: char code + 65530."""

        vocab_size = 70_000

        def to_dict(self):
            return {"type": "big-vocab-stub"}

        def encode(self, text):
            return [ord(c) + 65_530 for c in text]

    text = "abc\nxyz\n"
    tokens = cached_token_array(text, "hash-of-text", BigVocab(), str(tmp_path))
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint32
    assert tokens.tolist() == [ord(c) + 65_530 for c in text]


def test_generating_100k_addition_examples_takes_seconds_not_minutes():
    start = time.perf_counter()
    task = build_task("addition_gpt", max_digits=3, num_examples=100_000, seed=0)
    batch = next(iter(task.dataloader("train", batch_size=64)))
    elapsed = time.perf_counter() - start
    assert sum(len(task.dataset(s)) for s in task.split_names) == 100_000
    assert batch["input_ids"].shape == (64, 1 + 3 + 1 + 3 + 1 + 4 + 1)
    assert elapsed < 5.0, f"100k addition examples took {elapsed:.1f} s"


def test_text_classification_eval_path_is_the_test_split(tmp_path):
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"text": f"good {i}", "label": "pos" if i % 2 else "neg"}) + "\n"
                             for i in range(20)), encoding="utf-8")
    test_rows = [("good 100", "pos"), ("good 101", "neg"), ("good 102", "pos")]
    test.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in test_rows), encoding="utf-8")
    task = build_task("text_classification", path=str(train), eval_path=str(test), split_fractions=(0.8, 0.1, 0.1))
    assert task.split_names == ("train", "val", "test")
    assert task.texts("test") == [t for t, _ in test_rows]  # the eval file, in order, untouched
    assert len(task.texts("train")) + len(task.texts("val")) == 20
    assert len(task.texts("val")) >= 1
    rows = [task.dataset("test")[i] for i in range(3)]
    assert [task.label_names[r["labels"]] for r in rows] == [y for _, y in test_rows]


def test_text_lines_lm_wikitext_uses_train_validation_test(monkeypatch):
    import scratchformer.tasks.text as text_mod

    calls = []

    def fake(name, split, cache_dir=None, data_files=None):
        calls.append((name, split))
        return ["", f" = {split} heading = \n", f" a {split} line . \n"]

    monkeypatch.setattr(text_mod, "load_wikitext", fake)
    task = build_task("text_lines_lm", wikitext="wikitext-103-raw-v1", max_length=64)
    assert sorted(calls) == sorted(("wikitext-103-raw-v1", s) for s in ("train", "validation", "test"))
    assert task.split_names == ("train", "val", "test")
    assert task.texts("val") == [" = validation heading = ", " a validation line . "]  # blanks dropped


# ---------------------------------------------------------------------- bad task input names the problem and the fix
def test_bad_input_not_utf8_names_offset_and_fix(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(DataError) as info:
        build_task("text_lm", path=str(bad), cache_dir=str(tmp_path))
    msg = str(info.value)
    assert "latin.txt" in msg and "not UTF-8" in msg and "byte offset 3" in msg
    assert "re-encode" in msg  # the fix


def test_bad_input_empty_corpus_names_the_fix(tmp_path):
    empty = tmp_path / "blank.txt"
    empty.write_text(" \n\t\n", encoding="utf-8")
    for name in ("text_lm", "text_lines_lm"):
        with pytest.raises(DataError) as info:
            build_task(name, path=str(empty), cache_dir=str(tmp_path))
        assert "blank.txt" in str(info.value) and "empty corpus" in str(info.value)
        assert "give a file with text" in str(info.value)


@pytest.mark.parametrize(
    "name,options,problem,fix",
    [
        ("difference_sign", dict(train_lengths=[2, 5]), "train_lengths holds 2", "use lengths >= 3"),
        ("addition_seq2seq", dict(test_lengths=[1]), "test_lengths holds 1", "use lengths >= 3"),
        ("addition_gpt", dict(max_digits=1, num_examples=500), "only 100 exist", "lower num_examples"),
        ("difference_sign", dict(train_lengths=[3], test_lengths=[4], train_examples_per_length=90,
                                 if_too_few="error"), "only 81 are available", "ask for at most 81"),
    ],
)
def test_bad_input_impossible_length_names_problem_and_fix(name, options, problem, fix):
    with pytest.raises((ConfigError, DataError)) as info:
        build_task(name, **options)
    assert problem in str(info.value) and fix in str(info.value)


def test_bad_input_block_longer_than_corpus(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("just a few characters here\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        build_task("text_lm", path=str(small), block_size=500, cache_dir=str(tmp_path))
    assert "fewer than block_size=500" in str(info.value) and "lower block_size" in str(info.value)


@pytest.mark.parametrize("name", ["difference_sign", "addition_seq2seq"])
def test_bad_input_eval_split_left_empty_by_exclusion(name):
    # length 3 has 81 problems for both tasks; training takes them all, nothing is left to test
    with pytest.raises(DataError) as info:
        build_task(name, train_lengths=[3], test_lengths=[3], train_examples_per_length=1000)
    msg = str(info.value)
    assert "test split is empty" in msg and "exclude_train_from_eval=False" in msg
    # and asking for contamination explicitly is allowed
    task = build_task(name, train_lengths=[3], test_lengths=[3], train_examples_per_length=1000,
                      exclude_train_from_eval=False)
    assert len(task.dataset("test")) > 0


def test_bad_input_empty_validation_split(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("one line only, but long enough for a block of tokens\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        build_task("text_lm", path=str(path), block_size=8, val_fraction=0.001, cache_dir=str(tmp_path))
    assert "0 validation tokens" in str(info.value) and "raise val_fraction" in str(info.value)
    with pytest.raises(DataError) as info:
        build_task("text_lines_lm", path=str(path), val_fraction=0.2)
    assert "empty validation split" in str(info.value) and "raise val_fraction" in str(info.value)
    with pytest.raises(DataError) as info:
        build_task("addition_gpt", max_digits=1, num_examples=5, split_fractions=(0.8, 0.1, 0.1))
    assert "split is empty" in str(info.value) and "raise num_examples" in str(info.value)


@pytest.mark.parametrize("name", ["difference_sign", "addition_seq2seq", "addition_gpt"])
@pytest.mark.parametrize("base", [11, 16, 1])
def test_bad_input_base_beyond_the_ten_digit_vocabulary(name, base):
    with pytest.raises(ConfigError) as info:
        build_task(name, base=base)
    assert f"base={base}" in str(info.value) and "base must be 2..10" in str(info.value)


@pytest.mark.parametrize("operator,limit", [("+", 17), ("-", 17), ("*", 9)])
def test_bad_input_more_digits_than_int64_arithmetic_holds(operator, limit):
    with pytest.raises(ConfigError) as info:
        build_task("addition_gpt", operator=operator, max_digits=limit + 1)
    assert f"max_digits={limit + 1}" in str(info.value) and f"use max_digits <= {limit}" in str(info.value)
    build_task("addition_gpt", operator=operator, max_digits=limit, num_examples=30)  # the limit itself works
