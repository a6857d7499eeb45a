"""Length-generalisation addition: formats round-trip, place-value ids, the place encoding, the knobs."""

from __future__ import annotations

import dataclasses
import random
import re

import numpy as np
import pytest
import torch

from scratchformer.errors import ConfigError, DataError
from scratchformer.experiments import load_experiment
from scratchformer.lengthgen import exact_match_by_length, with_attention_temperature
from scratchformer.models import GPT, GPTConfig
from scratchformer.nn.positional import FAR, build_positional
from scratchformer.tasks import build_task
from scratchformer.tasks.lengthgen import FORMATS, HINTS, parse_user_problem


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_round_trips_1_to_60_digits(name):
    """The answer the model is trained to emit reads back as the true sum; the prompt reads back as the operands."""
    fmt, rng = FORMATS[name], random.Random(0)
    for _ in range(300):
        a, b = _number(rng, rng.randint(1, 60)), _number(rng, rng.randint(1, 60))
        offset = rng.randint(0, len(HINTS) - 61) if fmt.hints else 0
        enc = fmt.encode(a, b, hint_offset=offset)
        assert fmt.read_answer(enc.answer) == str(int(a) + int(b))
        prompt = "".join(enc.tokens[: enc.prompt_length])
        assert fmt.read_prompt(prompt) == (a, b)
        assert enc.tokens[enc.prompt_length - 1] == "=" and enc.tokens[-1] == "<eos>"


def test_every_method_of_the_experiment_builds_its_format_and_positions():
    """Each variant of addition-lengthgen is a format and a positional encoding the model accepts."""
    exp = load_experiment("addition-lengthgen")
    plan = exp.plan()
    assert {"coupled", "coupled-rope", "coupled-rope-window", "abacus", "hints-nope"} <= set(plan.variants)
    for pos in ("learned", "sinusoidal", "rope", "alibi", "nope"):
        assert {f"{pos}-plain", f"{pos}-reversed"} <= set(plan.variants)
    for run in plan.runs:
        assert run.config.task.format in FORMATS
        build_positional(run.config.model.positional, d_model=8, n_head=2, max_len=200,
                         **run.config.model.positional_options)
    assert [r.seed for r in plan.runs if r.variant == "coupled-rope-window"] == [0, 1, 2]
    assert [r.seed for r in plan.runs if r.variant == "abacus"] == [0, 1, 2]  # every method over 3 seeds
    assert [r.seed for r in plan.runs if r.variant == "learned-reversed-long"] == [0]  # a variant's own seeds
    assert {r.seed for r in exp.plan(seeds=[4, 5]).runs} == {4, 5}  # --seeds wins


@pytest.mark.parametrize("name", ["coupled", "abacus"])
def test_place_ids_give_equal_significance_one_id(name):
    """Operand digits of place i and the token that predicts answer place i all carry id i + 1."""
    fmt = FORMATS[name]
    enc = fmt.encode("98765", "432")
    a, b = fmt.written_operands("98765", "432")  # coupled pads b to 00432
    ids = enc.position_ids
    assert len(ids) == len(enc.tokens)
    places = {}  # id -> tokens carrying it, in the prompt
    for tok, pid in zip(enc.tokens[: enc.prompt_length], ids):
        places.setdefault(pid, []).append(tok)
    # operand digits by significance: a's place i is a[-1 - i]
    for i in range(len(a)):
        expected = [a[-1 - i]] + ([b[-1 - i]] if i < len(b) else []) + (["="] if i == 0 else [])
        assert sorted(places[i + 1]) == sorted(expected)
    answer = enc.tokens[enc.prompt_length : -1]  # least significant first
    for i, tok in enumerate(answer[:-1]):  # answer digit i predicts place i + 1
        assert ids[enc.prompt_length + i] == i + 2
    assert places[0] == ["<bos>", "+"]


def test_user_problems_and_bad_input():
    assert parse_user_problem("0012 + 34=") == ("12", "34")
    with pytest.raises(DataError, match="not an addition"):
        parse_user_problem("12-3=")
    with pytest.raises(ConfigError, match="addition format"):
        build_task("addition_lengthgen", format="coupld", train_examples=10)
    with pytest.raises(ConfigError, match="max_digits"):
        build_task("addition_lengthgen", test_digits=[70], train_examples=10)


def test_task_splits_lengths_and_labels():
    task = build_task("addition_lengthgen", format="coupled", train_examples=3000, test_digits=[5, 10, 20],
                      test_examples_per_length=50, val_examples_per_length=20, in_dist_examples=100)
    assert task.split_names == ("train", "val", "test", "in_dist")
    assert sorted(set(task.example_lengths("test"))) == [5, 10, 20]
    assert set(task.example_lengths("val")) == {12}
    train = set(task.operands("train"))
    assert not train & set(task.operands("test")) and not train & set(task.operands("in_dist"))
    ex = task.dataset("train")[0]
    text = task.tokenizer.decode(ex["input_ids"].tolist())
    a, b = FORMATS["coupled"].read_prompt(text.split("=")[0] + "=")
    answer = task.tokenizer.decode([t for t in ex["labels"].tolist() if t != -100])
    assert FORMATS["coupled"].read_answer(answer) == str(int(a) + int(b))
    for p in task.prompts("test")[:20]:
        assert task.check_answer(p.ids, p.answer + "<eos>") and not task.check_answer(p.text, p.answer + "1")


