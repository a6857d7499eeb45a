"""Normalisation layers, written out, chosen by name. (LayerNorm runs torch's
fused kernel of the same formula, which ``layer_norm_formula`` writes out.)

Legend: C model width. All normalise over the last dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import unknown_name


def layer_norm_formula(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
    """LayerNorm written out: weight * (x - mean) / sqrt(var + eps) + bias over the
    last dimension, with the biased variance. x: (..., C) -> (..., C)."""
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)  # (..., 1), biased
    y = (x - mean) / torch.sqrt(var + eps) * weight
    return y if bias is None else y + bias


class LayerNorm(nn.Module):
    """LayerNorm: gain * (x - mean) / sqrt(var + eps) + bias, with the biased
    variance (the formula is ``layer_norm_formula``). Matches ``torch.nn.LayerNorm`` to 1e-6.

    The forward pass calls torch's fused kernel, which computes exactly that
    formula in one pass forward and one backward instead of about ten
    elementwise ops each way (see benchmarks/README.md for the effect on a
    training step); the tests hold it to ``layer_norm_formula``.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


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
