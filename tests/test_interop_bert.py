"""BERT in and out: parity with transformers on tiny random BERTs built from a config (no download)."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import BertConfig, BertForSequenceClassification, BertModel  # noqa: E402

from scratchformer.errors import CheckpointError, ConfigError  # noqa: E402
from scratchformer.interop.bert import (  # noqa: E402
    BERT_FUSED,
    BERT_WEIGHT_MAP,
    bert_from_hf,
    save_bert_hf,
    state_dict_to_bert,
)
from scratchformer.models import EncoderClassifier, EncoderClassifierConfig  # noqa: E402

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=24, type_vocab_size=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            num_labels=3)


def _hf_classifier(**changes) -> BertForSequenceClassification:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**{**TINY, **changes}), ).eval()
    with torch.no_grad():  # the biases and norms start at 0 / 1: move them, so a swapped name shows
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 99, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    types = torch.zeros(3, 11, dtype=torch.long)
    types[:, 6:] = 1
    return ids, mask, types


def _assert_parity(ours, hf, check_logits=True):
    ids, mask, types = _batch()
    with torch.no_grad():
        hf_out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        hidden, _ = ours.encode(ids, mask, types)
        logits = ours(ids, mask, token_type_ids=types)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], hf_out.hidden_states[-1][real], atol=1e-4, rtol=1e-4)
    if check_logits:
        torch.testing.assert_close(logits, hf_out.logits, atol=1e-4, rtol=1e-4)
    return logits


def test_bert_from_hf_object_matches_hidden_states_and_logits_with_padding():
    hf = _hf_classifier()
    ours = bert_from_hf(hf)
    assert ours.config.num_classes == 3 and ours.config.type_vocab_size == 2 and ours.config.norm_first is False
    _assert_parity(ours, hf)


def test_bert_from_hf_with_the_written_out_attention_too():
    hf = _hf_classifier()
    _assert_parity(bert_from_hf(hf, attn_impl="reference"), hf)


def test_bert_from_a_base_model_keeps_hidden_states_and_makes_a_fresh_head():
    hf = _hf_classifier()
    base = BertModel(hf.config).eval()
    base.load_state_dict(hf.bert.state_dict())
    ours = bert_from_hf(base)
    ids, mask, types = _batch()
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        hidden, _ = ours.encode(ids, mask, types)
    torch.testing.assert_close(hidden[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=1e-4)
    assert ours.head.weight.shape == (3, 32)


def test_bert_from_a_safetensors_directory(tmp_path):
    hf = _hf_classifier()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    _assert_parity(bert_from_hf(tmp_path), hf)


def test_bert_from_a_pytorch_bin_directory_read_without_unpickling(tmp_path, monkeypatch):
    hf = _hf_classifier()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")  # the transformers 4.x layout

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the file was unpickled")

    import pickle

    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    _assert_parity(bert_from_hf(tmp_path), hf)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pytorch_bin_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    hf = _hf_classifier()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "model.safetensors").unlink()
    torch.save({**hf.state_dict(), "evil": _RunsCode(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"refusing.*names posix\.system|refusing.*names os\.system"):
        bert_from_hf(tmp_path)
    assert not marker.exists()


def test_bert_checkpoint_problems_are_listed(tmp_path):
    hf = _hf_classifier()
    state = hf.state_dict()
    del state["bert.encoder.layer.1.attention.self.key.weight"]
    state["bert.extra.weight"] = torch.zeros(1)

    class Fake:
        config = hf.config

        def state_dict(self):
            return state

    with pytest.raises(CheckpointError, match=r"missing tensors \['bert.encoder.layer.1.attention.self.key.weight'\]"
                                              r".*unexpected tensors \['bert.extra.weight'\]"):
        bert_from_hf(Fake())
    with pytest.raises(ConfigError, match="position_embedding_type"):
        bert_from_hf(_hf_classifier(position_embedding_type="relative_key"))


def test_the_weight_map_covers_every_tensor_exactly_once():
    hf = _hf_classifier()
    ours = bert_from_hf(hf)
    names = {v.format(i=i) for v in BERT_WEIGHT_MAP.values() for i in range(2)}
    names |= {k.format(i=i) for k in BERT_FUSED for i in range(2)} | {"head.weight", "head.bias"}
    assert names == set(ours.state_dict())
    assert set(state_dict_to_bert(ours)) == {k for k in hf.state_dict() if "position_ids" not in k and "token_type_ids" not in k}


def test_bert_out_loads_in_transformers_with_the_same_logits(tmp_path):
    torch.manual_seed(3)
    cfg = EncoderClassifierConfig(vocab_size=99, d_model=32, n_head=4, n_layer=2, d_ff=40, max_len=24, num_classes=2,
                                  pooling="first", activation="gelu", norm_eps=1e-12, type_vocab_size=2,
                                  embed_norm=True, pooler=True, pad_token_id=0)
    ours = EncoderClassifier(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_bert_hf(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    hf = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    _assert_parity(ours, hf)
    back = bert_from_hf(tmp_path)
    ids, mask, types = _batch()
    with torch.no_grad():
        assert torch.equal(back(ids, mask, token_type_ids=types), ours(ids, mask, token_type_ids=types))


def test_bert_out_refuses_a_non_bert_shape(tmp_path):
    with pytest.raises(ConfigError, match="norm_first"):
        save_bert_hf(EncoderClassifier(EncoderClassifierConfig(norm_first=True, pooling="first", embed_norm=True,
                                                               pooler=True, type_vocab_size=2)), tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


# ---------------------------------------------------------------- DistilBERT
def _hf_distil():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=24,
                           num_labels=3)
    model = DistilBertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name.lower() or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_distilbert_matches_hidden_states_and_logits_with_padding(tmp_path):
    hf = _hf_distil()
    ours = bert_from_hf(hf)
    assert ours.config.type_vocab_size == 0 and ours.config.pooler_activation == "relu"
    ids, mask, _ = _batch()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden, _ = ours.encode(ids, mask)
        logits = ours(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], out.hidden_states[-1][real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=1e-4)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    with torch.no_grad():
        torch.testing.assert_close(bert_from_hf(tmp_path)(ids, mask), out.logits, atol=1e-4, rtol=1e-4)


def test_distilbert_base_model_gets_a_fresh_pre_classifier_and_head():
    from transformers import DistilBertModel

    hf = _hf_distil()
    base = DistilBertModel(hf.config).eval()
    base.load_state_dict(hf.distilbert.state_dict())
    ours = bert_from_hf(base)
    ids, mask, _ = _batch()
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden, _ = ours.encode(ids, mask)
    torch.testing.assert_close(hidden[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=1e-4)
    assert not torch.equal(ours.pooler.weight, hf.pre_classifier.weight)