def test_train_operand_lengths_are_independent_and_uniform():
    task = build_task("addition_lengthgen", train_examples=20000, in_dist_examples=0)
    la = np.array([len(a) for a, _ in task.operands("train")])
    lb = np.array([len(b) for _, b in task.operands("train")])
    counts = np.bincount(la, minlength=11)[1:]
    assert counts.min() > 0.8 * counts.mean()  # the 100 one-digit pairs are used up once: a small dent at 1
    assert abs(np.corrcoef(la, lb)[0, 1]) < 0.05


def test_place_positions_shift_non_zero_ids_in_training_only():
    torch.manual_seed(0)
    pos = build_positional("place", d_model=4, n_head=1, max_len=40, max_offset=20)
    ids = torch.tensor([[0, 3, 2, 1, 0, 1, 2]])
    x = torch.zeros(1, 7, 4)
    pos.eval()
    assert torch.equal(pos.embed(x, ids), pos.weight[ids])
    pos.train()
    seen = set()
    for _ in range(50):
        out = pos.embed(x, ids)[0]
        assert torch.equal(out[0], pos.weight[0]) and torch.equal(out[4], pos.weight[0])  # id 0 never moves
        row = [int((pos.weight == out[t]).all(dim=1).nonzero()[0]) for t in (1, 2, 3)]
        assert row[0] - row[2] == 2 and row[1] - row[2] == 1  # one offset for the whole row
        seen.add(row[2] - 1)
    assert len(seen) > 5 and max(seen) <= 20
    with pytest.raises(ConfigError, match="max_offset"):
        build_positional("place", d_model=4, n_head=1, max_len=40, max_offset=40)


def test_attention_temperature_scales_the_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, d_model=16, n_head=2, n_layer=1, max_len=16, attn_impl="reference")).eval()
    ids = torch.randint(0, 20, (2, 9))
    same = with_attention_temperature(model, 1.0)
    assert torch.allclose(same(ids), model(ids))
    hot = with_attention_temperature(model, 0.5)
    _, plain = model(ids, output_attentions=True)
    _, sharp = hot(ids, output_attentions=True)
    # one layer: the same inputs to attention, so softmax(scores / tau) from the plain weights' logs
    expected = (plain[0]["self"].log() / 0.5).softmax(-1)
    assert torch.allclose(sharp[0]["self"], expected, atol=1e-5)
    assert not torch.allclose(sharp[0]["self"], plain[0]["self"], atol=1e-3)
    assert torch.allclose(model(ids), same(ids))  # the original is untouched


def test_exact_match_by_length_counts_per_length():
    task = build_task("addition_lengthgen", format="reversed", train_examples=200, test_digits=[3, 6],
                      test_examples_per_length=30, val_examples_per_length=10, in_dist_examples=0, max_digits=12)
    model = GPT(GPTConfig(vocab_size=task.tokenizer.vocab_size, d_model=16, n_head=2, n_layer=1,
                          max_len=task.config.max_length))
    table = exact_match_by_length(model, task, "test")
    assert set(table) == {3, 6} and all(v == 0.0 for v in table.values())  # an untrained model gets none



class _Oracle(torch.nn.Module):
    """Writes the right next token of one known problem; checks the position ids it is given."""

    def __init__(self, task, a: str, b: str):
        super().__init__()
        self.enc, self.ids = task.encode(a, b)
        self.vocab = task.tokenizer.vocab_size
        self.config = GPTConfig(vocab_size=self.vocab, max_len=task.config.max_length)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        T = input_ids.size(1)
        assert input_ids[0].tolist() == self.ids[:T]
        if self.enc.position_ids is None:
            assert position_ids is None
        else:
            assert position_ids[0].tolist() == list(self.enc.position_ids[:T])
        logits = torch.zeros(1, T, self.vocab)
        logits[0, -1, self.ids[T]] = 1.0
        return logits


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_generate_writes_the_users_problem_in_the_format_and_reads_the_answer_back(name, tmp_path):
    task = build_task("addition_lengthgen", format=name, train_examples=50, val_examples_per_length=5,
                      test_examples_per_length=5, in_dist_examples=0)
    a, b = "12345678901234567890", "98765432109876543210"
    result = task.answer_user_problem(_Oracle(task, a, b), f"{a}+{b}=")
    assert result["answer"] == str(int(a) + int(b)) == "111111111011111111100"
    assert result["raw"] == task.encode(a, b)[0].answer
    assert task.present_answer(task.format_prompt(f"{a}+{b}="), result["raw"]).text == result["answer"]
    assert task.format_prompt(f"{a}+{b}=") == result["prompt"]


