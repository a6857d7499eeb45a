"""Tokenizers: formats and properties checked against the written rules
(docs/tokenizers.md), not against the code's own output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scratchformer.errors import ConfigError, DataError
from scratchformer.tokenizers import (
    ARITHMETIC_VOCAB,
    ENDOFTEXT,
    TOKENIZERS,
    ArithmeticTokenizer,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tokenizers.md"
SHAKESPEARE = Path(__file__).resolve().parents[1] / "src/scratchformer/data/tinyshakespeare.txt"


def _bpe_corpus() -> list[str]:
    if SHAKESPEARE.is_file():
        text = SHAKESPEARE.read_text(encoding="utf-8")[:30_000]
    else:  # keep the suite self-contained without the shared data
        text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 200
    return [text, "naïve café, 日本語のテキスト, emoji 🤗🚀 and tabs\tand\r\nCRLF"]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(_bpe_corpus(), vocab_size=500)


# ---------------------------------------------------------------------- char


def test_char_special_ids_are_fixed():
    tok = CharTokenizer.fit("abc")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert [tok.id_to_token(i) for i in range(4)] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert tok.special_token_ids == {0, 1, 2, 3}


def test_char_ids_follow_frequency_then_first_appearance():
    # counts: a=6, n=4, b=2, ' '=1, d=1 (' ' appears before 'd', so it wins the tie)
    tok = CharTokenizer.fit("banana bandana")
    assert tok.chars == ("a", "n", "b", " ", "d")
    assert [tok.token_to_id(c) for c in "anb d"] == [4, 5, 6, 7, 8]
    assert tok.vocab_size == 9
    assert tok.encode("band") == [6, 4, 5, 8]


def test_char_ties_across_texts_keep_first_appearance():
    # every character occurs twice; order of first appearance over the texts is z, q, x
    tok = CharTokenizer.fit(["zq", "xqzx"])
    assert tok.chars == ("z", "q", "x")
    # a generator is an accepted corpus too
    assert CharTokenizer.fit(t for t in ["zq", "xqzx"]).chars == ("z", "q", "x")


def test_char_num_words_keeps_the_most_frequent():
    tok = CharTokenizer.fit("banana bandana", num_words=2)
    assert tok.chars == ("a", "n")
    assert tok.vocab_size == 4 + 2
    assert tok.encode("band") == [3, 4, 5, 3]  # b and d are now unknown
    with pytest.raises(ConfigError, match="num_words"):
        CharTokenizer.fit("abc", num_words=0)


def test_char_unknown_policy_unk_vs_error():
    assert CharTokenizer.fit("ab").encode("axb") == [4, 3, 5]
    strict = CharTokenizer.fit("ab", unknown="error")
    with pytest.raises(DataError) as info:
        strict.encode("abaé")
    assert "'é'" in str(info.value) and "position 3" in str(info.value)
    with pytest.raises(ConfigError, match="unknown"):
        CharTokenizer.fit("ab", unknown="ignore")


@pytest.mark.parametrize("corpus", ["", [], ["", ""]])
def test_char_empty_corpus_is_an_error(corpus):
    with pytest.raises(DataError, match="empty"):
        CharTokenizer.fit(corpus)


def test_char_lower_and_decode():
    tok = CharTokenizer.fit("AaB", lower=True)
    assert tok.chars == ("a", "b")
    assert tok.encode("AB", add_special_tokens=True) == [1, 4, 5, 2]
    ids = [1, 4, 3, 5, 2, 0]
    assert tok.decode(ids) == "<bos>a<unk>b<eos><pad>"
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    assert tok.decode(torch.tensor([4, 5])) == "ab"
    with pytest.raises(DataError, match="token id 6 at position 1"):
        tok.decode([4, 6])


@given(st.text(min_size=1))
def test_char_round_trip_on_its_own_corpus(text):
    tok = CharTokenizer.fit(text, unknown="error")
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 4 + len(set(text))


# ---------------------------------------------------------------------- arithmetic

# The documented table (docs/tokenizers.md); ids 0-17 are the GPT adder tutorial's.
EXPECTED_ARITHMETIC = {
    **{str(d): d for d in range(10)},
    "+": 10, "*": 11, "-": 12, "=": 13,
    "<EOS>": 14, "<BOS>": 15, "<pad>": 16, "??": 17,
    "#": 18,
}  # fmt: skip


def test_arithmetic_ids_are_fixed():
    tok = ArithmeticTokenizer()
    assert tok.vocab_size == 19
    assert {t: tok.token_to_id(t) for t in EXPECTED_ARITHMETIC} == EXPECTED_ARITHMETIC
    assert list(ARITHMETIC_VOCAB) == sorted(EXPECTED_ARITHMETIC, key=EXPECTED_ARITHMETIC.get)
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, tok.unk_token_id) == (14, 15, 16, 17)
    assert (tok.plus_token_id, tok.times_token_id, tok.minus_token_id, tok.equals_token_id) == (10, 11, 12, 13)
    assert tok.end_of_sum_token_id == 18 and tok.digit_ids == tuple(range(10))
    assert tok.special_token_ids == {14, 15, 16, 17}


def test_arithmetic_ids_are_documented():
    rows = dict(re.findall(r"^\|\s*(\d+)\s*\|\s*`([^`]+)`\s*\|", DOCS.read_text(encoding="utf-8"), re.M))
    documented = {tok: int(i) for i, tok in rows.items() if tok in EXPECTED_ARITHMETIC}
    # digits are documented as one row "0-9"; check the rest one by one
    non_digits = {t: i for t, i in EXPECTED_ARITHMETIC.items() if not t.isdigit()}
    assert {t: documented.get(t) for t in non_digits} == non_digits
    assert re.search(r"^\|\s*0–9\s*\|\s*`0`–`9`\s*\|", DOCS.read_text(encoding="utf-8"), re.M)


def test_char_special_ids_are_documented():
    text = DOCS.read_text(encoding="utf-8")
    for i, token in enumerate(["<pad>", "<bos>", "<eos>", "<unk>"]):
        assert re.search(rf"^\|\s*{i}\s*\|\s*`{re.escape(token)}`\s*\|", text, re.M), token


def test_arithmetic_encoding_is_per_symbol_with_literal_specials():
    tok = ArithmeticTokenizer()
    assert tok.encode("<BOS>12+3=") == [15, 1, 2, 10, 3, 13]
    assert tok.encode("12+3=015", add_special_tokens=True) == [15, 1, 2, 10, 3, 13, 0, 1, 5, 14]
    assert tok.encode("9*8-7<pad>#") == [9, 11, 8, 12, 7, 16, 18]
    # '??' is the UNK literal; a lone '?' or any other symbol is unknown
    assert tok.encode("??1?x") == [17, 1, 17, 17]
    assert tok.decode([15, 4, 10, 5, 13, 0, 9, 14, 16]) == "<BOS>4+5=09<EOS><pad>"
    assert tok.decode([15, 4, 10, 5, 13, 0, 9, 14, 16], skip_special_tokens=True) == "4+5=09"


def test_arithmetic_error_policy_names_symbol_and_position():
    with pytest.raises(DataError) as info:
        ArithmeticTokenizer(unknown="error").encode("12+3=1x")
    assert "'x'" in str(info.value) and "position 6" in str(info.value)


@given(st.text(alphabet=st.sampled_from(list("0123456789+*-=#")), max_size=30))
def test_arithmetic_round_trip_and_one_token_per_symbol(text):
    tok = ArithmeticTokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


# ---------------------------------------------------------------------- batching


def _all_tokenizers(bpe: BPETokenizer) -> list[Tokenizer]:
    return [CharTokenizer.fit("0123456789+=#"), ArithmeticTokenizer(), bpe]


@pytest.mark.parametrize("side", ["right", "left"])
def test_encode_batch_padding_and_mask(side):
    tok = ArithmeticTokenizer()
    batch = tok.encode_batch(["1+1=2", "12+3=15", ""], padding_side=side)
    assert batch.input_ids.dtype == torch.long and batch.attention_mask.dtype == torch.long
    assert batch.lengths == [5, 7, 0]
    p = 16
    if side == "right":
        expected_ids = [[1, 10, 1, 13, 2, p, p], [1, 2, 10, 3, 13, 1, 5], [p] * 7]
        expected_mask = [[1, 1, 1, 1, 1, 0, 0], [1] * 7, [0] * 7]
    else:
        expected_ids = [[p, p, 1, 10, 1, 13, 2], [1, 2, 10, 3, 13, 1, 5], [p] * 7]
        expected_mask = [[0, 0, 1, 1, 1, 1, 1], [1] * 7, [0] * 7]
    assert batch.input_ids.tolist() == expected_ids
    assert batch.attention_mask.tolist() == expected_mask


@settings(max_examples=30, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="0123456789+=#", max_size=12), min_size=1, max_size=5),
    side=st.sampled_from(["right", "left"]),
    extra=st.integers(0, 3),
)
def test_encode_batch_properties(bpe, texts, side, extra):
    for tok in _all_tokenizers(bpe):
        encoded = [tok.encode(t, add_special_tokens=True) for t in texts]
        width = max(map(len, encoded)) + extra
        batch = tok.encode_batch(texts, padding_side=side, pad_to=width, add_special_tokens=True)
        assert tuple(batch.input_ids.shape) == tuple(batch.attention_mask.shape) == (len(texts), width)
        for b, ids in enumerate(encoded):
            mask = batch.attention_mask[b]
            assert batch.input_ids[b][mask == 1].tolist() == ids
            assert (batch.input_ids[b][mask == 0] == tok.pad_token_id).all()
            real = mask.nonzero().flatten().tolist()
            expected = list(range(len(ids))) if side == "right" else list(range(width - len(ids), width))
            assert real == expected


def test_encode_batch_truncation_and_length_errors():
    tok = ArithmeticTokenizer()
    texts = ["1+1=2", "12+34=046"]
    with pytest.raises(DataError) as info:
        tok.encode_batch(texts, max_length=6)
    assert "text 1" in str(info.value) and "9 tokens" in str(info.value) and "max_length=6" in str(info.value)
    batch = tok.encode_batch(texts, max_length=6, truncation=True)
    assert batch.lengths == [5, 6]
    assert batch.input_ids.tolist() == [[1, 10, 1, 13, 2, 16], [1, 2, 10, 3, 4, 13]]
    fixed = tok.encode_batch(texts, max_length=6, truncation=True, pad_to=8, padding_side="left")
    assert fixed.input_ids.shape == (2, 8) and fixed.attention_mask.sum(1).tolist() == [5, 6]
    with pytest.raises(DataError, match="pad_to=4"):
        tok.encode_batch(texts, pad_to=4)
    with pytest.raises(ConfigError, match="max_length"):
        tok.encode_batch(texts, truncation=True)
    with pytest.raises(ConfigError, match="padding_side"):
        tok.encode_batch(texts, padding_side="middle")
    with pytest.raises(DataError, match="list"):
        tok.encode_batch("1+1=2")
    with pytest.raises(DataError, match="text 1.*'x'.*position 0"):
        ArithmeticTokenizer(unknown="error").encode_batch(["1", "x"])


# ---------------------------------------------------------------------- save / load

SAMPLES = ["", "12+3=15#", "<BOS>9*9=81<EOS>", "Hello, world! naïve 🤗", "x<|endoftext|>y"]


def _check_round_trip(tok: Tokenizer, path: Path) -> None:
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["type"] == tok.type_name and TOKENIZERS[data["type"]] is type(tok)
    assert isinstance(data["format_version"], int)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    for loaded in (load_tokenizer(path), type(tok).load(path), tokenizer_from_dict(tok.to_dict())):
        assert type(loaded) is type(tok)
        assert loaded.to_dict() == tok.to_dict()
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.special_token_ids == tok.special_token_ids
        assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (
            tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id)  # fmt: skip
        for s in SAMPLES:
            assert loaded.encode(s, add_special_tokens=True) == tok.encode(s, add_special_tokens=True)
        ids = list(range(tok.vocab_size))
        assert loaded.decode(ids) == tok.decode(ids)


def test_save_load_char(tmp_path):
    _check_round_trip(CharTokenizer.fit(SAMPLES[1:], num_words=10, unknown="unk", lower=True), tmp_path / "t.json")


def test_save_load_arithmetic(tmp_path):
    _check_round_trip(ArithmeticTokenizer(), tmp_path / "t.json")
    strict = ArithmeticTokenizer(unknown="error")
    strict.save(tmp_path / "t.json")
    with pytest.raises(DataError, match="position 0"):
        load_tokenizer(tmp_path / "t.json").encode("x")


def test_save_load_bpe(bpe, tmp_path):
    _check_round_trip(bpe, tmp_path / "t.json")


def test_load_with_the_wrong_class_is_an_error(tmp_path):
    path = ArithmeticTokenizer().save(tmp_path / "t.json")
    with pytest.raises(DataError, match="'arithmetic'"):
        CharTokenizer.load(path)


@pytest.mark.parametrize(
    "content",
    [
        b"\x80\x81 not text",
        b"this is not json {",
        b"[1, 2, 3]",
        b'{"model": {"type": "BPE"}}',  # e.g. a Hugging Face tokenizer.json
        b'{"type": "wordpiece", "format_version": 1}',
        b'{"type": "char", "format_version": 1, "chars": "abc"}',
        b'{"type": "bpe", "format_version": 1, "eos_token": null, "pad_token": null, '
        b'"bos_token": null, "hf_tokenizer": {"garbage": true}}',
        b'{"type": "arithmetic", "format_version": 99, "vocab": [], "unknown": "unk"}',
    ],
)
def test_loading_garbage_names_the_path(tmp_path, content):
    path = tmp_path / "garbage.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


def test_loading_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")


# ---------------------------------------------------------------------- BPE


def test_bpe_special_tokens_follow_gpt2(bpe):
    eot = bpe.token_to_id(ENDOFTEXT)
    assert bpe.eos_token_id == bpe.pad_token_id == eot
    assert bpe.bos_token_id is None and bpe.unk_token_id is None
    assert bpe.special_token_ids == {eot}
    ids = bpe.encode("hello", add_special_tokens=True)
    assert ids[-1] == eot and eot not in ids[:-1]
    assert bpe.encode(f"a{ENDOFTEXT}b").count(eot) == 1  # the literal is one special token
    assert bpe.decode(bpe.encode(f"a{ENDOFTEXT}b"), skip_special_tokens=True) == "ab"
    assert bpe.encode_batch(["a", "the the"]).input_ids[0, -1].item() == eot


def test_bpe_learns_merges(bpe):
    assert bpe.vocab_size == 500
    assert len(bpe.encode(" the")) == 1  # frequent in the corpus, so merged
    assert len(bpe.encode("zqxj")) > 1


def test_bpe_train_rejects_a_vocab_smaller_than_the_byte_alphabet():
    with pytest.raises(ConfigError, match="257"):
        BPETokenizer.train(["abc"], vocab_size=100)
    with pytest.raises(ConfigError, match="eos_token"):
        BPETokenizer.train(["abc"], vocab_size=300, special_tokens=())


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text
    assume(ENDOFTEXT not in text)
    assert bpe.decode(bpe.encode(text, add_special_tokens=True), skip_special_tokens=True) == text


# ---------------------------------------------------------------------- GPT-2 files


def _gpt2_dir(tmp_path_factory, with_endoftext: bool) -> Path:
    if with_endoftext:
        source = BPETokenizer.train(_bpe_corpus(), vocab_size=400)
    else:
        source = BPETokenizer.train(_bpe_corpus(), vocab_size=400, special_tokens=(), eos_token=None)
    directory = tmp_path_factory.mktemp("gpt2_with" if with_endoftext else "gpt2_without")
    source.backend.model.save(str(directory))
    assert {p.name for p in directory.iterdir()} == {"vocab.json", "merges.txt"}
    return directory


@pytest.fixture(scope="module", params=[True, False], ids=["endoftext-in-vocab", "endoftext-added"])
def gpt2_pair(request, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    directory = _gpt2_dir(tmp_path_factory, request.param)
    ours = BPETokenizer.from_gpt2_files(directory)
    theirs = transformers.GPT2TokenizerFast.from_pretrained(str(directory), local_files_only=True)
    return ours, theirs, request.param


PARITY_TEXTS = [
    "",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "  leading spaces, trailing  ",
    "It's 1,234.5 o'clock -- isn't it?\n\n\tTabbed",
    "naïve café 日本語 🤗",
    f"one{ENDOFTEXT}two {ENDOFTEXT} three",
]


def test_gpt2_files_match_transformers(gpt2_pair):
    ours, theirs, with_endoftext = gpt2_pair
    eot = theirs.convert_tokens_to_ids(ENDOFTEXT)
    assert ours.eos_token_id == ours.pad_token_id == eot
    assert (eot == 0) if with_endoftext else (eot == 400)  # vocab.json id, or the next free id
    assert ours.vocab_size == len(theirs)
    for text in PARITY_TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == theirs.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40))
def test_gpt2_files_match_transformers_on_any_text(gpt2_pair, text):
    ours, theirs, _ = gpt2_pair
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)


def test_gpt2_files_errors(tmp_path):
    with pytest.raises(DataError, match="vocab.json"):
        BPETokenizer.from_gpt2_files(tmp_path)
    (tmp_path / "vocab.json").write_text("not json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(DataError, match=str(tmp_path)):
        BPETokenizer.from_gpt2_files(tmp_path)


@pytest.mark.parametrize("corpus", [[], [""], ["  \n "]])
def test_bpe_train_rejects_an_empty_corpus(corpus):
    with pytest.raises(DataError, match="empty corpus"):
        BPETokenizer.train(corpus, vocab_size=300)


# ---------------------------------------------------------------------- every registered tokenizer
@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_every_tokenizer_round_trips_text_and_its_json_file(name, tiny_tokenizer, tmp_path):
    tok, text = tiny_tokenizer(name)
    assert type(tok) is TOKENIZERS[name] and tok.type_name == name
    ids = tok.encode(text)
    assert ids and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    loaded = load_tokenizer(tok.save(tmp_path / "tokenizer.json"))
    assert type(loaded) is type(tok) and loaded.to_dict() == tok.to_dict()
    assert loaded.encode(text) == ids
