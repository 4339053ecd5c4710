"""Fine-tuning from weights whose batch norm is folded into the convolutions (the TensorFlow releases):
unfold_batch_norms keeps the eval output and makes training-mode batch norm reproduce it."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import randomize_bn
from vision_tasks.callbacks import UnfoldBatchNorm
from vision_tasks.models import folded_batch_norms, mobilenet_v2_classifier, unfold_batch_norms
from vision_tasks.tasks import ClassificationTask

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _fold(model: nn.Module) -> None:
    """Fold every conv -> BatchNorm pair as the TFLite releases are: the conv takes the BN's scale, the BN becomes
    the identity plus the folded bias (weight 1, running mean 0, running variance 1 - eps)."""
    modules = list(model.modules())
    with torch.no_grad():
        for conv, norm in zip(modules, modules[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                norm.bias.copy_(norm.bias - norm.running_mean * scale)
                norm.weight.fill_(1.0)
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)


def _folded_classifier(num_classes: int = 4) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    trained = mobilenet_v2_classifier(num_classes=num_classes, width_mult=0.35)
    randomize_bn(trained)
    folded = mobilenet_v2_classifier(num_classes=num_classes, width_mult=0.35)
    folded.load_state_dict(trained.state_dict())
    _fold(folded)
    return trained.eval(), folded


def _layer19(model: nn.Module, images: torch.Tensor, train: bool) -> torch.Tensor:
    model.train(train)
    with torch.no_grad():
        return model.backbone(model.preprocess(images))["layer19"]


def test_unfolding_keeps_the_eval_output_and_revives_training_mode():
    trained, folded = _folded_classifier()
    images = torch.rand(24, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded.eval()(images), trained(images), rtol=1e-4, atol=1e-4)  # folding is exact
    assert len(folded_batch_norms(folded)) == 52 and not folded_batch_norms(trained)
    state = {k: v.clone() for k, v in folded.state_dict().items()}
    dead = _layer19(folded, images, train=True)  # batch statistics erase the folded scale and offset
    folded.load_state_dict(state)  # (that forward moved the running statistics)
    count = unfold_batch_norms(folded, [images[:12], images[12:]])
    assert count == 52 and not folded_batch_norms(folded)
    with torch.no_grad():
        torch.testing.assert_close(folded.eval()(images), trained(images), rtol=1e-4, atol=1e-4)  # eval unchanged
    alive = _layer19(folded, images, train=True)
    reference = _layer19(trained, images, train=False)
    assert (alive - reference).abs().mean() < 0.25 * reference.abs().mean() < (dead - reference).abs().mean()
    assert unfold_batch_norms(folded, [images]) == 0  # nothing folded any more: a no-op


def test_callback_unfolds_before_training_and_the_loss_falls(one_thread):
    _, folded = _folded_classifier(num_classes=2)
    torch.manual_seed(1)
    images = torch.rand(32, 3, 64, 64)
    labels = (images[:, 0].mean((1, 2)) > images[:, 2].mean((1, 2))).long()  # a learnable colour rule
    loader = DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True)
    task = ClassificationTask(folded, optimizer=functools.partial(torch.optim.AdamW, lr=3e-3))
    trainer = pl.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", callbacks=[UnfoldBatchNorm(num_batches=2)])
    with torch.no_grad():
        before = nn.functional.cross_entropy(folded.eval()(images), labels).item()
    folded.train()
    trainer.fit(task, train_dataloaders=loader)
    assert not folded_batch_norms(folded)
    # the loss the training lowers: with batch statistics (train mode). In eval mode the running statistics, which
    # 30 steps barely move, decide, and that loss went either way by CPU (0.83 -> 2.02 on an AVX-512 machine where
    # this one is 0.26)
    with torch.no_grad():
        after = nn.functional.cross_entropy(folded.train()(images), labels).item()
    assert after < 0.8 * before


@pytest.mark.skipif(not (SHARED / "weights" / "mobilenet_v2_1.0_224_quant.tflite").is_file(),
                    reason="../shared/weights is not beside this checkout")
def test_tf_classifier_release_trains_on_real_photos(one_thread):
    """The README's failure: from the TF release, training-mode layer19 was 99.998% zeros and the loss stuck at ln 2."""
    pytest.importorskip("ai_edge_litert", reason="the TFLite reader is an optional extra: pip install '.[tflite]'")
    from PIL import Image

    photos = sorted((SHARED / "data" / "coco128" / "train2017").glob("*.jpg"))[:32]
    images = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((160, 160)))).permute(2, 0, 1)
                          for p in photos]).float() / 255
    labels = torch.arange(len(photos)) % 2
    release = mobilenet_v2_classifier(weights=SHARED / "weights" / "mobilenet_v2_1.0_224_quant.tflite")

    def two_class_model() -> nn.Module:  # the release's backbone, a new 2-class head (what weights= does in training)
        model = mobilenet_v2_classifier(num_classes=2, **{k: release.config[k] for k in ("padding", "mean", "std")})
        model.load_state_dict({k: v for k, v in release.state_dict().items() if not k.startswith("head.")},
                              strict=False)
        return model

    model = two_class_model()
    assert len(folded_batch_norms(model)) == 52
    assert (_layer19(model, images[:16], train=True) == 0).float().mean() > 0.99  # dead in training mode
    model = two_class_model()
    unfold_batch_norms(model, [images[:16], images[16:]])
    alive = _layer19(model, images[:16], train=True)
    assert (alive == 0).float().mean() < 0.95
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(12):  # memorise the 32 labels: the network can learn
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
