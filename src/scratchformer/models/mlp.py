"""MLP: layers of Linear + ReLU, the PyTorch warm-up model."""

from __future__ import annotations

from torch import Tensor, nn

from .config import MLPConfig


class MLP(nn.Module):
    """(B, in_dim) -> (B, out_dim); ReLU between layers, none after the last."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        dims = [config.in_dim, *config.hidden_dims, config.out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
