"""vision_tasks: MobileNetV2 classification, detection and segmentation with Lightning.

Submodules: ``models`` (plain nn.Modules), ``tasks`` (LightningModules), ``data`` (LightningDataModules,
readers, the synthetic generator), ``runner`` (what tools/train.py and tools/test.py do), ``cli`` (LightningCLI).
"""

__version__ = "0.1.0"
