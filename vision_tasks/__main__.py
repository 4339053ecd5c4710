"""``python -m vision_tasks fit --config configs/lightning/classification.yaml`` (LightningCLI)."""

from .cli import main

main()
