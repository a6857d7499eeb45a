"""Normalisation layers, written out, chosen by name.

Legend: C model width. All normalise over the last dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import unknown_name


class LayerNorm(nn.Module):
    """LayerNorm: gain * (x - mean) / sqrt(var + eps) + bias, with the biased
    variance. Matches ``torch.nn.LayerNorm`` to 1e-6."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
        var = (x - mean).pow(2).mean(dim=-1, keepdim=True)  # (..., 1), biased
        y = (x - mean) / torch.sqrt(var + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


class TutorialLayerNorm(nn.Module):
    """The tutorials' LayerNorm: gain * (x - mean) / (std + eps) + bias, with
    the *unbiased* standard deviation and eps added outside the square root.

    This is not torch's LayerNorm: outputs differ by a factor of about
    sqrt((C-1)/C) (about 0.4% at C=128), and eps acts differently near zero
    variance. Kept so the tutorials' models can be reproduced exactly.
    """

    def __init__(self, d_model: int, eps: float = 1e-6, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        std = x.std(dim=-1, keepdim=True)  # unbiased (divides by C - 1)
        y = self.weight * (x - mean) / (std + self.eps)
        return y if self.bias is None else y + self.bias


class RMSNorm(nn.Module):
    """RMSNorm: gain * x / sqrt(mean(x^2) + eps), no centring and no bias."""

    def __init__(self, d_model: int, eps: float = 1e-6, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


class NoNorm(nn.Identity):
    """No normalisation (a rung of the ablation ladder)."""

    def __init__(self, d_model: int, eps: float = 0.0, bias: bool = True) -> None:
        super().__init__()


NORMS: dict[str, type[nn.Module]] = {
    "layernorm": LayerNorm,
    "layernorm_tutorial": TutorialLayerNorm,
    "rmsnorm": RMSNorm,
    "none": NoNorm,
}


def build_norm(name: str, d_model: int, eps: float | None = None, bias: bool = True) -> nn.Module:
    if name not in NORMS:
        raise unknown_name("norm", name, NORMS)
    return NORMS[name](d_model, bias=bias) if eps is None else NORMS[name](d_model, eps=eps, bias=bias)
