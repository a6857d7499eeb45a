"""Every bad config value is a ConfigError that names the field, raised by the
config itself before any tensor or module exists."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scratchformer.errors import ConfigError
from scratchformer.models import (
    EncoderClassifierConfig,
    EncoderDecoderConfig,
    GPTConfig,
    MLPConfig,
    TransformerConfig,
)

OK = dict(vocab_size=10, d_model=16, n_head=2, n_layer=1, max_len=8)


@pytest.fixture(autouse=True)
def no_tensors(monkeypatch):
    """Building any parameter or tensor while a config validates is a failure."""

    def boom(*args, **kwargs):
        raise AssertionError("a tensor/module was built before the config error")

    for name in ("empty", "zeros", "ones", "randn", "tensor", "arange"):
        monkeypatch.setattr(torch, name, boom)
    monkeypatch.setattr(nn.Linear, "__init__", boom)
    monkeypatch.setattr(nn.Embedding, "__init__", boom)
    monkeypatch.setattr(nn.Module, "__init__", boom)


def raises(match, cls=GPTConfig, **changes):
    with pytest.raises(ConfigError, match=match) as info:
        cls(**{**OK, **changes})
    return str(info.value)


def test_valid_config_builds_no_tensor_either():
    cfg = GPTConfig(**OK)
    assert cfg.d_ff == 64 and cfg.head_dim == 8


def test_heads_must_divide_width():
    msg = raises(r"d_model=16.*n_head=3", n_head=3)
    assert "divisible" in msg


@pytest.mark.parametrize("field", ["vocab_size", "d_model", "n_head", "n_layer", "max_len"])
@pytest.mark.parametrize("value", [0, -1])
def test_sizes_must_be_positive(field, value):
    raises(rf"{field}.*positive.*{value}", **{field: value})


def test_sizes_must_be_integers():
    raises(r"d_model=16.0 is not an int", d_model=16.0)
    raises(r"n_layer=True is not an int", n_layer=True)


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_dropout_must_be_a_probability_below_one(value):
    raises(rf"dropout.*\[0, 1\).*{value}", dropout=value)


def test_dropout_zero_and_near_one_are_fine():
    GPTConfig(**OK, dropout=0.0)
    GPTConfig(**OK, dropout=0.99)


@pytest.mark.parametrize(
    "field,value,suggestion",
    [
        ("positional", "sinusodal", "sinusoidal"),
        ("positional", "Rope", "rope"),
        ("norm", "layer_norm", "layernorm"),
        ("activation", "gleu", "gelu"),
        ("attn_impl", "fussed", "fused"),
    ],
)
def test_unknown_names_with_did_you_mean(field, value, suggestion):
    msg = raises(rf"{field}='{value}'", **{field: value})
    assert f"did you mean '{suggestion}'" in msg


def test_unknown_pooling():
    msg = raises(r"pooling='max'", cls=EncoderClassifierConfig, pooling="max")
    assert "last" in msg and "mean" in msg


def test_rope_needs_even_head_width():
    raises(r"rope.*head width.*3", d_model=6, n_head=2, positional="rope")
    GPTConfig(**{**OK, "d_model": 6, "n_head": 3, "positional": "rope"})  # head width 2 is fine


def test_unknown_key_in_from_dict_suggests():
    with pytest.raises(ConfigError, match=r"'n_heads'.*did you mean 'n_head'"):
        GPTConfig.from_dict({**OK, "n_heads": 4})
    with pytest.raises(ConfigError, match=r"'pooling'"):
        GPTConfig.from_dict({**OK, "pooling": "last"})  # a field of another config
    with pytest.raises(ConfigError, match=r"'hiden_dims'.*did you mean 'hidden_dims'"):
        MLPConfig.from_dict({"hiden_dims": [3]})


def test_round_trip_and_replace_revalidate():
    cfg = EncoderClassifierConfig(**OK, pooling="mean")
    assert EncoderClassifierConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="n_head"):
        cfg.replace(n_head=5)


@pytest.mark.parametrize("value", [64, -1, 100])
def test_bad_decoder_start_token_id(value):
    with pytest.raises(ConfigError, match=rf"decoder_start_token_id={value}"):
        EncoderDecoderConfig(src_vocab_size=64, tgt_vocab_size=64, decoder_start_token_id=value)


def test_tie_encoder_decoder_embeddings_needs_equal_vocabularies():
    with pytest.raises(ConfigError, match=r"tie_encoder_decoder_embeddings.*10.*12"):
        EncoderDecoderConfig(src_vocab_size=10, tgt_vocab_size=12, tie_encoder_decoder_embeddings=True)
    EncoderDecoderConfig(src_vocab_size=12, tgt_vocab_size=12, tie_encoder_decoder_embeddings=True)


@pytest.mark.parametrize("field", ["src_vocab_size", "tgt_vocab_size", "n_encoder_layer", "n_decoder_layer"])
def test_encoder_decoder_sizes(field):
    with pytest.raises(ConfigError, match=field):
        EncoderDecoderConfig(**{field: -2})


def test_pad_token_id_inside_vocabulary():
    raises(r"pad_token_id=10", pad_token_id=10)


def test_num_classes_positive():
    raises(r"num_classes", cls=EncoderClassifierConfig, num_classes=0)


def test_mlp_config_errors():
    with pytest.raises(ConfigError, match=r"hidden_dims\[1\]"):
        MLPConfig(hidden_dims=[4, 0])
    with pytest.raises(ConfigError, match="in_dim"):
        MLPConfig(in_dim=0)


def test_errors_are_value_errors_and_base_config_validates_too():
    with pytest.raises(ValueError, match="n_head"):
        TransformerConfig(d_model=10, n_head=4)


# ---------------------------------------------------------------------- strict parsing by declared type
@pytest.mark.parametrize("text, expected", [("true", True), ("FALSE", False), ("True", True), ("0", False),
                                            ("1", True), (1, True), (0, False), (False, False)])
def test_booleans_parse_only_from_true_false_one_zero(text, expected):
    assert GPTConfig(**OK, bias=text).bias is expected


@pytest.mark.parametrize("value", ["nope", "yes", "", 2, -1, 0.0, "false ish", None, [True]])
def test_anything_else_is_not_a_boolean(value):
    message = raises(r"bias=.* is not a bool", bias=value)
    assert repr(value) in message  # names the field, the value and the type


@pytest.mark.parametrize("field, value, kind", [
    ("norm_eps", "abc", "a float or None"), ("init_std", "abc", "a float"), ("init_std", float("nan"), "a float"),
    ("init_std", float("inf"), "a float"), ("d_model", "16.5", "an int"), ("d_model", 2**63, "an int"),
    ("positional", 3, "a str"), ("attn_impl", "fast", "one of ['fused', 'reference']"),
    ("positional_options", [1], "a table/dict"),
])
def test_type_mismatch_names_field_value_and_type(field, value, kind):
    message = raises(rf"{field}=", **{field: value})
    assert repr(value) in message and kind in message, message


def test_impossible_init_std_and_norm_eps():
    raises(r"init_std=-1.0 must be > 0", init_std=-1)
    raises(r"norm_eps=0.0 must be > 0", norm_eps=0)


def test_from_dict_names_the_section_key_and_task_configs_share_the_base():
    from scratchformer.config import Config
    from scratchformer.tasks import TASKS
    from scratchformer.train.config import TrainConfig

    with pytest.raises(ConfigError, match=r"model\.tie_embeddings='maybe' is not a bool"):
        GPTConfig.from_dict({**OK, "tie_embeddings": "maybe"}, where="model")
    with pytest.raises(ConfigError, match=r"train\.lr=nan is not a float \(it must be finite\)"):
        TrainConfig.from_dict({"lr": float("nan")}, where="train")
    assert GPTConfig.from_dict({**OK, "tie_embeddings": "false"}).tie_embeddings is False
    for cls in TASKS.values():  # one config base for models, tasks and training
        assert issubclass(cls.config_class, Config)
    with pytest.raises(ConfigError, match=r"task\.reverse_answer='nope' is not a bool"):
        TASKS["addition_gpt"].config_class.from_dict({"reverse_answer": "nope"}, where="task")
