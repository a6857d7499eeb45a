"""Weights in and out of Hugging Face layouts.

``gpt2_from_hf`` / ``gpt2_to_hf`` / ``save_gpt2_hf`` convert GPT-2 (see
``docs/interop.md``). Nothing here unpickles arbitrary objects.
"""

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

__all__ = [
    "GPT2_TRANSPOSED",
    "GPT2_WEIGHT_MAP",
    "gpt2_config_from_gpt",
    "gpt2_from_hf",
    "gpt2_to_hf",
    "gpt_config_from_gpt2",
    "save_gpt2_hf",
    "state_dict_from_gpt2",
    "state_dict_to_gpt2",
]
