"""Position-wise feed-forward network: the same two-layer MLP at every position.

Legend: B batch, T length, C model width, F hidden width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import unknown_name

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "swiglu": None,  # gated: handled by FeedForward itself
}


class FeedForward(nn.Module):
    """up (C -> F), activation, down (F -> C), dropout.

    ``swiglu`` adds a gate: down(silu(up(x)) * gate(x)) (Shazeer, 2020).
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise unknown_name("activation", activation, ACTIVATIONS)
        self.activation = activation
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)  # (B, T, F)
        if self.gate is not None:
            h = F.silu(h) * self.gate(x)  # (B, T, F)
        else:
            h = ACTIVATIONS[self.activation](h)
        return self.dropout(self.down(h))  # (B, T, C)
