"""Task heads on top of a backbone's named feature maps. Plain ``nn.Module``s (torch + torchvision.ops only)."""

from .classifier import ClassifierHead

__all__ = ["ClassifierHead"]
