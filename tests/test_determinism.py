"""Runs are reproducible: the same seed gives bit-identical weights on the CPU, a killed run resumed from its last
checkpoint ends where an uninterrupted one does, and DataLoader workers each draw their own augmentations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from pytorch_lightning.callbacks import Callback

from conftest import TINY
from vision_tasks import runner
from vision_tasks.runner import CONFIG_DIR

# two epochs, two batches each; the default augmentation of the synthetic classification set (random resized crop,
# flip) and the classifier's dropout both draw random numbers
RUN = [*TINY, "trainer.limit_train_batches=2"]


def _train(run_dir: Path, *overrides: str) -> Path:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={run_dir}", "task=classification", *RUN, *overrides])
    return runner.train(cfg)


def _max_abs_difference(a: Path, b: Path) -> float:
    sa = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].numel())


def test_two_runs_with_the_same_seed_give_bit_identical_weights(tmp_path, env, one_thread):
    first, second = _train(tmp_path / "a", "trainer.max_epochs=2"), _train(tmp_path / "b", "trainer.max_epochs=2")
    assert _max_abs_difference(first, second) == 0.0
    other = _train(tmp_path / "c", "trainer.max_epochs=2", "seed=1")  # and the seed matters
    assert _max_abs_difference(first, other) > 0.0


class KillAtEpoch(Callback):
    """Stands for a run killed after its checkpoint of the epoch before ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Killed(f"killed at the start of epoch {self.epoch}")


class Killed(Exception):
    pass


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_run_killed_and_resumed_from_its_last_checkpoint_ends_bit_identical(tmp_path, env, one_thread, num_workers):
    """Epoch 1's shuffle, augmentation and dropout do not depend on whether epoch 0 ran in the same process (with
    the default schedule, whose first use of the training loader comes before Lightning restores its loops)."""
    workers = f"data.num_workers={num_workers}"
    whole = _train(tmp_path / "whole", "trainer.max_epochs=2", workers)
    part = tmp_path / "part"
    with pytest.raises(Killed):
        _train(part, "trainer.max_epochs=2", workers,
               f"+callbacks.kill={{_target_: {__name__}.KillAtEpoch, epoch: 1}}")
    _train(part, "trainer.max_epochs=2", workers, f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}")
    assert _max_abs_difference(whole, part) == 0.0


def test_a_one_epoch_run_continued_to_two_epochs_ends_bit_identical(tmp_path, env, one_thread):
    """The same with a schedule that does not depend on trainer.max_epochs (the default warmup + cosine spans all
    epochs, so a run planned for one epoch has other learning rates than one planned for two)."""
    whole = _train(tmp_path / "whole", "trainer.max_epochs=2", "scheduler=step")
    part = _train(tmp_path / "part", "trainer.max_epochs=1", "scheduler=step")
    _train(part, "trainer.max_epochs=2", "scheduler=step", f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}")
    assert _max_abs_difference(whole, part) == 0.0


def _one_image_loader(env, num_workers: int, **overrides):
    """The training loader of the synthetic classification module, every sample the same image: what differs
    between two samples is their augmentation alone."""
    from vision_tasks.data.modules.classification import SyntheticClassificationDataModule

    dm = SyntheticClassificationDataModule(num_train_per_class=2, num_val_per_class=1, synthetic_image_size=32,
                                           image_size=32, resize_size=32, scale=(0.1, 1.0), batch_size=4,
                                           num_workers=num_workers, **overrides)
    dm.setup("fit")
    dm.train_dataset.samples = [dm.train_dataset.samples[0]] * 16
    return dm.train_dataloader()


def test_dataloader_workers_draw_different_augmentations(env, one_thread):
    """Batches 0 and 1 come from workers 0 and 1: before, both workers inherited one albumentations generator
    and produced the same crops and flips."""
    torch.manual_seed(0)
    loader = _one_image_loader(env, num_workers=2)
    batches = [images for images, _ in loader]
    assert len(batches) == 4
    assert not torch.equal(batches[0], batches[1]), "workers 0 and 1 drew the same augmentations"
    assert not torch.equal(batches[0], batches[2])  # and one worker's samples differ among themselves
    assert len({tuple(image.flatten()[:64].tolist()) for b in batches for image in b}) > 8


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_augmentations_of_an_epoch_follow_from_the_seed_and_the_epoch(env, one_thread, num_workers):
    """Two loaders made after the same seed give the same epoch k, whatever ran before it; epochs differ."""
    def epoch(loader, k):
        loader.sampler.set_epoch(k)  # as Lightning's fit loop does at the start of every epoch
        return torch.cat([images for images, _ in loader])

    torch.manual_seed(0)
    first = _one_image_loader(env, num_workers)
    epoch0, epoch1 = epoch(first, 0), epoch(first, 1)
    torch.manual_seed(0)
    second = _one_image_loader(env, num_workers)
    torch.rand(10)  # other draws from the global generator in between change nothing
    assert torch.equal(epoch(second, 1), epoch1)
    assert not torch.equal(epoch0, epoch1)