def test_place_rope_scores_depend_only_on_the_difference_of_place_ids():
    torch.manual_seed(0)
    pos = build_positional("place_rope", d_model=16, n_head=2, max_len=100)
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    from scratchformer.nn.attention import apply_rotary

    def score(iq: int, ik: int) -> torch.Tensor:
        cq, sq = pos.rotary(0, 1, torch.device("cpu"), torch.tensor([[iq]]))
        ck, sk = pos.rotary(0, 1, torch.device("cpu"), torch.tensor([[ik]]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum(-1)

    assert torch.allclose(score(3, 2), score(53, 52), atol=1e-5)
    assert not torch.allclose(score(3, 2), score(3, 3), atol=1e-3)
    cos, _ = pos.rotary(0, 4, torch.device("cpu"), torch.tensor([[0, 1, 2, 3]]))
    assert torch.equal(cos[0, 0], pos.rotary(0, 4, torch.device("cpu"))[0])  # ids 0..T-1: plain RoPE
    task = build_task("addition_lengthgen", format="coupled", train_examples=64, val_examples_per_length=4,
                      test_examples_per_length=4, in_dist_examples=0)
    model = GPT(GPTConfig(vocab_size=task.tokenizer.vocab_size, d_model=16, n_head=2, n_layer=1,
                          max_len=task.config.max_length, positional="place_rope"))
    batch = task.collate([task.dataset("train")[i] for i in range(4)])
    moved = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"] + 7)
    same = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    assert torch.allclose(moved, same, atol=1e-4)  # shifting every id by one amount changes nothing


def test_place_rope_window_hides_keys_whose_place_ids_are_far():
    pos = build_positional("place_rope", d_model=8, n_head=2, max_len=50, window=1)
    ids = torch.tensor([[0, 3, 2, 1, 0, 1, 2, 3]])
    bias = pos.attention_bias(0, 8, 8, True, torch.device("cpu"), ids)[0, 0]  # (T, S)
    far = (ids[0][:, None] - ids[0][None, :]).abs() > 1
    assert torch.equal(bias == FAR, far) and (bias[~far] == 0).all()
    # no ids: the indices are the ids, and a cached query (start 5) sees keys 4..6 of 0..6
    cached = pos.attention_bias(5, 1, 7, True, torch.device("cpu"))[0, 0, 0]  # (S,)
    assert (cached == 0).tolist() == [False] * 4 + [True] * 3
    with pytest.raises(ValueError, match="whole sequence"):
        pos.attention_bias(5, 1, 7, True, torch.device("cpu"), torch.tensor([[3]]))
    with pytest.raises(ConfigError, match="window"):
        build_positional("place_rope", d_model=8, n_head=2, max_len=50, window=-1)


def test_generated_answers_use_the_formats_place_ids_padded_batches_too():
    """`scratchformer eval` decodes place-value formats with their ids: batched, left-padded generation
    equals a whole-sequence greedy loop that gives every token its place id."""
    from scratchformer.evaluate import generate_answers

    task = build_task("addition_lengthgen", format="coupled", train_examples=50, val_examples_per_length=5,
                      test_digits=[3, 7], test_examples_per_length=3, in_dist_examples=0, max_digits=12)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=task.tokenizer.vocab_size, d_model=32, n_head=2, n_layer=1,
                          max_len=task.config.max_length, positional="place_rope",
                          positional_options={"window": 2})).eval()
    with torch.no_grad():
        for w in model.parameters():
            w.mul_(5)  # sharp logits: the greedy tokens depend on the ids they are given
    prompts = task.prompts("test")
    assert len({len(p.ids) for p in prompts}) > 1 and all(p.position_ids for p in prompts)
    new = 6
    got = generate_answers(model, task, prompts, max_new_tokens=new, eos_token_id=None)
    for p, answer in zip(prompts, got):
        ids, place = list(p.ids), list(p.position_ids)
        with torch.no_grad():
            for k in range(new):
                logits = model(torch.tensor([ids]), None, torch.tensor([place[: len(ids)]]))
                ids.append(int(logits[0, -1].argmax()))
                if len(place) < len(ids) + 1:
                    place.append(place[-1])
        assert answer == ids[len(p.ids):]
    ordinary = generate_answers(model, task, [dataclasses.replace(p, position_ids=None) for p in prompts],
                                max_new_tokens=new, eos_token_id=None, use_cache=False)
    assert ordinary != got  # the ids matter: this test would see them ignored


def test_generate_refuses_malformed_position_ids():
    from scratchformer.generate import generate

    model = GPT(GPTConfig(vocab_size=10, d_model=16, n_head=2, n_layer=1, max_len=32)).eval()
    prompt = torch.zeros(2, 3, dtype=torch.long)
    for bad, words in ((torch.zeros(2, 3, dtype=torch.long), "(2, prompt length + max_new_tokens = 7)"),
                       (torch.zeros(2, 7), "integer tensor"),
                       (torch.full((2, 7), -1), "must be >= 0")):
        with pytest.raises(DataError, match=re.escape(words)):
            generate(model, prompt, max_new_tokens=4, position_ids=bad)
    out = generate(model, prompt, max_new_tokens=4, position_ids=torch.arange(7).expand(2, 7))
    assert torch.equal(out, generate(model, prompt, max_new_tokens=4))  # the default ids, given: the same tokens
