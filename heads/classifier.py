"""The classification head of Table 2: global average pool, dropout, fully connected layer."""

from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """Global average pool -> dropout -> linear.

    The paper writes the last two rows of Table 2 as "avgpool 7x7" and "conv2d 1x1, k"; a linear
    layer on the pooled vector is the same map and pools any input size. Dropout 0.2 before it, as
    torchvision (TF-Slim: keep probability 0.8, the same rate).

    Example::

        head = ClassifierHead(1280, num_classes=1000)
        logits = head(torch.randn(2, 1280, 7, 7))   # (2, 1000)
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc.weight, 0, 0.01)  # torchvision's init for this layer
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))
