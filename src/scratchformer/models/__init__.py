"""The architectures, each configured by a typed dataclass."""

from .stack import ModelCache
from .config import (
    GPT_PRESETS,
    EncoderClassifierConfig,
    EncoderDecoderConfig,
    GPTConfig,
    MLPConfig,
    TransformerConfig,
)
from .encoder_classifier import EncoderClassifier
from .encoder_decoder import EncoderDecoder, shift_right
from .gpt import GPT
from .mlp import MLP

#: architecture name -> (model class, config class)
MODELS = {
    "gpt": (GPT, GPTConfig),
    "encoder_classifier": (EncoderClassifier, EncoderClassifierConfig),
    "encoder_decoder": (EncoderDecoder, EncoderDecoderConfig),
    "mlp": (MLP, MLPConfig),
}

__all__ = [
    "GPT", "GPTConfig", "GPT_PRESETS", "EncoderClassifier", "EncoderClassifierConfig", "EncoderDecoder",
    "EncoderDecoderConfig", "MLP", "MLPConfig", "MODELS", "ModelCache", "TransformerConfig", "shift_right",
]
