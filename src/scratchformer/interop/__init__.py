"""Weights in and out of Hugging Face layouts.

``gpt2_from_hf`` / ``gpt2_to_hf`` / ``save_gpt2_hf`` convert GPT-2;
``bert_from_hf`` / ``bert_to_hf`` / ``save_bert_hf`` convert BERT sequence
classifiers; ``load_hf_dir`` reads a HF directory with its tokenizer for the
command line (see ``docs/interop.md``). Nothing here unpickles arbitrary objects.
"""

from .bert import (
    BERT_FUSED,
    BERT_WEIGHT_MAP,
    bert_config_from_encoder,
    bert_from_hf,
    bert_to_hf,
    encoder_config_from_bert,
    save_bert_hf,
    state_dict_from_bert,
    state_dict_to_bert,
)
from .gpt2 import (
    GPT2_TRANSPOSED,
    GPT2_WEIGHT_MAP,
    gpt2_config_from_gpt,
    gpt2_from_hf,
    gpt2_to_hf,
    gpt_config_from_gpt2,
    save_gpt2_hf,
    state_dict_from_gpt2,
    state_dict_to_gpt2,
)
from .hf_dir import HFModelDir, is_hf_dir, load_hf_dir

__all__ = [
    "BERT_FUSED",
    "BERT_WEIGHT_MAP",
    "GPT2_TRANSPOSED",
    "GPT2_WEIGHT_MAP",
    "HFModelDir",
    "bert_config_from_encoder",
    "bert_from_hf",
    "bert_to_hf",
    "encoder_config_from_bert",
    "gpt2_config_from_gpt",
    "gpt2_from_hf",
    "gpt2_to_hf",
    "gpt_config_from_gpt2",
    "is_hf_dir",
    "load_hf_dir",
    "save_bert_hf",
    "save_gpt2_hf",
    "state_dict_from_bert",
    "state_dict_to_bert",
]
